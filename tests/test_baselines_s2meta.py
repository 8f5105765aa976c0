"""s²Meta: its controllers, REINFORCE, masking of stopped users, and learning on synthetic data."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from baselines.s2meta import S2Meta, UpdateController, _take
from metarec.checkpoint import load_state, save_state
from metarec.cli import main
from metarec.registry import get_learner, learner_entries

#: A small network and short inner loops, so that a test runs in seconds.
SMALL = dict(embedding_dim=4, side_width=8, hidden=(8, 4), lstm_hidden=8, max_steps=6, min_steps=2, compile_controller=False)


def _learner(split, seed=0, **overrides):
    return S2Meta.from_settings(split.train.schema, preset="paper", overrides={**SMALL, **overrides}, seed=seed)


# --------------------------------------------------------------------------- controllers


def test_update_controller_outputs_shapes_ranges_and_forget_init():
    torch.manual_seed(0)
    shapes = [(5, 7), (5,), (1, 5), (1,)]
    ctrl = UpdateController(len(shapes), 16)
    b = 3
    params = [torch.randn(b, *s, requires_grad=True) for s in shapes]
    grads = [torch.randn(b, *s) * 10.0 ** torch.randint(-8, 2, (b, *s)) for s in shapes]
    loss = torch.tensor([0.5, 3.0, 1e-6])
    new, states, lrs, forgets = ctrl(params, grads, loss)
    for p, n, lr, f, (h, c) in zip(params, new, lrs, forgets, states):
        assert n.shape == p.shape and lr.shape == p.shape and f.shape == p.shape
        assert h.shape == c.shape == (p.numel(), 16)
        assert torch.all((lr > 0) & (lr < 1)), "the learning rate is a sigmoid: inside (0, 1)"
        assert torch.all((f > 0) & (f < 1))
    # The update rule itself: theta' = f * theta - lr * clamp(g, -1, 1).
    for p, g, n, lr, f in zip(params, grads, new, lrs, forgets):
        torch.testing.assert_close(n, f * p - lr * g.clamp(-1, 1))
    # Forget-gate bias 5: f ~ sigmoid(5) = 0.9933 at initialisation.
    mean_f = torch.cat([f.flatten() for f in forgets]).mean().item()
    assert abs(mean_f - 1 / (1 + math.exp(-5))) < 0.01
    for lstm in ctrl.lstms:
        torch.nn.init.zeros_(lstm.forget_head.weight)
    _, _, _, forgets = ctrl(params, grads, loss)
    torch.testing.assert_close(forgets[0], torch.full_like(forgets[0], 1 / (1 + math.exp(-5))))
    # The meta-gradient reaches theta (through f) and the controller's weights.
    sum(n.sum() for n in new).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert ctrl.lstms[0].cell.weight_ih.grad.abs().sum() > 0
    assert ctrl.lstms[0].h0.grad.abs().sum() > 0


def test_update_controller_lstm_matches_torch_lstm_cell():
    """The fused step computes exactly an ``nn.LSTMCell`` + LayerNorm + the two heads."""
    torch.manual_seed(1)
    ctrl = UpdateController(1, 8)
    lstm = ctrl.lstms[0]
    theta, grad, loss = torch.randn(2, 6), torch.randn(2, 6) * 0.3, torch.tensor([0.7, 2.0])
    new, (state,), (lr,), (f,) = ctrl([theta], [grad], loss)
    from baselines.s2meta import preprocess

    gl, gs = preprocess(grad.reshape(-1))
    pl, ps = preprocess(theta.reshape(-1))
    ll = preprocess(loss)[0].repeat_interleave(6)
    h, c = lstm.cell(torch.stack([gl, gs, pl, ps, ll], 1), lstm.initial_state(12))
    h = lstm.norm(h)
    torch.testing.assert_close(state[0], h)
    torch.testing.assert_close(state[1], c)
    torch.testing.assert_close(lr.reshape(-1), torch.sigmoid(lstm.lr_head(h)).squeeze(-1))
    torch.testing.assert_close(f.reshape(-1), torch.sigmoid(lstm.forget_head(h)).squeeze(-1))


def test_preprocessing_of_tiny_and_large_values():
    from baselines.s2meta import preprocess

    x = torch.tensor([0.0, 1e-3, -1e-6, 2.0, -2.0])  # e^-10 ~ 4.5e-5 separates the two regimes
    log_part, sign_part = preprocess(x, p=10.0)
    assert log_part[0] == -1 and sign_part[0] == 0
    assert log_part[1].item() == pytest.approx(math.log(1e-3) / 10) and sign_part[1] == 1
    assert log_part[2] == -1 and sign_part[2].item() == pytest.approx(-1e-6 * math.exp(10))
    assert log_part[3].item() == pytest.approx(math.log(2.0) / 10) and sign_part[4] == -1


def test_stop_controller_gives_probabilities_and_mlp_has_eight_adapted_tensors(synthetic_split):
    learner = _learner(synthetic_split, hidden=(64, 32, 16), side_width=64)
    assert learner.inputs.out_dim == 128
    assert len(learner.param_names) == 8  # 4 Linear layers: weight + bias each
    assert learner.stop_controller.cell.input_size == 9  # 8 gradient norms + the loss
    assert learner.stop_controller.cell.hidden_size == 18
    grads = [torch.randn(5, *p.shape) for p in learner.recommender.parameters()]
    logit, (h, c) = learner.stop_controller(grads, torch.rand(5))
    p = torch.sigmoid(logit)
    assert p.shape == (5,) and torch.all((p > 0) & (p < 1))
    assert h.shape == (5, 18)


# --------------------------------------------------------------------------- inner loop


def test_masking_freezes_users_that_stopped(synthetic_split):
    learner = _learner(synthetic_split)
    c = learner.config
    batch = synthetic_split.train.batch(range(3))
    # u = 0: stop at the first allowed step; u = 1: never stop (p < 1); mixed for the third user.
    uniforms = torch.ones(c.max_steps, 3)
    uniforms[:, 0] = 0.0
    uniforms[c.min_steps + 1 :, 2] = 0.0
    with torch.no_grad():
        ad = learner.adapt(batch, uniforms=uniforms)
    assert ad.steps.tolist() == [c.min_steps, c.max_steps, c.min_steps + 1]
    assert ad.active[:, 0].sum() == c.min_steps and ad.active[:, 1].all()
    # A stopped user's parameters equal those of a loop that ran exactly its number of steps.
    with torch.no_grad():
        short = _learner(synthetic_split, max_steps=c.min_steps, flexible_step=False).adapt(_take(batch, slice(0, 1)))
    for name in learner.param_names:
        torch.testing.assert_close(ad.params[name][0], short.params[name][0])
    # Masked update inside the controller: inactive users keep their parameters bit for bit.
    fast = [p.unsqueeze(0).expand(3, *p.shape) + torch.randn(3, *p.shape) for p in learner.recommender.parameters()]
    grads = [torch.randn_like(p) for p in fast]
    with torch.no_grad():
        new, *_ = learner.update_controller(fast, grads, torch.rand(3), None, torch.tensor([True, False, True]))
    for old, upd in zip(fast, new):
        assert torch.equal(upd[1], old[1])
        assert not torch.equal(upd[0], old[0])


def test_batched_adaptation_equals_one_user_at_a_time(synthetic_split):
    learner = _learner(synthetic_split, max_steps=8, min_steps=2)
    batch = synthetic_split.train.batch(range(5))
    uniforms = torch.rand(8, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        together = learner.adapt(batch, uniforms=uniforms)
        assert len(set(together.steps.tolist())) > 1, "the draws should give users different step counts"
        for b in range(5):
            alone = learner.adapt(_take(batch, slice(b, b + 1)), uniforms=uniforms[:, b : b + 1])
            assert alone.steps.item() == together.steps[b].item()
            for name in learner.param_names:
                torch.testing.assert_close(alone.params[name][0], together.params[name][b], rtol=1e-4, atol=1e-5)


def test_evaluation_stop_rule_threshold_is_deterministic_and_sample_is_seeded(synthetic_split):
    batch = synthetic_split.test.batch(range(8))
    never = _learner(synthetic_split, stop_threshold=0.999)
    with torch.no_grad():
        probs = never.adapt(batch).stop_probs  # p_t along the full trajectories
    c = never.config
    # A threshold inside the observed range, so that some users stop and others go on.
    threshold = probs[c.min_steps :].median().item()
    learner = _learner(synthetic_split, stop_threshold=threshold)
    with torch.no_grad():
        ad = learner.adapt(batch)
    # Threshold rule: a user stops at the first step t >= min_steps with p_t > threshold.
    expected = []
    for b in range(8):
        over = [t for t in range(c.min_steps, c.max_steps) if probs[t, b] > threshold]
        expected.append(over[0] if over else c.max_steps)
    assert ad.steps.tolist() == expected
    assert len(set(expected)) > 1
    assert torch.equal(learner.adapt_and_predict(batch), learner.adapt_and_predict(batch))
    sampled = _learner(synthetic_split, eval_stop_rule="sample")
    u1, u2 = sampled.eval_uniforms(batch), sampled.eval_uniforms(_take(batch, slice(2, 4)))
    torch.testing.assert_close(u1[:, 2:4], u2)  # per-user draws: independent of the batch
    assert torch.equal(sampled.adapt_and_predict(batch), sampled.adapt_and_predict(batch))


# --------------------------------------------------------------------------- meta-objective


def _stop_grads(learner, batch, uniforms):
    learner.optimizer.zero_grad(set_to_none=True)
    objective, _, ad = learner.meta_objective(batch, uniforms)
    objective.backward()
    return {n: p.grad for n, p in learner.stop_controller.named_parameters()}, ad


def test_reinforce_gradient_reaches_the_stop_controller_and_follows_the_advantage(synthetic_split):
    batch = synthetic_split.train.batch(range(4))
    uniforms = torch.ones(SMALL["max_steps"], 4)  # nobody stops: every step is a "continue"
    grads = {}
    for penalty in (-1e6, 1e6):  # dominates the query-loss differences: a known advantage sign
        learner = _learner(synthetic_split, step_penalty=penalty)
        g, ad = _stop_grads(learner, batch, uniforms)
        assert all(v is not None and torch.isfinite(v).all() for v in g.values())
        assert sum(v.abs().sum() for v in g.values()) > 0
        grads[penalty] = g
        # One small descent step on the stop controller only; the trajectory (update controller,
        # forced first steps) is unchanged, so p_t at the forced steps is comparable.
        before = ad.stop_probs[: learner.config.min_steps].mean()
        norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
        with torch.no_grad():
            for n, p in learner.stop_controller.named_parameters():
                p -= 1e-2 * g[n] / norm
            after = learner.adapt(batch, uniforms=uniforms).stop_probs[: learner.config.min_steps].mean()
        # A reward for going on (negative penalty) lowers p(stop); a cost per step raises it.
        assert (after < before) if penalty < 0 else (after > before)
    # Without a stop controller there is nothing to reinforce.
    fixed = _learner(synthetic_split, flexible_step=False)
    g, _ = _stop_grads(fixed, batch, None)
    assert all(v is None for v in g.values())


def test_meta_gradient_reaches_every_meta_parameter_group(synthetic_split):
    learner = _learner(synthetic_split)
    batch = synthetic_split.train.batch(range(4))
    objective, final, _ = learner.meta_objective(batch, learner.train_uniforms(4))
    assert final.shape == (4,)
    objective.backward()
    for module in (learner.recommender, learner.inputs, learner.update_controller):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module


def test_chunking_does_not_change_the_update(synthetic_split):
    batch = synthetic_split.train.batch(range(6))
    a = _learner(synthetic_split, chunk_size=None)
    b = _learner(synthetic_split, chunk_size=4)
    la, lb = a.meta_step(batch), b.meta_step(batch)
    assert la == pytest.approx(lb, rel=1e-5)
    for pa, pb in zip(a.optimizer.param_groups, b.optimizer.param_groups):
        for x, y in zip(pa["params"], pb["params"]):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- learning, state, registry

#: Larger rates than the paper's so that a few epochs on the small synthetic set suffice.
FAST = dict(epochs=2, batch_size=4, init_lr=1e-2, update_lr=1e-2, stop_lr=1e-3, max_steps=5)


@pytest.fixture(scope="module")
def trained(synthetic_split):
    learner = _learner(synthetic_split, **FAST)
    learner.meta_fit(synthetic_split.train)
    return learner


def test_beats_the_global_mean_on_synthetic_data(trained, synthetic_split):
    train, test = synthetic_split.train, synthetic_split.test
    mean = torch.cat([train.support_ratings[train.support_mask], train.query_ratings[train.query_mask]]).mean()
    mae_mean = (test.query_ratings - mean).abs()[test.query_mask].mean().item()
    pred = trained.predict(test)
    assert pred.shape == test.query_ratings.shape
    mae = (pred - test.query_ratings).abs()[test.query_mask].mean().item()
    assert mae < mae_mean - 0.1, (mae, mae_mean)  # 0.50-0.68 vs 0.85 over seeds 0-2


def test_state_round_trip_through_safe_checkpoint(trained, synthetic_split, tmp_path):
    save_state(tmp_path / "s2meta", trained.state_dict())
    fresh = _learner(synthetic_split, **FAST, seed=trained.seed)  # the evaluation draws come from the run seed
    fresh.load_state_dict(load_state(tmp_path / "s2meta"))
    assert fresh.meta_steps_done == trained.meta_steps_done
    assert torch.equal(fresh.predict(synthetic_split.test), trained.predict(synthetic_split.test))


def test_registered_through_the_entry_point_from_baselines():
    entry = learner_entries()["s2meta"]
    assert entry.source == "baselines" and entry.origin == "entry-point"
    assert get_learner("s2meta") is S2Meta
    result = CliRunner().invoke(main, ["methods"], terminal_width=250)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "s2meta" in ln)
    assert "baselines" in line and "paper" in line


def test_bad_config_values_are_rejected(synthetic_split):
    from metarec.config import ConfigError

    with pytest.raises(ConfigError, match="min_steps"):
        _learner(synthetic_split, min_steps=30)
    with pytest.raises(ConfigError, match="stop_threshold"):
        _learner(synthetic_split, stop_threshold=1.5)
    with pytest.raises(ConfigError, match="eval_stop_rule"):
        _learner(synthetic_split, eval_stop_rule="coin")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_compiled_controller_matches_eager(synthetic_split, backend):
    from metarec.learned_optim import kernels

    eager = _learner(synthetic_split, backend=backend)
    compiled = _learner(synthetic_split, backend=backend, compile_controller=True)
    batch = synthetic_split.test.batch(range(4))
    torch.testing.assert_close(compiled.adapt_and_predict(batch), eager.adapt_and_predict(batch), rtol=1e-4, atol=1e-4)
    objective, _, _ = compiled.meta_objective(synthetic_split.train.batch(range(3)), compiled.train_uniforms(3))
    objective.backward()
    assert compiled.update_controller.lstms[0].cell.weight_ih.grad.abs().sum() > 0
    if backend == "reference":
        assert compiled.update_controller._compiled_step is not None, "compilation failed and fell back to eager"
    else:
        k = kernels(True)
        assert all(f.compiled is not None for f in (k.inputs, k.gates, k.out, k.backward)), "fell back to eager"
        e_obj, _, _ = eager.meta_objective(synthetic_split.train.batch(range(3)), compiled.train_uniforms(3))
        torch.testing.assert_close(objective, e_obj, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- fused backend


@pytest.fixture(scope="module")
def ml1m_format_split(tmp_path_factory):
    """A small dataset in the ML-1M release formats, through the real loader and protocol."""
    from datafiles import write_ml1m

    from metarec.data import load_split

    root = tmp_path_factory.mktemp("s2meta-ml")
    write_ml1m(root / "ml-1m", n_users=40, seed=2)
    return load_split("ml-1m", data_dir=root, seed=0, use_cache=False)


def _grads(learner):
    return {
        f"{mod}.{n}": p.grad.clone() if p.grad is not None else None
        for mod in ("recommender", "inputs", "update_controller", "stop_controller")
        for n, p in getattr(learner, mod).named_parameters()
    }


def test_fused_backend_matches_reference_in_float64_over_three_meta_steps(ml1m_format_split):
    """Support/query losses, stop probabilities and meta-gradients within 1e-6, same draws."""
    train = ml1m_format_split.train
    settings = dict(preset="paper", seed=0)
    small = dict(embedding_dim=4, side_width=8, hidden=(8, 4), lstm_hidden=8, max_steps=8, min_steps=2,
                 compile_controller=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = S2Meta.from_settings(train.schema, overrides={**small, "backend": "reference"}, **settings)
        fused = S2Meta.from_settings(train.schema, overrides={**small, "backend": "fused"}, **settings)
        fused.load_state_dict(ref.state_dict())
        users = 4
        step_counts = set()
        for step in range(3):
            batch = train.batch(range(step * users, (step + 1) * users))
            uniforms = ref.train_uniforms(users)
            torch.testing.assert_close(fused.train_uniforms(users), uniforms, rtol=0, atol=0)  # the same seeded draws
            out = {}
            for name, learner in (("reference", ref), ("fused", fused)):
                learner.optimizer.zero_grad(set_to_none=True)
                objective, final, ad = learner.meta_objective(batch, uniforms)
                objective.backward()
                x_s = learner.inputs(batch.user_features, batch.support_features)
                support = learner._losses(list(ad.params.values()), x_s, batch.support_ratings, batch.support_mask)
                out[name] = (objective.detach(), final.detach(), support.detach(), ad, _grads(learner))
            (o_r, f_r, s_r, a_r, g_r), (o_f, f_f, s_f, a_f, g_f) = out["reference"], out["fused"]
            assert a_f.steps.tolist() == a_r.steps.tolist()
            step_counts.update(a_r.steps.tolist())
            for x, y in ((o_f, o_r), (f_f, f_r), (s_f, s_r), (a_f.stop_probs, a_r.stop_probs),
                         (a_f.query_losses, a_r.query_losses), (a_f.log_keep, a_r.log_keep)):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
            assert g_f.keys() == g_r.keys()
            for key in g_r:
                assert (g_f[key] is None) == (g_r[key] is None), key
                if g_r[key] is not None:
                    torch.testing.assert_close(g_f[key], g_r[key], rtol=1e-6, atol=1e-6, msg=key)
            assert any(g is not None and g.abs().sum() > 0 for k, g in g_r.items() if k.startswith("update_controller"))
            for learner in (ref, fused):
                learner.optimizer.step()
                learner.meta_steps_done += 1
        assert len(step_counts) > 1, "the draws should give users different step counts"
    finally:
        torch.set_default_dtype(old)


def test_fused_masked_loop_equals_the_loop_that_breaks(synthetic_split):
    """``inner_loop_exit = masked`` (no host check, always max_steps) gives the same numbers."""
    batch = synthetic_split.train.batch(range(5))
    brk = _learner(synthetic_split, inner_loop_exit="break")
    masked = _learner(synthetic_split, inner_loop_exit="masked")
    uniforms = torch.zeros(SMALL["max_steps"], 5)  # everybody stops at min_steps: the loop could end early
    ob, fb, ab = brk.meta_objective(batch, uniforms)
    om, fm, am = masked.meta_objective(batch, uniforms)
    assert ab.active.shape[0] < am.active.shape[0] == SMALL["max_steps"]
    assert am.steps.tolist() == ab.steps.tolist() == [SMALL["min_steps"]] * 5
    torch.testing.assert_close(om, ob)
    torch.testing.assert_close(fm, fb)
    (ob + om).backward()
    for pb, pm in zip(brk.update_controller.parameters(), masked.update_controller.parameters()):
        torch.testing.assert_close(pm.grad, pb.grad)


def test_evaluation_rule_sample_follows_the_training_step_distribution(synthetic_split):
    """After a short training run, the default (seeded stochastic) evaluation rule's inner-step
    distribution is the training one's; the threshold rule's is not (it runs longer)."""
    train, test = synthetic_split.train, synthetic_split.test
    learner = _learner(synthetic_split, epochs=1, batch_size=4, max_steps=10, min_steps=2)
    assert learner.config.eval_stop_rule == "sample"
    learner.meta_fit(train)
    learner.predict(test)
    info = learner.run_info()["inner_steps"]
    train_hist, eval_hist = info["train_last_epoch"]["histogram"], info["eval"]["histogram"]
    assert sum(train_hist) == len(train) and sum(eval_hist) == len(test)
    p_train = torch.tensor(train_hist, dtype=torch.float64) / sum(train_hist)
    p_eval = torch.tensor(eval_hist, dtype=torch.float64) / sum(eval_hist)
    total_variation = 0.5 * (p_train - p_eval).abs().sum().item()
    assert total_variation < 0.25, (train_hist, eval_hist)
    assert abs(info["eval"]["mean"] - info["train_last_epoch"]["mean"]) < 1.0
    # the same seed gives the same draws, hence the same steps and predictions
    again = learner.predict(test)
    assert learner.run_info()["inner_steps"]["eval"]["histogram"] == eval_hist
    torch.testing.assert_close(again, learner.predict(test), rtol=0, atol=0)
    # the threshold rule with p around 0.1-0.5 keeps going: a different, longer distribution
    threshold = S2Meta.from_settings(train.schema, preset="paper", seed=0,
                                     overrides={**SMALL, "max_steps": 10, "min_steps": 2, "eval_stop_rule": "threshold"})
    threshold.load_state_dict(learner.state_dict())
    threshold.predict(test)
    t_info = threshold.run_info()["inner_steps"]["eval"]
    assert t_info["mean"] > info["eval"]["mean"], (t_info, info["eval"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_fused_backend_cuda_matches_cpu_over_three_meta_steps(synthetic_split, compiled):
    """The fused step runs on CUDA unchanged: the CPU's losses, stop probabilities and weights (1e-4)."""
    train = synthetic_split.train
    over = {**SMALL, "compile_controller": compiled, "inner_loop_exit": "masked"}
    cpu = S2Meta.from_settings(train.schema, preset="paper", overrides=over, seed=0)
    gpu = S2Meta.from_settings(train.schema, preset="paper", overrides=over, seed=0, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    for step in range(3):
        idx = range(step * 4, step * 4 + 4)
        lc = cpu.meta_step(train.batch(idx))
        lg = gpu.meta_step(train.batch(idx, device="cuda"))
        assert lg == pytest.approx(lc, rel=1e-4, abs=1e-4)
    for (name, pc), pg in zip(cpu.update_controller.named_parameters(), gpu.update_controller.parameters()):
        torch.testing.assert_close(pg.cpu(), pc, rtol=1e-4, atol=1e-4, msg=name)
    for pc, pg in zip(cpu.recommender.parameters(), gpu.recommender.parameters()):
        torch.testing.assert_close(pg.cpu(), pc, rtol=1e-4, atol=1e-4)
    batch = synthetic_split.test.batch(range(8))
    with torch.no_grad():
        ac = cpu.adapt(batch, uniforms=cpu.eval_uniforms(batch))
        ag = gpu.adapt(batch.to("cuda"), uniforms=gpu.eval_uniforms(batch))
    assert ag.steps.cpu().tolist() == ac.steps.tolist()
    torch.testing.assert_close(ag.stop_probs.cpu(), ac.stop_probs[: ag.stop_probs.shape[0]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cpu.predict(synthetic_split.test), gpu.predict(synthetic_split.test), rtol=1e-4, atol=1e-4)
