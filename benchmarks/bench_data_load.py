"""Time the first (parse + protocol + cache write) and the cached load of a dataset.

Each measurement runs in a fresh Python process, so the cached load really starts cold (only
the OS file cache is warm, as in a second ``metarec bench`` run). The time reported is that of
the ``load_split`` call; the import time of metarec (torch, numpy) is reported separately.

    python benchmarks/bench_data_load.py --dataset ml-1m --data-dir ../shared/data --repeats 3

Targets (issue #3): first load < 20 s, cached load < 2 s on 2 cores. Writes
``benchmarks/results/data_load_<dataset>_<UTC time>.json`` with the environment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from metarec.bench.environment import cpu_model, git_label

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
from metarec.data import load_split
t1 = time.perf_counter()
split = load_split(sys.argv[1], data_dir=sys.argv[2] or None, seed=int(sys.argv[3]), use_cache=True, offline=True)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "cache_hit": split.info["cache"]["hit"],
                  "checksum": split.info["checksum"], "canonical": split.info["canonical"],
                  "train_users": split.info["train_users"], "test_users": split.info["test_users"]}))
"""


def run_child(dataset: str, data_dir: str, seed: int, cache_dir: str, cores: int | None, threads: int) -> dict:
    env = dict(os.environ, METAREC_CACHE_DIR=cache_dir, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", CHILD, dataset, data_dir, str(seed)]
    preexec = None
    if cores and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))[:cores]
        preexec = lambda: os.sched_setaffinity(0, allowed)  # noqa: E731
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=preexec, cwd=REPO)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="Pin each run to this many cores (0 = no pinning).")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the child process.")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()

    first, cached = [], []
    info: dict = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="metarec-bench-cache-") as cache_dir:
            a = run_child(args.dataset, args.data_dir, args.seed, cache_dir, args.cores or None, args.threads)
            b = run_child(args.dataset, args.data_dir, args.seed, cache_dir, args.cores or None, args.threads)
        if a["cache_hit"] or not b["cache_hit"]:
            raise SystemExit(f"unexpected cache behaviour: first hit={a['cache_hit']}, second hit={b['cache_hit']}")
        first.append(a)
        cached.append(b)
        info = a

    def summary(runs: list[dict], key: str) -> dict:
        xs = [r[key] for r in runs]
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}

    import numpy
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    result = {
        "benchmark": "data_load",
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "seed": args.seed,
        "data_checksum": info.get("checksum"),
        "canonical": info.get("canonical"),
        "train_users": info.get("train_users"),
        "test_users": info.get("test_users"),
        "first_load_s": summary(first, "load_s"),
        "cached_load_s": summary(cached, "load_s"),
        "import_s": summary(first + cached, "import_s"),
        "targets_s": {"first_load": 20.0, "cached_load": 2.0},
        "meets_targets": statistics.median([r["load_s"] for r in first]) < 20.0
        and statistics.median([r["load_s"] for r in cached]) < 2.0,
        "environment": {
            "cpu_model": cpu_model(),
            "cpus_visible": os.cpu_count(),
            "cores_pinned": args.cores or None,
            "torch_threads": args.threads,
            "load_average_at_end": load,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "git_commit": git_label(),
        },
        "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"data_load_{args.dataset}_{result['time_utc'].replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    print(f"{args.dataset}: first load {result['first_load_s']['median']:.2f} s, cached load "
          f"{result['cached_load_s']['median']:.3f} s (median of {args.repeats}; import {result['import_s']['median']:.2f} s); "
          f"targets met: {result['meets_targets']}")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
