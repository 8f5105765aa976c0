"""Full-catalogue ranking evaluation time: every test user adapted to their support set and every
catalogue item scored, per method, as ``metarec bench --ranking catalogue`` does it.

For each method the script builds the learner (its config defaults, what the harness runs),
meta-trains it for ``--epochs`` epochs (the evaluation's cost does not depend on the weights, so
the default 0 times an untrained model; learners without an epoch setting are fitted in full), then times :func:`metarec.ranking.catalogue_ranking` on
all test users of the seed's split (1,208 on ML-1M): the scoring of all candidate items
(``candidate_batches`` of ``--batch-size`` users) and the Recall/NDCG computation of the five
cells. The target is under 60 s per method on the CPU for MAMO- and MeLU-sized models; the record
has the wall time and the process's CPU time (the better figure on a loaded shared machine).

    python benchmarks/bench_catalogue_ranking.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_catalogue_ranking.py --data-dir ../shared/data --methods mamo,melu,tanp --device cuda

The JSON (machine, load average, versions, data checksum, per-method times and the metrics) goes
to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, timed, write_record

TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=2)
    p.add_argument("--methods", default="mamo,melu", help="comma-separated learner names")
    p.add_argument("--epochs", type=int, default=0, help="meta-training epochs before timing (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="test users scored per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/catalogue_ranking_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)
    if args.batch_size < 1 or args.epochs < 0:
        p.error("--batch-size must be >= 1 and --epochs >= 0")

    from metarec.ranking import catalogue_ranking, item_states
    from metarec.registry import UnknownLearnerError, get_learner

    split = load_timing_split(args, synthetic_users=2000, synthetic_items=800, seed=args.seed)
    rated, cold = item_states(split)
    record = {
        "format": "metarec-catalogue-ranking-speed-1",
        "what": "full-catalogue ranking evaluation of all test users: adapt + score every catalogue item, then "
                "Recall@10/20 and NDCG@10/20 in 5 cells",
        "command": "python benchmarks/bench_catalogue_ranking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "seed": args.seed,
        "test_users": len(split.test),
        "candidates": int(rated.sum()),
        "candidates_warm": int((rated & ~cold).sum()),
        "candidates_cold": int((rated & cold).sum()),
        "batch_size": args.batch_size,
        "target_s": TARGET_S,
        "rows": [],
    }
    prefix = f"catalogue_ranking_{args.data}_{device.type}"
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        try:
            cls = get_learner(name)
        except UnknownLearnerError as exc:
            p.error(str(exc))
        import dataclasses

        has_epochs = "epochs" in {f.name for f in dataclasses.fields(cls.Config)}
        learner = cls.from_settings(split.train.schema, overrides={"epochs": args.epochs} if has_epochs else None,
                                    device=device, seed=args.seed)
        # always meta_fit (0 epochs still builds what a learner prepares at the start of training,
        # e.g. MetaHIN's graph; learners without epochs are fitted in full -- they are cheap)
        learner.meta_fit(split.train)
        cpu0 = time.process_time()
        result, seconds = timed(device, lambda: catalogue_ranking(learner, split, batch_size=args.batch_size, seed=args.seed))
        cpu_seconds = time.process_time() - cpu0
        row = {
            "method": name,
            "epochs_trained": args.epochs,
            "seconds": seconds,
            # CPU time of this process: on a machine shared with other work (load average above the
            # core count) the wall time overstates the cost; with --threads 1 the CPU time is what
            # the evaluation takes on one otherwise idle core
            "cpu_seconds": cpu_seconds,
            "users_per_s": len(split.test) / seconds,
            "scores_per_s": len(split.test) * record["candidates"] / seconds,
            "meets_target": seconds < TARGET_S,
            "metrics": result["cells"],
        }
        record["rows"].append(row)
        print(f"{name}: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU for {len(split.test)} users x {record['candidates']} items "
              f"({'<' if row['meets_target'] else '>='} {TARGET_S:.0f} s)", flush=True)
        path = write_record(record, args.out, device=device, prefix=prefix, load_before=load_before)
        args.out = str(path)  # later rows rewrite the same file
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
