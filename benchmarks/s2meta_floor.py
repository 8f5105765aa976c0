"""The floor of one s²Meta meta-step (``paper`` preset, one user per Adam step) on this CPU: the
work the faithful algorithm cannot skip, timed at its best implementation here, next to the
reference backend's and the fused backend's whole meta-step on the same users, in ONE run.

Per inner step the algorithm must run the update controller over every adapted coordinate (10,881
rows, forward and backward: the LSTM cell, LayerNorm, heads and update) and the predictor's
forward and support gradient; per user it must take the final query loss' gradient through the
predictor and one Adam step over all meta-parameters. The floor times exactly these:

* ``controller``: the native C++ step (:mod:`metarec.native`, the fastest implementation of the
  controller here) called directly, ``T`` forward steps chained through ``(theta, h, c)`` into
  reused activation buffers, then their ``T`` backward steps -- no autograd, no Python between
  rows; on the learner's real weights, parameters and support gradients of real ML-1M users;
* ``predictor``: :func:`metarec.nn.per_user_relu_mlp_mse_grads` (forward + analytic gradient,
  support and query in one pass), as the fused backend runs it each step;
* ``query_grad``: the final query loss through the adapted MLP and its backward (autograd);
* ``adam``: the learner's fused Adam step over its ~115k meta-parameters (gradients present).

``floor(T) = T (controller + predictor) + query_grad + adam``. Below it, the ``arithmetic`` bound
replaces the controller step by its matrix products alone (the gates, the recurrent and the weight
gradients of all 8 tensors as MKL calls, ``bench_s2meta_speed.matmul_floor_s``): what the
controller would cost if its sigmoids, tanhs, LayerNorm and heads were free. It leaves out everything that could
in principle be removed (the stop controller, the embedders, autograd's bookkeeping of the chain of
steps, Python), so it is below what any implementation of this algorithm on this CPU can reach.
``T`` = the mean inner steps per user the learner takes on the timed users (``natural``) and,
with ``--forced-steps``, fixed step counts (``min_steps = max_steps = T``) at which the reference
and fused meta-steps are timed as well -- the later epochs of a 20-epoch run average more inner
steps than the first users do. The ratio that answers "is 10x reachable" is
``reference / floor`` at the same ``T``: a faster fused backend can at most reach it.

    python benchmarks/s2meta_floor.py --data-dir ../shared/data --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, write_record


#: The clock every time in the record is read from (``--clock``): this thread's CPU time by default,
#: because on a shared machine the wall time of a long meta-step includes waits for a core that a
#: few-millisecond floor component mostly escapes, which would bias the ratios.
CLOCK = {"cpu": time.thread_time, "wall": time.perf_counter}


def _median_s(fn, repeats: int, clock) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def controller_chain_s(learner, batch, steps: int, repeats: int, clock) -> dict[str, float]:
    """Median seconds of ``steps`` chained native controller steps forward, and of their backward."""
    from metarec.learned_optim import ActivationWorkspace, SegmentLayout, gate_bias, preprocess
    from metarec.nn import per_user_relu_mlp_mse_grads

    c = learner.config
    base = [p.detach() for p in learner.recommender.parameters()]
    layout = SegmentLayout(tuple(p.numel() for p in base), 1)
    with torch.no_grad():
        w = learner.update_controller.stacked()
        x_s = learner.inputs(batch.user_features, batch.support_features)
        loss, grads = per_user_relu_mlp_mse_grads([p.unsqueeze(0) for p in base], x_s, batch.support_ratings,
                                                  batch.support_mask)
        grad = torch.cat([g.reshape(-1) for g in grads]).contiguous()  # a real support gradient
        theta0 = torch.cat([p.reshape(-1) for p in base]).contiguous()
        h0 = layout.per_row(w.h0).contiguous()
        c0 = layout.per_row(w.c0).contiguous()
        bias = gate_bias(w, preprocess(loss, c.smooth_p)[0]).contiguous()
        weights = [w.w.contiguous(), w.ln_w.contiguous(), w.ln_b.contiguous(), w.head_w.contiguous(),
                   w.head_b.contiguous()]
    active = torch.ones(1, dtype=torch.bool)
    numels = list(layout.numels)
    ws = ActivationWorkspace()
    op = torch.ops.metarec_native
    consts = (numels, w.ln_eps, float(c.grad_clamp), float(c.smooth_p))
    states: list = []

    def forward() -> None:
        states.clear()
        theta, h, cc = theta0, h0, c0
        for t in range(steps):
            saved = ws.get(t, layout.rows, c.lstm_hidden, theta.dtype, theta.device)
            out = op.coordinate_lstm_forward(theta, h, cc, grad, active, bias, *weights, *consts, True, saved)
            states.append((theta, h, cc, saved))
            theta, h, cc = out[0], out[1], out[2]

    d_theta = torch.randn(layout.rows) * 1e-3
    d_h, d_c = torch.zeros(layout.rows, c.lstm_hidden), torch.zeros(layout.rows, c.lstm_hidden)

    def backward() -> None:
        dt, dh, dc = d_theta, d_h, d_c
        for theta, h, cc, saved in reversed(states):
            g = op.coordinate_lstm_backward(theta, h, cc, theta, active, bias, *weights, *consts, dt, dh, dc, saved)
            dt, dh, dc = g[0], g[1], g[2]

    fwd = _median_s(forward, repeats, clock)
    bwd = _median_s(backward, repeats, clock)
    return {"forward_s": fwd, "backward_s": bwd, "per_step_s": (fwd + bwd) / steps}


def predictor_s(learner, batch, repeats: int, clock) -> dict[str, float]:
    """Median seconds of one predictor step (forward + support gradient + query loss, as the fused
    backend runs it) and of the final query loss' forward + backward through the adapted MLP."""
    from metarec import engine
    from metarec.nn import per_user_relu_mlp, per_user_relu_mlp_mse_grads

    params = [p.detach().unsqueeze(0).clone() for p in learner.recommender.parameters()]
    with torch.no_grad():
        x_s = learner.inputs(batch.user_features, batch.support_features)
        x_q = learner.inputs(batch.user_features, batch.query_features)
    x_all = torch.cat([x_s, x_q], 1)
    y_all = torch.cat([batch.support_ratings, batch.query_ratings], 1)
    zs, zq = torch.zeros_like(batch.support_mask), torch.zeros_like(batch.query_mask)
    mask_s, mask_q = torch.cat([batch.support_mask, zq], 1), torch.cat([zs, batch.query_mask], 1)
    out = [torch.empty_like(p) for p in params]
    step = _median_s(lambda: per_user_relu_mlp_mse_grads(params, x_all, y_all, mask_s, out=out, eval_mask=mask_q),
                     repeats, clock)
    leaves = [p.requires_grad_() for p in params]

    def final() -> None:
        loss = engine.masked_mse.per_user(per_user_relu_mlp(leaves, x_q)[0].squeeze(-1), batch.query_ratings,
                                          batch.query_mask)
        torch.autograd.grad(loss.sum(), leaves)

    return {"step_s": step, "query_grad_s": _median_s(final, repeats, clock)}


