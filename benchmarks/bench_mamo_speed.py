"""One MAMO meta-training epoch: all users of a batch adapted at once versus one user at a time (the
per-user loop), in ONE run, on the same batches.

The learners are MAMO with the same settings and seed and differ only in ``backend``: ``lowrank``
(batched, per-user weights kept as rank-one factors; the default), ``torch.func`` (batched, a copy
of the local parameters per user under vmap) and ``loop`` (one user at a time). The tests prove
they compute the same numbers, and this script checks it again on the way (the largest difference
of the batch losses is reported). An epoch is every training user once, in the learner's own
seeded epoch order, one meta-step (local adaptation of every user, global update, memory writes)
per batch. The backends take turns batch by batch, so that a change of load on a shared machine
hits all of them; the epoch time of each is the sum of its batch times. The target ratio is
loop / ``lowrank``.

    python benchmarks/bench_mamo_speed.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_mamo_speed.py --data-dir ../shared/data --device cuda

``--loop-users N`` times the loop on the first N users' batches only and extrapolates its epoch
time (reported as such); the default times the full epoch for both. The JSON (machine, load
average, versions, git commit, data checksum, every batch time) goes to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, timed, write_record


def parse_sets(items: list[str]) -> dict:
    from metarec.config import parse_overrides

    return parse_overrides(items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=2)  # the target: 2 CPU cores
    p.add_argument("--preset", default=None, help="a MAMO preset (default: the config defaults = paper ML values)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="MAMO config override, e.g. --set batch_size=64 (repeatable)")
    p.add_argument("--loop-users", type=int, default=None,
                   help="time the loop on the batches of the first N users only and extrapolate (default: all)")
    p.add_argument("--backends", default="lowrank,torch.func,loop",
                   help="comma-separated MAMO backends to time; the ratio is loop over each batched one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/mamo_speed_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)

    from metarec.methods.mamo import MAMO
    from metarec.runtime import torch_generator

    split = load_timing_split(args, synthetic_users=2000, synthetic_items=800, seed=args.seed)
    train = split.train
    overrides = parse_sets(args.sets)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "loop" not in backends or len(backends) < 2:
        p.error("--backends must name loop and at least one batched backend")
    batched = [b for b in backends if b != "loop"]

    def build() -> dict:
        return {
            b: MAMO.from_settings(train.schema, preset=args.preset, overrides={**overrides, "backend": b},
                                  device=device, seed=args.seed)
            for b in backends
        }

    learners = build()
    cfg = learners[batched[0]].config
    # the learner's own epoch order (EpisodicLearner.meta_fit, epoch 0)
    order = torch.randperm(len(train), generator=torch_generator(args.seed, "epoch-order", 0))
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(train), cfg.batch_size)]
    loop_batches = len(batches)
    if args.loop_users is not None:
        loop_batches = max(1, -(-min(args.loop_users, len(train)) // cfg.batch_size))

    # warm-up (allocator, first-call dispatch) on a batch that is not part of the epoch, then a reset
    warm = train.batch(order[: cfg.batch_size], device=device)
    for learner in learners.values():
        learner.meta_step(warm)
    learners = build()

    times: dict[str, list[float]] = {b: [] for b in learners}
    losses: dict[str, list[float]] = {b: [] for b in learners}
    for i, idx in enumerate(batches):
        batch = train.batch(idx, device=device)
        for b, learner in learners.items():
            if b == "loop" and i >= loop_batches:
                continue
            loss, seconds = timed(device, lambda: learner.meta_step(batch))
            losses[b].append(loss)
            times[b].append(seconds)
        if (i + 1) % 20 == 0:
            print(f"  batch {i + 1}/{len(batches)}: " + ", ".join(f"{b} {sum(t):6.1f} s" for b, t in times.items()), flush=True)

    users_loop = sum(len(batches[i]) for i in range(loop_batches))
    epoch = {b: sum(times[b]) for b in batched}
    epoch["loop"] = sum(times["loop"]) * len(train) / users_loop
    ratios = {b: epoch["loop"] / epoch[b] for b in batched}
    ratio = ratios[batched[0]]
    # same numbers? (float32: the runs drift apart slowly over many meta-steps, so also the first)
    differences = {}
    for b in batched:
        d = [abs(x - y) for x, y in zip(losses[b], losses["loop"])]
        differences[b] = {"first": d[0], "largest": max(d)}
    diff, first_diff = differences[batched[0]]["largest"], differences[batched[0]]["first"]
    extrapolated = loop_batches < len(batches)
    print(f"MAMO epoch over {len(train)} users ({len(batches)} batches of {cfg.batch_size}), {args.device}, "
          f"{torch.get_num_threads()} threads:")
    for b in batched:
        print(f"  batched ({b}): {epoch[b]:7.1f} s   loop / {b}: {ratios[b]:5.1f}x   (batch-loss difference vs loop: "
              f"first {differences[b]['first']:.1e}, largest {differences[b]['largest']:.1e})")
    print(f"  per-user loop: {epoch['loop']:7.1f} s" + (f" (extrapolated from {users_loop} users)" if extrapolated else ""))

    record = {
        "what": "wall time of one MAMO meta-training epoch (every training user once, meta_step per batch)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "data_canonical": split.info.get("canonical"),
        "train_users": len(train),
        "batches": len(batches),
        "batch_size": cfg.batch_size,
        "preset": args.preset,
        "overrides": overrides,
        "config": {k: v for k, v in vars(cfg).items() if k != "backend"},
        "backends": backends,
        "epoch_s": epoch,
        "loop_extrapolated_from_users": users_loop if extrapolated else None,
        "batched_backend": batched[0],
        "ratio_loop_over_batched": ratio,
        "ratio_loop_over": ratios,
        "batch_loss_difference_vs_loop": differences,
        "median_batch_s": {b: statistics.median(t) for b, t in times.items() if t},
        "batch_s": times,
        "max_abs_batch_loss_difference": diff,
        "first_batch_loss_difference": first_diff,
    }
    out = write_record(record, args.out, prefix=f"mamo_speed_{args.data}_{args.device}", device=device, load_before=load_before)
    print(f"wrote {out} (load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
