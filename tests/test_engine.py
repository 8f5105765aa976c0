"""The functional engine: the batched (vmap) inner loop must compute exactly what a plain
per-user loop computes -- query losses, adapted parameters and meta-gradients, first and second
order -- and second order must really be second order (the MeLU ``load_state_dict`` trap).

Parity is checked in float64 so that a tolerance of 1e-5 tests the algorithm, not rounding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metarec import engine
from metarec.methods.maml import MAMLConfig, MAMLLearner
from metarec.nn import RatingMLP
from metarec.tasks import TaskBatch

TOL = 1e-5


def as_double(batch: TaskBatch) -> TaskBatch:
    """The batch with every floating tensor in float64 (index tensors untouched)."""
    conv = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    out = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        out[f.name] = {k: conv(x) for k, x in v.items()} if isinstance(v, dict) else conv(v)
    return TaskBatch(**out)


@pytest.fixture(scope="module")
def setup(synthetic_split):
    torch.manual_seed(0)
    schema = synthetic_split.train.schema
    model = RatingMLP(schema.user_features, schema.item_features, embedding_dim=8, hidden=(16, 8)).double()
    batch = as_double(synthetic_split.train.batch(list(range(7))))
    # ragged support: the last users have padded support entries, which must be ignored
    batch.support_mask[5, 11:] = False
    batch.support_mask[6, 3:] = False
    return model, batch


def smooth_model(schema) -> RatingMLP:
    return RatingMLP(schema.user_features, schema.item_features, embedding_dim=8, hidden=(16, 8), activation="tanh").double()


def _params(model):
    return {n: p for n, p in model.named_parameters()}


def _head(model):
    return [n for n, _ in model.named_parameters() if n.startswith("head.")]


def _meta_grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def _assert_close_grads(ga, gb, names):
    for n, a, b in zip(names, ga, gb):
        if a is None or b is None:
            assert a is None and b is None, f"{n}: one path has a gradient, the other none"
            continue
        assert torch.allclose(a, b, atol=TOL, rtol=TOL), f"{n}: max diff {(a - b).abs().max():.3e}"


SCHEDULES = {
    "full": lambda S: None,
    "item-by-item": lambda S: engine.minibatch_schedule(S, 1, 1),
    "minibatch-2x": lambda S: engine.minibatch_schedule(S, 5, 2),
}


@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
@pytest.mark.parametrize("schedule", ["full", "item-by-item"])
def test_batched_equals_looped_losses_and_meta_gradients(setup, first_order, schedule):
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    adapt = _head(model)
    masks = SCHEDULES[schedule](batch.support_ratings.shape[1])
    steps = 2 if masks is None else masks.shape[0]
    kw = dict(lr=0.05, steps=steps, first_order=first_order, step_masks=masks)

    lb = engine.query_losses(forward, params, adapt, batch, **kw)
    ll = engine.query_losses_looped(forward, params, adapt, batch, **kw)
    assert lb.shape == (len(batch),)
    assert torch.allclose(lb, ll, atol=TOL, rtol=TOL), (lb - ll).abs().max()

    names = list(params)
    gb = _meta_grads(lb.mean(), [params[n] for n in names])
    gl = _meta_grads(ll.mean(), [params[n] for n in names])
    _assert_close_grads(gb, gl, names)
    # global-only parameters (the embedders) receive meta-gradients too
    assert any(g is not None and g.abs().sum() > 0 for n, g in zip(names, gb) if not n.startswith("head."))


@pytest.mark.parametrize("first_order", [True, False], ids=["first-order", "second-order"])
def test_parity_with_per_user_initial_values(setup, first_order):
    """MAMO-style personalised initialisation: per-user starting values that depend on outer
    tensors; gradients must reach both the shared parameters and the per-user offsets."""
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    adapt = _head(model)
    gen = torch.Generator().manual_seed(1)
    B = len(batch)
    offsets = {
        n: (0.05 * torch.randn(B, *params[n].shape, generator=gen, dtype=torch.float64)).requires_grad_(True)
        for n in adapt[:2]
    }
    # an extra per-user tensor that is adapted although it is not a parameter of the module
    user_params = {n: params[n].unsqueeze(0) - offsets[n] for n in offsets}
    kw = dict(lr=0.05, steps=3, first_order=first_order, user_params=user_params)
    lb, fast_b = engine.adapt_and_query_losses(forward, params, adapt, batch, **kw)
    ll, fast_l = engine.adapt_and_query_losses_looped(forward, params, adapt, batch, **kw)
    assert torch.allclose(lb, ll, atol=TOL, rtol=TOL)
    for n in adapt:
        assert fast_b[n].shape == (B, *params[n].shape)
        assert torch.allclose(fast_b[n], fast_l[n], atol=TOL, rtol=TOL), n

    wrt = [params[n] for n in params] + list(offsets.values())
    names = list(params) + [f"offset:{n}" for n in offsets]
    _assert_close_grads(_meta_grads(lb.sum(), wrt), _meta_grads(ll.sum(), wrt), names)


def test_chunked_vmap_equals_unchunked(setup):
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    kw = dict(lr=0.05, steps=2, first_order=False)
    a = engine.query_losses(forward, params, _head(model), batch, **kw)
    b = engine.query_losses(forward, params, _head(model), batch, chunk_size=3, **kw)
    assert torch.allclose(a, b, atol=1e-12)


def test_second_order_is_the_true_gradient_and_differs_from_first_order(setup, synthetic_split):
    """The meta-gradient of MAML differentiates through the inner step. Check it against central
    finite differences of the true objective phi -> L_query(adapt(phi)); the first-order
    gradient must NOT match (what a load_state_dict-style implementation, as in MeLU's
    reference code, silently computes)."""
    _, batch = setup
    torch.manual_seed(0)  # a smooth network, so that finite differences see no ReLU kinks
    model = smooth_model(synthetic_split.train.schema)
    forward = engine.module_forward(model)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    adapt = _head(model)
    kw = dict(lr=0.3, steps=2)

    def objective(p):
        return engine.query_losses(forward, p, adapt, batch, first_order=False, **kw).mean()

    names = list(params)
    g2 = dict(zip(names, _meta_grads(objective(params), [params[n] for n in names])))
    loss_fo = engine.query_losses(forward, params, adapt, batch, first_order=True, **kw).mean()
    g1 = dict(zip(names, _meta_grads(loss_fo, [params[n] for n in names])))

    gen = torch.Generator().manual_seed(3)
    direction = {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in params.items() if n in adapt}
    eps = 1e-6
    with torch.no_grad():
        plus = objective({n: p + eps * direction[n] if n in direction else p for n, p in params.items()})
        minus = objective({n: p - eps * direction[n] if n in direction else p for n, p in params.items()})
    fd = float((plus - minus) / (2 * eps))
    d2 = float(sum((g2[n] * direction[n]).sum() for n in direction))
    d1 = float(sum((g1[n] * direction[n]).sum() for n in direction))
    assert abs(d2 - fd) < 1e-6 * max(1.0, abs(fd)), (d2, fd)
    assert abs(d1 - fd) > 1e-3 * max(1.0, abs(fd)), "first-order gradient unexpectedly equals the true one"
    diff = max(float((g2[n] - g1[n]).abs().max()) for n in adapt)
    assert diff > 1e-4


def test_load_state_dict_style_adaptation_loses_second_order(setup):
    """Demonstrates the trap itself: copying adapted values into the module (MeLU's code) cuts the
    graph, and the resulting meta-gradient equals the FIRST-order one, not the second-order one."""
    model, batch = setup
    forward = engine.module_forward(model)
    adapt = _head(model)
    b = 0
    one = lambda d: {k: v[b : b + 1] for k, v in d.items()}  # noqa: E731
    single = TaskBatch(**{f.name: (one(getattr(batch, f.name)) if isinstance(getattr(batch, f.name), dict)
                                   else getattr(batch, f.name)[b : b + 1]) for f in dataclasses.fields(batch)})
    kw = dict(lr=0.3, steps=1)
    params = dict(model.named_parameters())
    g_fo = _meta_grads(engine.query_losses(forward, params, adapt, single, first_order=True, **kw).sum(),
                       [params[n] for n in adapt])
    g_so = _meta_grads(engine.query_losses(forward, params, adapt, single, first_order=False, **kw).sum(),
                       [params[n] for n in adapt])

    # the trap: adapt with autograd, then load the values into a copy of the module
    import copy

    clone = copy.deepcopy(model)
    cparams = dict(clone.named_parameters())
    fast = engine.inner_adapt_looped(
        engine.module_forward(clone), cparams, adapt, {k: v[b] for k, v in batch.user_features.items()},
        {k: v[b] for k, v in batch.support_features.items()}, batch.support_ratings[b], batch.support_mask[b],
        first_order=False, **kw,
    )
    clone.load_state_dict({**clone.state_dict(), **{n: fast[n].detach() for n in adapt}})
    pred = clone({k: v[b] for k, v in batch.user_features.items()}, {k: v[b] for k, v in batch.query_features.items()})
    loss = engine.masked_mse(pred, batch.query_ratings[b], batch.query_mask[b])
    g_trap = _meta_grads(loss, [dict(clone.named_parameters())[n] for n in adapt])
    for a, c in zip(g_fo, g_trap):
        assert torch.allclose(a, c, atol=1e-10)
    assert max(float((a - c).abs().max()) for a, c in zip(g_so, g_trap)) > 1e-4


def test_user_gradients_match_autograd(setup):
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    adapt = _head(model)
    fast = engine.adapt_batch(forward, params, adapt, batch, lr=0.05, steps=2)
    for items in ("query", "support"):
        gb = engine.user_gradients(forward, params, adapt, batch, user_params=fast, items=items)
        gl = engine.user_gradients_looped(forward, params, adapt, batch, user_params=fast, items=items)
        for n in adapt:
            assert gb[n].shape == (len(batch), *params[n].shape)
            assert not gb[n].requires_grad
            assert torch.allclose(gb[n], gl[n], atol=TOL, rtol=TOL)
    # user 0's query gradient by hand
    b = 0
    p = {**params, **{n: fast[n][b].detach().requires_grad_(True) for n in adapt}}
    pred = forward(p, {k: v[b] for k, v in batch.user_features.items()}, {k: v[b] for k, v in batch.query_features.items()})
    by_hand = torch.autograd.grad(engine.masked_mse(pred, batch.query_ratings[b], batch.query_mask[b]), [p[n] for n in adapt])
    gb = engine.user_gradients(forward, params, adapt, batch, user_params=fast, items="query")
    for n, h in zip(adapt, by_hand):
        assert torch.allclose(gb[n][b], h, atol=1e-12)


def test_zero_steps_and_empty_steps_leave_parameters_unchanged(setup):
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    adapt = _head(model)
    fast = engine.adapt_batch(forward, params, adapt, batch, lr=0.1, steps=0)
    for n in adapt:
        assert torch.equal(fast[n], params[n].detach().expand_as(fast[n]))
    # a schedule step that selects only padded support entries is a no-op for that user
    S = batch.support_ratings.shape[1]
    masks = torch.zeros(1, S, dtype=torch.bool)
    masks[0, S - 1] = True  # user 6's item S-1 is padding
    fast = engine.adapt_batch(forward, params, adapt, batch, lr=0.1, steps=1, step_masks=masks)
    for n in adapt:
        assert torch.equal(fast[n][6], params[n].detach())
        assert not torch.equal(fast[n][0], params[n].detach())


def test_minibatch_schedule():
    m = engine.minibatch_schedule(15, 5, 3)
    assert m.shape == (9, 15) and m.dtype == torch.bool
    assert torch.equal(m.sum(0), torch.full((15,), 3))  # every item used once per epoch
    assert torch.equal(m[0, :5], torch.ones(5, dtype=torch.bool)) and not m[0, 5:].any()
    assert engine.minibatch_schedule(15, 1).shape == (15, 15)
    assert torch.equal(engine.minibatch_schedule(4, None, 2), torch.ones(2, 4, dtype=torch.bool))
    assert engine.minibatch_schedule(7, 3).sum(1).tolist() == [3, 3, 1]
    with pytest.raises(ValueError, match="local batch size"):
        engine.minibatch_schedule(15, 0)


def test_schedule_shape_is_checked(setup):
    model, batch = setup
    with pytest.raises(ValueError, match="step_masks must be bool"):
        engine.adapt_batch(
            engine.module_forward(model), _params(model), _head(model), batch, lr=0.1, steps=2,
            step_masks=engine.minibatch_schedule(batch.support_ratings.shape[1], 1),
        )


def test_rating_cross_entropy_matches_torch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    ratings = torch.tensor([1.0, 2.0, 5.0, 3.0, 4.0, 4.0])
    mask = torch.tensor([True, True, True, True, True, False])
    got = engine.rating_cross_entropy(1.0, 5)(logits, ratings, mask)
    want = torch.nn.functional.cross_entropy(logits[:5], (ratings[:5] - 1).long())
    assert torch.allclose(got, want)
    with pytest.raises(ValueError):
        engine.rating_cross_entropy(1.0, 1)


def test_evaluation_users_are_independent(setup):
    """Adapting a batch of users together gives each user what it gets alone, with no graph."""
    model, batch = setup
    forward = engine.module_forward(model)
    params = _params(model)
    kw = dict(lr=0.05, steps=2)
    together = engine.adapt_and_predict_batch(forward, params, _head(model), batch, **kw)
    assert not together.requires_grad and together.shape == batch.query_ratings.shape
    for b in range(len(batch)):
        one = lambda d: {k: v[b : b + 1] for k, v in d.items()}  # noqa: E731
        single = TaskBatch(**{f.name: (one(getattr(batch, f.name)) if isinstance(getattr(batch, f.name), dict)
                                       else getattr(batch, f.name)[b : b + 1]) for f in dataclasses.fields(batch)})
        alone = engine.adapt_and_predict_batch(forward, params, _head(model), single, **kw)
        assert torch.allclose(alone[0], together[b], atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_parity_on_cuda(setup):
    model, batch = setup
    import copy

    cmodel = copy.deepcopy(model).cuda()
    cbatch = batch.to("cuda")
    for first_order in (True, False):
        kw = dict(lr=0.05, steps=2, first_order=first_order)
        a = engine.query_losses(engine.module_forward(cmodel), _params(cmodel), _head(cmodel), cbatch, **kw)
        b = engine.query_losses(engine.module_forward(model), _params(model), _head(model), batch, **kw)
        assert torch.allclose(a.cpu(), b, atol=TOL)


# --------------------------------------------------------------------------- methods in a few lines


class MetaCSStyle(MAMLLearner):
    """MetaCS-DNN's idea in three lines: every parameter is adapted locally."""

    def local_parameter_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]


