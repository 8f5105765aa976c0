"""Wall time per meta-batch: learn2learn's per-task loop versus metarec's batched torch.func engine.

Both run the SAME learner (MeLU, from the ``metarec.learners`` registry: embedding 32, MLP
64-64-1 on ML-1M's 7 profile features, decision layers adapted) on the SAME batches of 32 users,
and differ only in ``backend`` (``learn2learn``: per task ``clone()`` + ``adapt()``; ``torch.func``:
every user of the batch at once under ``vmap``). One meta-batch = meta-loss, backward, optimiser
step (``meta_step``). The parity test proves the two compute the same numbers; this script
measures what the batching buys. Run it with the learn2learn env's python::

    .venv-l2l/bin/python benchmarks/bench_l2l_speed.py --data-dir ../shared/data --threads 1

Each setting alternates the two backends batch by batch (so a load change on a shared machine
hits both) and reports medians, and their ratio, from this one run. The JSON goes to
``benchmarks/results/`` with the machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, timed, write_record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=1)
    p.add_argument("--method", default="melu", help="a MAML-family learner with a 'backend' config field")
    p.add_argument("--users", type=int, default=32, help="users per meta-batch")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="inner steps to measure")
    p.add_argument("--orders", nargs="+", choices=["second", "first"], default=["second", "first"])
    p.add_argument("--repeats", type=int, default=15, help="timed meta-batches per backend and setting")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/l2l_speed_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)

    import learn2learn

    from metarec.registry import get_learner
    from metarec.runtime import torch_generator

    cls = get_learner(args.method)
    train = load_timing_split(args, synthetic_users=600, synthetic_items=400).train
    n_batches = args.warmup + args.repeats
    if len(train) < args.users:
        raise SystemExit(f"only {len(train)} training users, fewer than --users {args.users}")
    gen = torch_generator(0, "bench-l2l-speed")
    batches = [
        train.batch(torch.randperm(len(train), generator=gen)[: args.users], device=device) for _ in range(n_batches)
    ]
    # Realistic rates (MeLU's tuned preset), the harness' defaults otherwise.
    base = {"inner_lr": 5e-2, "meta_lr": 1e-3, "batch_size": args.users}

    results = []
    for steps in args.steps:
        for order in args.orders:
            cfg = {**base, "inner_steps": steps, "first_order": order == "first"}
            learners = {
                b: cls.from_settings(train.schema, overrides={**cfg, "backend": b}, device=device, seed=0)
                for b in ("learn2learn", "torch.func")
            }
            times: dict[str, list[float]] = {b: [] for b in learners}
            for i, batch in enumerate(batches):
                for b, learner in learners.items():
                    _, seconds = timed(device, lambda: learner.meta_step(batch))
                    if i >= args.warmup:
                        times[b].append(seconds)
            med = {b: statistics.median(t) for b, t in times.items()}
            row = {
                "inner_steps": steps,
                "order": order,
                "median_s": med,
                "min_s": {b: min(t) for b, t in times.items()},
                "ratio_l2l_over_engine": med["learn2learn"] / med["torch.func"],
            }
            results.append(row)
            print(
                f"steps={steps} {order:6s} order: learn2learn {med['learn2learn'] * 1e3:8.1f} ms  "
                f"torch.func {med['torch.func'] * 1e3:8.1f} ms  ratio {row['ratio_l2l_over_engine']:5.1f}x",
                flush=True,
            )

    record = {
        "what": "median wall time per meta-batch (meta_step: meta-loss, backward, optimiser step)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "method": args.method,
        "users_per_batch": args.users,
        "data": args.data,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": results,
    }
    out = write_record(record, args.out, prefix=f"l2l_speed_{args.device}", device=device, load_before=load_before,
                       extra_environment={"learn2learn": learn2learn.__version__})
    print(f"wrote {out} (load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
