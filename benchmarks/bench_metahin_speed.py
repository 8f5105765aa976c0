"""MetaHIN meta-steps: the ``fused`` backend versus ``reference``, in ONE run, on the same batches.

The two learners have the same settings (default: the ``paper`` preset) and seed and differ only
in ``backend``: ``reference`` adapts through :mod:`metarec.engine` (vmapped ``functional_call``
and ``torch.func.grad``), ``fused`` is the hand-batched computation of
:meth:`baselines.metahin.MetaHIN.co_adapt_fused`. The tests prove they compute the same numbers;
here the fused learner gets the reference learner's initial state and both train on the same
``--steps`` batches of ``batch_size`` training users (a seeded shuffle), taking turns batch by
batch (which one goes first alternates), so a change of load on a shared machine hits both. The
ratio that counts is ``ratio_reference_over_fused``: the reference's total meta-step time over
the fused one's, on exactly those batches (``_cpu``: the same with the process's CPU time, which
on a loaded machine leaves out the time spent waiting for a core). ``s_per_epoch`` extrapolates each backend's mean
meta-step to one epoch (``len(train) // batch_size`` steps, ``drop_last``); the losses of the
two backends are recorded step by step (they agree to float rounding).

Then each backend predicts the first ``--eval-users`` test users (timed) and, unless
``--profile-steps 0``, a profiled pass over a few more batches splits a meta-step into forward
(by phase: the ``metahin.*`` ranges of :mod:`torch.profiler`), backward and optimiser time, with
the operators that take the most time::

    python benchmarks/bench_metahin_speed.py --data-dir ../shared/data --threads 1

The JSON (every figure, the settings, machine, versions, git commit, data checksum) goes to
``benchmarks/results/metahin_speed_<data>_<device>_<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from metarec.bench.timing import (add_machine_options, default_record_path, load_timing_split, machine_from_options,
                                  timed, write_record)

PHASES = ("contexts", "semantic_step", "prior", "task_steps", "path_weights", "query")


def profile_steps(learner, batches, device: torch.device, top: int) -> dict:
    """Wall time of forward / backward / optimiser over ``batches``, the forward's ``metahin.*``
    phases (profiler CPU time) and the ``top`` operators by self CPU time, per meta-step."""
    from torch.profiler import ProfilerActivity, profile

    from metarec import engine

    split = {"forward_s": 0.0, "backward_s": 0.0, "optimizer_s": 0.0}
    cpu = dict.fromkeys(split, 0.0)
    learner.model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            t0, c0 = time.perf_counter(), time.process_time()
            pred = learner._predict_query(batch, first_order=learner.config.first_order)
            loss = engine.masked_mse.per_user(pred, batch.query_ratings, batch.query_mask).mean()
            t1, c1 = time.perf_counter(), time.process_time()
            learner.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2, c2 = time.perf_counter(), time.process_time()
            learner.optimizer.step()
            t3, c3 = time.perf_counter(), time.process_time()
            for key, (a, b), (ca, cb) in zip(split, ((t0, t1), (t1, t2), (t2, t3)), ((c0, c1), (c1, c2), (c2, c3))):
                split[key] += b - a
                cpu[key] += cb - ca
    n = len(batches)
    events = prof.key_averages()
    phases = {e.key[len("metahin."):]: e.cpu_time_total / 1e6 / n for e in events if e.key.startswith("metahin.")}
    ops = sorted((e for e in events if not e.key.startswith("metahin.")), key=lambda e: -e.self_cpu_time_total)
    return {
        "steps": n,
        "per_step_s": {k: v / n for k, v in split.items()},
        "per_step_cpu_s": {k: v / n for k, v in cpu.items()},
        "forward_phases_s": {p: phases.get(p, 0.0) for p in PHASES},
        "top_ops_self_s": [
            {"op": e.key, "calls_per_step": e.count / n, "self_s_per_step": e.self_cpu_time_total / 1e6 / n}
            for e in ops[:top]
        ],
        "note": "profiled pass (profiler overhead included; phases and ops in wall time, compare their shares "
        "within a backend); use the timed steps for speed",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=1)
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=10, help="timed meta-steps per backend (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-steps per backend first")
    p.add_argument("--eval-users", type=int, default=256, help="test users each backend predicts (timed)")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled meta-steps per backend (0: none)")
    p.add_argument("--top-ops", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/metahin_speed_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)
    for name in ("steps", "eval_users"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.profile_steps < 0:
        p.error("--warmup and --profile-steps must be >= 0")

    from baselines.metahin import MetaHIN

    split = load_timing_split(args, synthetic_users=600, synthetic_items=400, seed=args.seed)
    train, test = split.train, split.test
    learners = {
        b: MetaHIN.from_settings(train.schema, preset=args.preset, overrides={"backend": b}, device=device, seed=args.seed)
        for b in ("reference", "fused")
    }
    learners["fused"].load_state_dict(learners["reference"].state_dict())
    bs = learners["fused"].config.batch_size
    n_batches = args.warmup + args.steps + args.profile_steps
    if n_batches * bs > len(train):
        p.error(f"{n_batches} batches of {bs} users need {n_batches * bs} training users; there are {len(train)}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    batches = [train.batch(order[i * bs:(i + 1) * bs], device=device) for i in range(n_batches)]

    setup = {}
    for name, learner in learners.items():  # the training graph (fused: and its design operators)
        _, setup[name] = timed(device, lambda: learner.on_fit_start(train))
    fused = learners["fused"]

    times: dict[str, list[float]] = {"reference": [], "fused": []}
    cpu: dict[str, list[float]] = {"reference": [], "fused": []}
    losses: dict[str, list[float]] = {"reference": [], "fused": []}
    for i, batch in enumerate(batches[:args.warmup + args.steps]):
        names = ("reference", "fused") if i % 2 == 0 else ("fused", "reference")
        for name in names:
            c0 = time.process_time()
            loss, seconds = timed(device, lambda: learners[name].meta_step(batch))
            if i >= args.warmup:
                times[name].append(seconds)
                cpu[name].append(time.process_time() - c0)
                losses[name].append(loss)
        if i >= args.warmup:
            print(f"step {i - args.warmup + 1:3d}  reference {times['reference'][-1]:.3f} s "
                  f"(cpu {cpu['reference'][-1]:.3f})  fused {times['fused'][-1]:.3f} s (cpu {cpu['fused'][-1]:.3f})  loss {losses['reference'][-1]:.5f} / {losses['fused'][-1]:.5f}", flush=True)

    eval_part = test.subset(range(min(args.eval_users, len(test))))
    predict, preds = {}, {}
    for name, learner in learners.items():
        preds[name], predict[name] = timed(device, lambda: learner.predict(eval_part))

    steps_per_epoch = len(train) // bs
    total = {k: sum(v) for k, v in times.items()}
    total_cpu = {k: sum(v) for k, v in cpu.items()}
    rows = {
        name: {
            "meta_step_s": times[name],
            "meta_step_mean_s": total[name] / len(times[name]),
            "meta_step_median_s": statistics.median(times[name]),
            "s_per_epoch": total[name] / len(times[name]) * steps_per_epoch,
            "meta_step_cpu_s": cpu[name],
            "meta_step_cpu_mean_s": total_cpu[name] / len(cpu[name]),
            "cpu_s_per_epoch": total_cpu[name] / len(cpu[name]) * steps_per_epoch,
            "graph_setup_s": setup[name],
            "predict_s": predict[name],
            "eval_users_per_s": len(eval_part) / predict[name],
            "losses": losses[name],
        }
        for name in learners
    }
    record = {
        "format": "metarec-metahin-speed-1",
        "what": "MetaHIN meta-steps of the reference and fused backends on the same batches, taking turns; "
        "s_per_epoch = mean step x steps per epoch",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "train_users": len(train),
        "test_users": len(test),
        "seed": args.seed,
        "preset": args.preset,
        "config": {k: v for k, v in vars(fused.config).items() if k != "backend"},
        "paths": list(fused.paths),
        "batch_size": bs,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "ratio_reference_over_fused": total["reference"] / total["fused"],
        "ratio_reference_over_fused_cpu": total_cpu["reference"] / total_cpu["fused"],
        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(losses["reference"], losses["fused"])),
        "max_abs_prediction_difference": float((preds["reference"] - preds["fused"]).abs().max()),
        "eval_users": len(eval_part),
        "backends": rows,
    }
    out = Path(args.out) if args.out else default_record_path(f"metahin_speed_{args.data}_{args.device}")
    write_record(record, out, device=device, load_before=load_before)
    if args.profile_steps:
        prof_batches = batches[args.warmup + args.steps:]
        record["profile"] = {name: profile_steps(learner, prof_batches, device, args.top_ops) for name, learner in learners.items()}
        write_record(record, out, device=device, load_before=load_before)
    for name in ("reference", "fused"):
        r = rows[name]
        print(f"{name:10s} {r['meta_step_mean_s']:.3f} s/step (cpu {r['meta_step_cpu_mean_s']:.3f})  {r['s_per_epoch']:7.1f} "
              f"s/epoch (cpu {r['cpu_s_per_epoch']:.1f})  {r['eval_users_per_s']:7.1f} users/s predicted")
    print(f"ratio reference/fused {record['ratio_reference_over_fused']:.2f} wall, "
          f"{record['ratio_reference_over_fused_cpu']:.2f} cpu; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