def test_methods_declare_local_parameters_and_the_engine_does_the_rest(synthetic_split):
    train = synthetic_split.train.subset(range(64))
    cfg = MAMLConfig(epochs=1, batch_size=16, inner_lr=0.01, inner_steps=1, meta_lr=1e-3, embedding_dim=8, hidden=(16,))
    melu_like = MAMLLearner(train.schema, cfg, seed=0)
    metacs_like = MetaCSStyle(train.schema, cfg, seed=0)
    assert all(n.startswith("head.") for n in melu_like.local_names)
    assert any(n.startswith("user_embedder.") for n in metacs_like.local_names)
    batch = train.batch(list(range(4)))
    fast = engine.adapt_batch(metacs_like.forward, metacs_like.params(), metacs_like.local_names, batch, lr=0.01, steps=1)
    assert set(fast) == set(metacs_like.local_names)
    fast = engine.adapt_batch(melu_like.forward, melu_like.params(), melu_like.local_names, batch, lr=0.01, steps=1)
    assert set(fast) == set(melu_like.local_names)
    for learner in (melu_like, metacs_like):
        before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
        learner.meta_fit(train)
        moved = [n for n, p in learner.model.named_parameters() if not torch.equal(p, before[n])]
        assert any(n.startswith("item_embedder.") for n in moved)  # meta-updated
        pred = learner.predict(synthetic_split.test.subset(range(8)))
        assert pred.shape == (8, synthetic_split.test.n_query) and torch.isfinite(pred).all()


