"""Wall time of one benchmark through the local process pool and through Ray, same parallelism.

Runs ``metarec bench`` as a user types it, once per executor and round (``--rounds``, taking
turns so that a change in the machine's load hits both alike), each into a fresh folder, and
checks that the two summaries are identical:

    python benchmarks/bench_ray_overhead.py --data-dir ../shared/data            # 2 methods x 5 seeds
    python benchmarks/bench_ray_overhead.py --dataset synthetic --seeds 0-1      # a quick try

The Ray side starts its own local Ray instance (``--executor ray`` without an address), so its
wall time includes Ray's start-up and shut-down: the cost a user pays. Target (issue #18):
within 10 % of the local pool. Writes ``benchmarks/results/ray_overhead_<dataset>_<UTC>.json``
with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metarec.bench.timing import write_record

METRIC_KEYS = ("cells", "seeds_ok")


def one_bench(executor: str, args: argparse.Namespace, out: Path) -> tuple[float, dict]:
    metarec = Path(sys.executable).parent / "metarec"
    cmd = [str(metarec), "bench", "--methods", args.methods, "--dataset", args.dataset, "--seeds", args.seeds,
           "--jobs", str(args.jobs), "--threads", "1", "--no-progress", "--executor", executor, "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{executor} bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    summary = {m: {k: e.get(k) for k in METRIC_KEYS} for m, e in results["methods"].items()}
    return wall, {"summary": summary, "results_wall_time_s": results["wall_time_s"],
                  "runs": len(results["runs"]), "nodes": sorted({json.dumps(r.get("node", {}).get("ray_node_id"))
                                                                 for r in results["runs"]})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", default=os.environ.get("METAREC_DATA_DIR"))
    parser.add_argument("--methods", default="global-mean,baseline-predictor")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", help="JSON path [default: benchmarks/results/ray_overhead_<dataset>_<UTC>.json]")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    details: dict[str, list[dict]] = {"local": [], "ray": []}
    try:
        for r in range(args.rounds):
            for executor in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                wall, info = one_bench(executor, args, work / f"{executor}-{r}")
                walls[executor].append(wall)
                details[executor].append(info)
                print(f"round {r} {executor}: {wall:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = all(d["summary"] == details["local"][0]["summary"] for k in details for d in details[k])
    best = {k: min(v) for k, v in walls.items()}
    record = {
        "what": "wall time of `metarec bench` through the local process pool vs a local Ray instance, same --jobs",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "dataset": args.dataset, "methods": args.methods, "seeds": args.seeds, "jobs": args.jobs,
        "runs_per_bench": details["local"][0]["runs"],
        "wall_s": walls, "best_wall_s": best,
        "ray_over_local": best["ray"] / best["local"],
        "overhead_percent": 100.0 * (best["ray"] / best["local"] - 1.0),
        "summaries_identical": same,
        "bench_wall_time_s": {k: [d["results_wall_time_s"] for d in v] for k, v in details.items()},
    }
    path = write_record(record, args.out, device=torch.device("cpu"), prefix=f"ray_overhead_{args.dataset}",
                        load_before=load_before)
    print(f"local {best['local']:.1f} s, ray {best['ray']:.1f} s: ray/local = {record['ray_over_local']:.3f}; "
          f"summaries identical: {same}; wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
