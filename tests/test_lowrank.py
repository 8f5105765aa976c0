"""Factored fast weights (metarec.lowrank) against explicit per-user weight matrices, in float64."""

from __future__ import annotations

import pytest
import torch

from metarec.lowrank import FastLinear, Outer, output_gradients, run, sgd_step, weight_gradients
from metarec.nn import attentive_write

B, N, IN, OUT, K = 4, 3, 6, 5, 2


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def randn(g, *shape, grad=False):
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def explicit(layer: FastLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's output from its materialised per-user weights and biases."""
    w = layer.materialize(x.shape[0])
    y = x @ w.transpose(1, 2)
    b = layer.user_bias(x.shape[0])
    return y if b is None else y + b.unsqueeze(1)


def test_every_kind_of_base_equals_its_materialised_weight(g):
    x = randn(g, B, N, IN)
    w, slots, coef = randn(g, OUT, IN), randn(g, K, OUT, IN), randn(g, B, K)
    layers = {
        "shared": FastLinear(weight=w, bias=randn(g, OUT)),
        "slots": FastLinear(slots=slots, slot_coef=coef),
        "shared+slots": FastLinear(weight=w, slots=slots, slot_coef=coef, bias=randn(g, B, OUT)),
        "mixture": FastLinear.mixture(w, slots, coef, bias=randn(g, OUT)),
    }
    for name, layer in layers.items():
        assert torch.allclose(layer(x), explicit(layer, x), atol=1e-12), name
    # mixture() is weight + sum_k coef_k slots_k
    want = w + torch.einsum("bk,koi->boi", coef, slots)
    assert torch.allclose(layers["mixture"].materialize(B), want, atol=1e-12)


def test_sgd_steps_equal_explicit_gradient_descent_on_a_two_layer_net(g):
    """Three SGD steps through the factored layers equal three steps on explicit [B, out, in]
    weights whose gradients come from autograd."""
    lr = 0.3
    l1 = FastLinear.mixture(randn(g, OUT, IN), randn(g, K, OUT, IN), randn(g, B, K), bias=randn(g, OUT))
    l2 = FastLinear(weight=randn(g, 1, OUT), bias=randn(g, 1))
    w1, b1 = l1.materialize(B).clone(), l1.user_bias(B).clone()
    w2, b2 = l2.materialize(B).clone(), l2.user_bias(B).clone()
    layers = [l1, l2]
    for step in range(3):
        x, y = randn(g, B, 2, IN, grad=True), randn(g, B, 2)  # x asks for grad: the taps need a graph
        # factored
        taps = []
        pred = run([layers[0], torch.tanh, layers[1]], x, taps).squeeze(-1)
        loss = ((pred - y) ** 2).mean(-1).sum()
        deltas = output_gradients(loss, taps)
        layers = sgd_step(layers, taps, deltas, lr, first_order=True)
        # explicit
        params = [p.detach().requires_grad_(True) for p in (w1, b1, w2, b2)]
        h = torch.tanh(x.detach() @ params[0].transpose(1, 2) + params[1].unsqueeze(1))
        out = (h @ params[2].transpose(1, 2) + params[3].unsqueeze(1)).squeeze(-1)
        grads = torch.autograd.grad(((out - y) ** 2).mean(-1).sum(), params)
        w1, b1, w2, b2 = (p.detach() - lr * gr for p, gr in zip(params, grads))
        assert torch.allclose(layers[0].materialize(B), w1, atol=1e-12), step
        assert torch.allclose(layers[0].user_bias(B), b1, atol=1e-12), step
        assert torch.allclose(layers[1].materialize(B), w2, atol=1e-12), step
        assert torch.allclose(layers[1].user_bias(B), b2, atol=1e-12), step
    assert layers[0].left.shape == (B, 6, OUT)  # 3 steps x 2 items: rank 6, never a [B, out, in]


def test_in_place_steps_into_reserved_factors_equal_the_functional_ones(g):
    layer = FastLinear(weight=randn(g, OUT, IN), bias=randn(g, OUT))
    functional, reserved = layer, layer.reserve(4, B)
    x = randn(g, B, N, IN)
    assert torch.allclose(reserved(x), layer(x))  # zero rows add nothing
    for at in (0, 2):
        xs, ds = randn(g, B, 2, IN), randn(g, B, 2, OUT)
        functional = functional.sgd(xs, ds, 0.1)
        reserved.sgd_(xs, ds, 0.1, at)
    assert torch.allclose(reserved(x), functional(x), atol=1e-12)
    assert torch.allclose(reserved.materialize(B), functional.materialize(B), atol=1e-12)
    with pytest.raises(ValueError, match="without local steps"):
        functional.reserve(2, B)


def test_with_steps_of_keeps_the_base_graph_and_the_steps(g):
    w = randn(g, OUT, IN, grad=True)
    layer = FastLinear(weight=w, bias=torch.zeros(OUT, dtype=torch.float64))
    stepped = layer.detach().sgd(randn(g, B, 1, IN), randn(g, B, 1, OUT), 0.5)
    net = layer.with_steps_of(stepped)
    x = randn(g, B, N, IN)
    assert torch.allclose(net(x), stepped(x))
    (gw,) = torch.autograd.grad(net(x).sum(), [w])
    assert torch.allclose(gw, torch.einsum("bno,bni->oi", torch.ones(B, N, OUT, dtype=torch.float64), x))


def test_weighted_sums_equal_those_of_the_built_matrices(g):
    weights = randn(g, B, 3)
    layer = FastLinear(weight=randn(g, OUT, IN), slots=randn(g, K, OUT, IN), slot_coef=randn(g, B, K))
    layer = layer.sgd(randn(g, B, 2, IN), randn(g, B, 2, OUT), 0.2)
    want = torch.einsum("bk,boi->koi", weights, layer.materialize(B))
    assert torch.allclose(layer.weighted_sum(weights), want, atol=1e-12)
    outer = Outer(randn(g, B, 1, OUT), randn(g, B, 1, IN))
    assert torch.allclose(outer.weighted_sum(weights), torch.einsum("bk,boi->koi", weights, outer.materialize()), atol=1e-12)


@pytest.mark.parametrize("mode", ["sequential", "merged"])
def test_memory_writes_from_factored_values_equal_dense_writes(g, mode):
    memory, attention = randn(g, 3, OUT, IN), torch.softmax(randn(g, B, 3), -1)
    layer = FastLinear(slots=randn(g, 3, OUT, IN), slot_coef=attention).sgd(randn(g, B, 1, IN), randn(g, B, 1, OUT), 0.1)
    dense = attentive_write(memory, attention, layer.materialize(B), 0.3, mode)
    assert torch.allclose(attentive_write(memory, attention, layer, 0.3, mode), dense, atol=1e-12)
    x, delta = randn(g, B, 1, IN), randn(g, B, 1, OUT)
    gw, gb = weight_gradients((x, None), delta)
    assert torch.allclose(gw.materialize(), delta.transpose(1, 2) @ x)
    assert torch.allclose(attentive_write(memory, attention, gw, 0.3, mode),
                          attentive_write(memory, attention, gw.materialize(), 0.3, mode), atol=1e-12)
    with pytest.raises(ValueError, match="sum to"):
        attentive_write(memory[:, :2], attention, gw, 0.3, mode)


def test_bad_layers_are_refused(g):
    with pytest.raises(ValueError, match="come together"):
        FastLinear(weight=randn(g, OUT, IN), slots=randn(g, K, OUT, IN))
    with pytest.raises(ValueError, match="shared weight, slots"):
        FastLinear(bias=randn(g, OUT))
    with pytest.raises(ValueError, match="one tap and one gradient"):
        sgd_step([FastLinear(weight=randn(g, OUT, IN))], [], [], 0.1, first_order=True)