def test_relu_head_by_hand_equals_the_vmapped_adaptation(setup):
    """RatingMLP.adapt_head_and_predict (gradients written out, the first layer split into item
    and user columns, the query scored in chunks) is the vmapped torch.func adaptation: ragged
    support, a user with no ratings at all, and a catalogue-sized query in several chunks."""
    model, batch = setup
    batch = dataclasses.replace(batch, support_mask=batch.support_mask.clone())
    batch.support_mask[4] = False  # no ratings: the head stays the global one
    adapt = _head(model)
    assert engine.has_plain_relu_head(model, adapt)
    fast = engine.adapt_and_predict_head(model, engine.module_forward(model), _params(model), adapt, batch, lr=0.3, steps=3)
    ref = engine.adapt_and_predict_batch(engine.module_forward(model), _params(model), adapt, batch, lr=0.3, steps=3)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-10, rtol=0)
    # the adaptation did something, and only where there were ratings
    plain = engine.adapt_and_predict_batch(engine.module_forward(model), _params(model), adapt, batch, lr=0.3, steps=0)
    assert torch.allclose(fast[4], plain[4], atol=1e-12) and not torch.allclose(fast[0], plain[0])
    # scoring in chunks: the same numbers
    import metarec.nn as nn_module

    old = nn_module.SCORE_ROWS
    nn_module.SCORE_ROWS = 3
    try:
        chunked = model.adapt_head_and_predict(batch, lr=0.3, steps=3)
    finally:
        nn_module.SCORE_ROWS = old
    assert torch.allclose(chunked, fast, atol=1e-12)


def test_relu_head_fast_path_only_where_it_applies(setup, synthetic_split):
    model, _ = setup
    head = _head(model)
    assert not engine.has_plain_relu_head(model, head[:-1])  # part of the head: the generic path
    assert not engine.has_plain_relu_head(smooth_model(synthetic_split.train.schema), head)  # tanh
    assert not engine.has_plain_relu_head(torch.nn.Linear(2, 1), [])
