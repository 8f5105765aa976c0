#!/usr/bin/env python3
"""Recompute every reported metric of a ``metarec bench`` run from its ``predictions.csv``.

An independent check of the harness: this script does not import metarec (only the Python
standard library), re-derives each number from the per-rating predictions, and compares it
with ``results.json``. It exits with status 1 if anything disagrees (or is missing), 0 if all
agree.

    python benchmarks/recompute_metrics.py runs/20240101-120000 [--tol 1e-9]

Definitions (MAMO paper, Eq. 13-15 and appendix A.2.3), written out from the paper:

* overall MAE: mean over test users of each user's mean absolute error; overall NDCG@k:
  mean over test users of NDCG@k of the user's query list; overall RMSE: over all ratings.
* scenario (W-W, W-C, C-W, C-C) MAE and RMSE: over the ratings of that scenario; scenario
  NDCG@k: the scenario's (prediction, rating) pairs in file order (test-user order) cut into
  clips of ``clip_size`` (the last, shorter clip kept), NDCG@k per clip, averaged.
* NDCG@k of a list: rank by prediction, descending, equal predictions keep list order;
  DCG = sum over the first min(k, len) ranks r = 1.. of (2**rating - 1) / log2(r + 1); IDCG
  the same for the list sorted by rating; 1.0 when IDCG is 0.
* the aggregate of a method: mean over its seeds and sample standard deviation (n - 1).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

SCENARIOS = ("W-W", "W-C", "C-W", "C-C")


def ndcg(preds: list[float], ratings: list[float], k: int) -> float:
    n = min(k, len(preds))
    order = sorted(range(len(preds)), key=lambda i: -preds[i])  # sorted() is stable
    dcg = sum((2.0 ** ratings[i] - 1.0) / math.log2(r + 2) for r, i in enumerate(order[:n]))
    ideal = sorted(ratings, reverse=True)[:n]
    idcg = sum((2.0 ** y - 1.0) / math.log2(r + 2) for r, y in enumerate(ideal))
    return 1.0 if idcg == 0 else dcg / idcg


def metrics_of(rows: list[dict], k: int, clip_size: int) -> dict[str, dict[str, float]]:
    """Every cell's MAE, RMSE, NDCG@k and n from the rows of one (method, seed)."""
    key = f"ndcg@{k}"
    users: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        users.setdefault(r["user_id"], []).append(r)
    errors = [abs(r["prediction"] - r["rating"]) for r in rows]
    out = {
        "overall": {
            "mae": sum(sum(abs(r["prediction"] - r["rating"]) for r in rs) / len(rs) for rs in users.values())
            / len(users),
            "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
            key: sum(ndcg([r["prediction"] for r in rs], [r["rating"] for r in rs], k) for rs in users.values())
            / len(users),
            "n": len(rows),
        }
    }
    for s in SCENARIOS:
        cell = [r for r in rows if r["scenario"] == s]
        if not cell:
            out[s] = {"mae": None, "rmse": None, key: None, "n": 0}
            continue
        e = [abs(r["prediction"] - r["rating"]) for r in cell]
        clips = [cell[i : i + clip_size] for i in range(0, len(cell), clip_size)]
        out[s] = {
            "mae": sum(e) / len(e),
            "rmse": math.sqrt(sum(x * x for x in e) / len(e)),
            key: sum(ndcg([r["prediction"] for r in c], [r["rating"] for r in c], k) for c in clips) / len(clips),
            "n": len(cell),
        }
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def read_rows(path: Path) -> "OrderedDict[tuple[str, int], list[dict]]":
    groups: "OrderedDict[tuple[str, int], list[dict]]" = OrderedDict()
    # committed results keep their predictions gzip-compressed (predictions.csv.gz)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        expected = ["method", "seed", "user_id", "item_id", "rating", "prediction", "scenario"]
        if reader.fieldnames != expected:
            sys.exit(f"{path}: header {reader.fieldnames} is not {expected}")
        for line, r in enumerate(reader, start=2):
            try:
                row = {**r, "seed": int(r["seed"]), "rating": float(r["rating"]), "prediction": float(r["prediction"])}
            except ValueError as exc:
                sys.exit(f"{path}, line {line}: {exc}")
            if row["scenario"] not in SCENARIOS:
                sys.exit(f"{path}, line {line}: unknown scenario {row['scenario']!r}")
            groups.setdefault((row["method"], row["seed"]), []).append(row)
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--tol", type=float, default=1e-9, help="largest accepted absolute difference")
    args = ap.parse_args(argv)
    results = json.loads((args.run_dir / "results.json").read_text("utf-8"))
    info = results["metrics_info"]
    k, clip_size = int(info["k"]), int(info["clip_size"])
    key = f"ndcg@{k}"
    pred_path = args.run_dir / "predictions.csv"
    if not pred_path.exists() and pred_path.with_suffix(".csv.gz").exists():
        pred_path = pred_path.with_suffix(".csv.gz")
    groups = read_rows(pred_path)

    problems: list[str] = []
    checked, worst = 0, 0.0

    def compare(what: str, ours: float | None, theirs: float | None) -> None:
        nonlocal checked, worst
        checked += 1
        if ours is None or theirs is None:
            if ours is not theirs and not (ours is None and theirs is None):
                problems.append(f"{what}: recomputed {ours}, reported {theirs}")
            return
        diff = abs(ours - theirs)
        worst = max(worst, diff)
        if not diff <= args.tol:
            problems.append(f"{what}: recomputed {ours!r}, reported {theirs!r} (diff {diff:.3g})")

    ok_runs = [r for r in results["runs"] if r["status"] == "ok"]
    recomputed: dict[tuple[str, int], dict] = {}
    for run in ok_runs:
        gk = (run["method"], int(run["seed"]))
        if gk not in groups:
            problems.append(f"{gk[0]} seed {gk[1]}: no rows in predictions.csv")
            continue
        mine = recomputed[gk] = metrics_of(groups[gk], k, clip_size)
        for cell in ("overall", *SCENARIOS):
            for m in ("mae", "rmse", key, "n"):
                compare(f"{gk[0]} seed {gk[1]} {cell} {m}", mine[cell][m], run["metrics"][cell][m])
    extra = set(groups) - {(r["method"], int(r["seed"])) for r in ok_runs}
    for gk in sorted(extra):
        problems.append(f"predictions.csv has rows of {gk[0]} seed {gk[1]}, which is not a successful run")

    for method, entry in results["methods"].items():
        if not entry.get("cells"):
            continue
        seeds = entry["seeds"]
        for cell in ("overall", *SCENARIOS):
            for m in ("mae", key):
                vals = [recomputed[(method, s)][cell][m] for s in seeds if (method, s) in recomputed]
                vals = [v for v in vals if v is not None]
                if not vals:
                    continue
                mean, std = mean_std(vals)
                rep = entry["cells"][cell][m]
                compare(f"{method} aggregate {cell} {m} mean", mean, rep["mean"])
                compare(f"{method} aggregate {cell} {m} std", std, rep["std"])

    rows = sum(len(g) for g in groups.values())
    if problems:
        print(f"DISAGREE: {len(problems)} of {checked} values differ (tolerance {args.tol:g}):")
        for p in problems[:50]:
            print("  " + p)
        return 1
    print(
        f"OK: {checked} values of {len(ok_runs)} runs recomputed from {rows} predictions agree with "
        f"results.json (largest difference {worst:.2g}, tolerance {args.tol:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
