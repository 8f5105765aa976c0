"""The hand-written C++ controller step (:mod:`metarec.native`) against the PyTorch fused step.

Forward outputs and every gradient of two chained steps (so the recurrent ``h``/``c`` gradients
are exercised) match :class:`metarec.learned_optim.FusedCoordinateLSTMStep` in float64 to 1e-9
and in float32 to 1e-4 relative; the build falls back to PyTorch with one warning when it cannot
compile, and ``METAREC_NATIVE=0`` turns it off. The kernel is compiled once per test session
(``conftest.native_kernel_cache``).
"""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from metarec import native
from metarec.learned_optim import SegmentLayout, StackedLSTMWeights, fused_step, gate_bias


@pytest.fixture(scope="module")
def compiled():
    """The kernel, built; skips only where there is no C++ compiler at all (a build error fails)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the native kernels cannot be built here")
    assert native.load("coordinate_lstm_cpu"), "a C++ compiler exists but the native kernel did not build"
    return True


def _problem(dtype, hidden=8, numels=(6, 3, 5, 1), users=3, heads=2, layer_norm=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = len(numels)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    layout = SegmentLayout(tuple(numels), users)
    rows = layout.rows
    weights = StackedLSTMWeights(
        w=r(k, 4 + hidden, 4 * hidden, scale=0.5), w_user=r(k, 4 * hidden), b=r(k, 4 * hidden),
        ln_w=r(k, hidden) if layer_norm else None, ln_b=r(k, hidden, scale=0.1) if layer_norm else None,
        head_w=r(k, heads, hidden), head_b=r(k, heads), h0=r(k, hidden), c0=r(k, hidden),
        ln_eps=1e-5 if layer_norm else 0.0,
    )
    theta, h, c = r(rows), r(rows, hidden), r(rows, hidden)
    # gradients of every magnitude, one exactly 0 and some beyond the clamp
    grad = torch.randn(rows, generator=g, dtype=dtype) * 10.0 ** torch.randint(-6, 2, (rows,), generator=g).to(dtype)
    grad[0] = 0.0
    active = torch.arange(users) % 3 != 1  # user 1 has stopped: its theta rows stay
    loss = torch.rand(users, generator=g, dtype=dtype) + 0.1
    return layout, weights, theta, h, c, grad, active, loss


def _two_steps(native_flag, dtype, **shape):
    """Outputs of two chained steps and the gradients of a random linear function of the second."""
    layout, wt, theta, h, c, grad, active, loss = _problem(dtype, **shape)
    seg = layout.row_tensor(theta.device)
    bias = gate_bias(wt, loss)
    buf = grad.clone()  # one gradient buffer, overwritten in place between steps (as s2Meta does)
    first = fused_step(theta, h, c, buf, active, bias, wt, layout, seg, clamp=1.0, p=10.0, native=native_flag)
    first_out = [o.detach().clone() for o in first]
    buf.mul_(0.5)
    second = fused_step(*first[:3], buf, active, bias, wt, layout, seg, clamp=1.0, p=10.0, native=native_flag)
    g = torch.Generator().manual_seed(5)
    loss_out = sum((o * torch.randn(o.shape, generator=g, dtype=dtype)).sum() for o in second[:3])
    leaves = [theta, h, c, wt.w, wt.w_user, wt.b, wt.head_w, wt.head_b] + ([wt.ln_w, wt.ln_b] if wt.ln_w is not None else [])
    grads = torch.autograd.grad(loss_out, leaves)
    return first_out + [o.detach() for o in second], list(grads)


SHAPES = [
    dict(),
    dict(layer_norm=False),
    dict(heads=1),
    dict(hidden=16, users=2),
    dict(hidden=32, users=1, numels=(40, 7)),
    dict(hidden=64, users=2, numels=(9,)),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_native_step_matches_the_pytorch_step_forward_and_backward(compiled, dtype, shape):
    out_n, grads_n = _two_steps(True, dtype, **shape)
    out_p, grads_p = _two_steps(False, dtype, **shape)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(out_n, out_p):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(grads_n, grads_p):
        scale = float(b.abs().max()) or 1.0
        torch.testing.assert_close(a / scale, b / scale, **tol)


def test_native_step_is_thread_count_independent_and_recompute_path_agrees(compiled):
    """Enough rows for several parallel chunks: 1 and 2 threads give the same bits; the backward
    without saved activations (recomputing them) gives the same numbers as with them."""
    shape = dict(hidden=8, numels=(300, 17, 260), users=2)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, g1 = _two_steps(True, torch.float64, **shape)
        torch.set_num_threads(2)
        out2, g2 = _two_steps(True, torch.float64, **shape)
    finally:
        torch.set_num_threads(old)
    for a, b in zip(out1 + g1, out2 + g2):
        assert torch.equal(a, b)
    layout, wt, theta, h, c, grad, active, loss = _problem(torch.float64, **shape)
    args = [t.detach() for t in (theta, h, c)] + [grad, active, gate_bias(wt, loss).detach()] + [
        t.detach() for t in (wt.w, wt.ln_w, wt.ln_b, wt.head_w, wt.head_b)]
    fwd = torch.ops.metarec_native.coordinate_lstm_forward(*args, list(layout.numels), wt.ln_eps, 1.0, 10.0, True)
    d_out = [torch.randn_like(t) for t in fwd[:3]]
    with_saved = torch.ops.metarec_native.coordinate_lstm_backward(*args, list(layout.numels), wt.ln_eps, 1.0, 10.0,
                                                                   *d_out, fwd[5])
    recomputed = torch.ops.metarec_native.coordinate_lstm_backward(*args, list(layout.numels), wt.ln_eps, 1.0, 10.0,
                                                                   *d_out, None)
    for a, b in zip(with_saved, recomputed):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_metarec_native_0_turns_the_kernels_off(monkeypatch):
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setenv("METAREC_NATIVE", "0")
    assert native.load("coordinate_lstm_cpu") is False
    out_default, grads_default = _two_steps(None, torch.float64)  # None: native if available -> PyTorch here
    out_torch, grads_torch = _two_steps(False, torch.float64)
    for a, b in zip(out_default + grads_default, out_torch + grads_torch):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="native kernel cannot run"):
        _two_steps(True, torch.float64)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_LOADED", {})
    monkeypatch.setenv("METAREC_NATIVE_CACHE", str(tmp_path))  # nothing cached: it must compile
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with pytest.warns(RuntimeWarning, match="coordinate_lstm_cpu is not available.*PyTorch implementation"):
        assert native.load("coordinate_lstm_cpu") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # remembered: no second build, no second warning
        assert native.load("coordinate_lstm_cpu") is False
    assert not list(tmp_path.glob("*.so"))


def test_s2meta_fused_backend_native_equals_pytorch_kernels_over_three_meta_steps(compiled, synthetic_split, monkeypatch):
    """The learner end to end in float64: objective, final query losses, stop probabilities, inner
    steps and every meta-gradient agree (1e-9) with the native kernel on and off, same draws."""
    from baselines.s2meta import S2Meta
    from metarec import learned_optim

    calls = []
    apply = learned_optim.NativeCoordinateLSTMStep.apply
    monkeypatch.setattr(learned_optim.NativeCoordinateLSTMStep, "apply", lambda *a: calls.append(1) or apply(*a))
    small = dict(embedding_dim=4, side_width=8, hidden=(8, 4), lstm_hidden=8, max_steps=6, min_steps=1,
                 compile_controller=False)
    train = synthetic_split.train
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        learners = {flag: S2Meta.from_settings(train.schema, preset="paper", seed=0,
                                               overrides={**small, "native_kernels": flag}) for flag in (True, False)}
        learners[False].load_state_dict(learners[True].state_dict())
        for step in range(3):
            batch = train.batch(range(3 * step, 3 * step + 3))
            uniforms = learners[True].train_uniforms(3)
            out = {}
            for flag, learner in learners.items():
                learner.optimizer.zero_grad(set_to_none=True)
                objective, final, ad = learner.meta_objective(batch, uniforms)
                objective.backward()
                grads = {f"{mod}.{n}": p.grad.clone() for mod in ("recommender", "inputs", "update_controller", "stop_controller")
                         for n, p in getattr(learner, mod).named_parameters() if p.grad is not None}
                out[flag] = (objective.detach(), final.detach(), ad.stop_probs, ad.steps, grads)
                learner.optimizer.step()
            (o_n, f_n, p_n, s_n, g_n), (o_p, f_p, p_p, s_p, g_p) = out[True], out[False]
            assert s_n.tolist() == s_p.tolist()
            for a, b in ((o_n, o_p), (f_n, f_p), (p_n, p_p)):
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
            assert g_n.keys() == g_p.keys() and any(k.startswith("update_controller") for k in g_n)
            for key in g_n:
                torch.testing.assert_close(g_n[key], g_p[key], rtol=1e-9, atol=1e-9, msg=key)
    finally:
        torch.set_default_dtype(old)
    assert calls, "the native kernel never ran"


def test_activation_workspace_is_reused_gives_the_same_gradients_and_guards_a_live_graph(compiled):
    """Steps that keep their activations in :class:`ActivationWorkspace` buffers give the same
    outputs and gradients as fresh ones; writing a buffer again while an older graph still needs
    it makes that graph's backward fail (autograd's version check) instead of reading wrong numbers."""
    from metarec.learned_optim import ActivationWorkspace

    shape = dict(hidden=8, numels=(30, 7), users=2)
    layout, wt, theta, h, c, grad, active, loss = _problem(torch.float64, **shape)
    seg, bias = layout.row_tensor(theta.device), gate_bias(wt, loss)
    ws = ActivationWorkspace()

    def run(workspace):
        out = fused_step(theta, h, c, grad, active, bias, wt, layout, seg, native=True,
                         workspace=None if workspace is None else workspace.get(0, layout.rows, 8, theta.dtype, theta.device))
        return out, (out[0].square().sum() + out[1].sum() + out[2].sum())

    leaves = [theta, h, c, wt.w, wt.head_w]
    fresh_out, fresh_loss = run(None)
    fresh = torch.autograd.grad(fresh_loss, leaves)
    for _ in range(2):  # the second time the buffer is reused
        out, loss_ws = run(ws)
        for a, b in zip(out[:3], fresh_out[:3]):
            assert torch.equal(a, b)
        for a, b in zip(torch.autograd.grad(loss_ws, leaves), fresh):
            assert torch.equal(a, b)
    assert ws.get(0, layout.rows, 8, theta.dtype, theta.device) is ws.get(0, layout.rows, 8, theta.dtype, theta.device)
    _, stale = run(ws)
    run(ws)  # overwrites the buffer ``stale`` saved
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(stale, leaves)