def adam_s(learner, batch, repeats: int, clock) -> float:
    """Median seconds of the learner's Adam step (gradient clipping excluded), gradients present."""
    probe = copy.deepcopy(learner)
    probe.meta_step(batch)  # leaves the gradients of a real meta-step in place
    return _median_s(probe.optimizer.step, repeats, clock)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=1)
    p.add_argument("--users", type=int, default=16, help="training users the meta-steps are timed on")
    p.add_argument("--skip", type=int, default=8, help="users trained first, untimed (warm-up)")
    p.add_argument("--forced-steps", default="10,20",
                   help="comma-separated inner step counts forced by min_steps = max_steps (empty: none)")
    p.add_argument("--forced-users", type=int, default=4, help="users timed at each forced step count")
    p.add_argument("--repeats", type=int, default=15, help="repetitions of each floor component (median)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="s2Meta config override for every learner, e.g. --set lstm_hidden=8 (repeatable)")
    p.add_argument("--clock", choices=sorted(CLOCK), default="cpu",
                   help="cpu: this thread's CPU time (default; fair on a shared machine), wall: wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    clock = CLOCK[args.clock]
    load_before = os.getloadavg()
    device = machine_from_options(p, args)
    if device.type != "cpu":
        p.error("the floor is measured on the CPU (the native controller kernel is a CPU kernel)")

    from baselines.s2meta import S2Meta
    from metarec import learned_optim, native
    from metarec.config import parse_overrides
    from metarec.runtime import torch_generator

    if not native.load("coordinate_lstm_cpu"):
        p.error("the native controller kernel did not build here; the floor needs it")
    split = load_timing_split(args, synthetic_users=2000, synthetic_items=800, seed=args.seed)
    train = split.train
    n_train = len(train)
    overrides = parse_overrides(args.sets)

    def build(backend: str, **over) -> S2Meta:
        return S2Meta.from_settings(train.schema, preset="paper", device=device, seed=args.seed,
                                    overrides={**overrides, "backend": backend, **over})

    fused = build("fused")
    order = torch.randperm(n_train, generator=torch_generator(args.seed, "epoch-order", 0))  # meta_fit's epoch 0
    for i in range(args.skip):
        fused.meta_step(train.batch(order[i : i + 1]))
    users = [train.batch(order[i : i + 1]) for i in range(args.skip, args.skip + args.users)]
    state = copy.deepcopy(fused.state_dict())
    assert learned_optim.native_available(torch.zeros(1), fused.update_controller.stacked())

    def meta_steps(backend: str, batches, **over) -> tuple[list[float], list[int]]:
        """Seconds and inner steps of each user's meta-step, every user from the same state."""
        learner = build(backend, **over)
        learner.meta_step(batches[0])  # first-call dispatch, allocator
        seconds, steps = [], []
        for b in batches:
            learner.load_state_dict(state)
            learner._stats = {}
            t0 = clock()
            learner.meta_step(b)
            seconds.append(clock() - t0)
            steps.append(int(learner._stats["histogram"].nonzero().flatten()[0]))
        return seconds, steps

    # the natural step counts: fused and reference on the same users, the same state, taking turns
    fused_s, fused_steps = meta_steps("fused", users)
    ref_s, ref_steps = meta_steps("reference", users)
    assert fused_steps == ref_steps, "the two backends took different inner steps (same draws expected)"
    mean_t = sum(fused_steps) / len(fused_steps)

    probe = build("fused")
    probe.load_state_dict(state)
    pred = predictor_s(probe, users[0], args.repeats, clock)
    adam = adam_s(probe, users[0], args.repeats, clock)

    def floor_at(t_steps: float) -> dict[str, float]:
        chained = max(1, round(t_steps))  # the chain's cost per step, at about this length
        chain = controller_chain_s(probe, users[0], chained, args.repeats, clock)
        ctrl = chain["per_step_s"]
        per_user = t_steps * (ctrl + pred["step_s"]) + pred["query_grad_s"] + adam
        return {"inner_steps": t_steps, "controller_step_s": ctrl, "controller_chain": {"steps": chained, **chain},
                "predictor_step_s": pred["step_s"], "query_grad_s": pred["query_grad_s"], "adam_s": adam,
                "floor_user_s": per_user, "floor_epoch_s": per_user * n_train}

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_s2meta_speed import matmul_floor_s

    def matmul_once() -> float:  # matmul_floor_s runs the step 1 + 20 times; read our clock around it
        t0 = clock()
        matmul_floor_s(probe, device, repeats=20)
        return (clock() - t0) / 21

    matmul = statistics.median(matmul_once() for _ in range(5))

    def add_ratios(r: dict) -> None:
        r["arithmetic_user_s"] = r["inner_steps"] * (matmul + r["predictor_step_s"]) + r["query_grad_s"] + r["adam_s"]
        r["arithmetic_epoch_s"] = r["arithmetic_user_s"] * n_train
        r["fused_epoch_s"] = r["fused_user_s"] * n_train
        r["reference_epoch_s"] = r["reference_user_s"] * n_train
        r["reference_over_floor"] = r["reference_user_s"] / r["floor_user_s"]
        r["reference_over_arithmetic"] = r["reference_user_s"] / r["arithmetic_user_s"]
        r["reference_over_fused"] = r["reference_user_s"] / r["fused_user_s"]
        r["fused_over_floor"] = r["fused_user_s"] / r["floor_user_s"]

    natural = floor_at(mean_t)
    natural.update({"fused_user_s": statistics.mean(fused_s), "reference_user_s": statistics.mean(ref_s)})
    add_ratios(natural)
    forced = {}
    for t in [int(v) for v in args.forced_steps.split(",") if v.strip()]:
        sub = users[: args.forced_users]
        over = {"min_steps": t, "max_steps": t}
        f_s, f_steps = meta_steps("fused", sub, **over)
        r_s, _ = meta_steps("reference", sub, **over)
        assert set(f_steps) == {t}
        rec_t = floor_at(float(t))
        rec_t.update({"fused_user_s": statistics.mean(f_s), "reference_user_s": statistics.mean(r_s)})
        add_ratios(rec_t)
        forced[str(t)] = rec_t

    rows = sum(p.numel() for p in probe.recommender.parameters())
    h = probe.config.lstm_hidden
    flops_row = 2 * ((4 + h) * 4 * h + 4 * h * h + (4 + h) * 4 * h)  # gates fwd, d_h, d_w (multiply-adds x 2)
    rec = {
        "what": "the floor of one s2Meta meta-step on this CPU (native controller chain + predictor steps + final "
                "query gradient + Adam) next to the fused and reference meta-steps on the same users, one run",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "train_users": n_train,
        "clock": args.clock,
        "users_timed": len(users),
        "skipped_users": args.skip,
        "overrides": overrides,
        "config": {k: v for k, v in vars(fused.config).items() if k != "backend"},
        "inner_steps_per_user": fused_steps,
        "natural": natural,
        "forced": forced,
        "controller_matmul_only_step_s": matmul,
        "controller_rows": rows,
        "controller_matmul_flops_per_step": flops_row * rows,
        "controller_matmul_gflops_achieved": flops_row * rows / natural["controller_step_s"] / 1e9,
        "threads": torch.get_num_threads(),
    }
    out = write_record(rec, args.out, prefix=f"s2meta_floor_{args.data}_{args.device}", device=device,
                       load_before=load_before)
    print(f"s2Meta floor ({args.clock} time), {torch.get_num_threads()} thread(s), {len(users)} users, "
          f"{mean_t:.2f} inner steps each:")
    for name, r in [("natural", natural), *((f"forced T={k}", v) for k, v in forced.items())]:
        print(f"  {name:13s} floor {1e3 * r['floor_user_s']:6.1f} ms/user (controller {1e3 * r['controller_step_s']:.2f} "
              f"+ predictor {1e3 * r['predictor_step_s']:.2f} ms/step, query grad {1e3 * r['query_grad_s']:.2f}, "
              f"Adam {1e3 * r['adam_s']:.2f} ms) = {r['floor_user_s'] * n_train:6.1f} s/epoch; fused "
              f"{1e3 * r['fused_user_s']:6.1f}, reference {1e3 * r['reference_user_s']:6.1f} ms/user: reference/floor "
              f"{r['reference_over_floor']:.1f}x, reference/fused {r['reference_over_fused']:.2f}x; arithmetic bound "
              f"{1e3 * r['arithmetic_user_s']:.1f} ms/user = {r['arithmetic_epoch_s']:.1f} s/epoch, reference/it "
              f"{r['reference_over_arithmetic']:.1f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
