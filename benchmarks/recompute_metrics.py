#!/usr/bin/env python3
"""Recompute every reported metric of a ``metarec bench`` run from its ``predictions.csv``.

An independent check of the harness: this script does not import metarec (only the Python
standard library), re-derives each number from the per-rating predictions, and compares it
with ``results.json``. It exits with status 1 if anything disagrees (or is missing), 0 if all
agree.

    python benchmarks/recompute_metrics.py runs/20240101-120000 [--tol 1e-9]

Definitions (MAMO paper, Eq. 13-15 and appendix A.2.3, plus metarec's additions), written
out here from their statements, not from metarec's code:

* ranking: by prediction, descending; a group of equal predictions is scored by its
  expectation over every order of the group (tie-averaged, McSherry & Najork 2008): at each
  rank the group occupies, the gain is the mean gain of its items.
* NDCG@k of a list: DCG = sum over the first min(k, len) ranks r = 1.. of
  (2**rating - 1) / log2(r + 1) (tie-averaged gains); IDCG the same for the list sorted by
  rating; 1.0 when IDCG is 0.
* overall MAE: mean over test users of each user's mean absolute error; RMSE: over all
  ratings; overall and scenario NDCG@k: mean over users with >= 2 query ratings in the cell
  of NDCG@k of their own ratings there (within user).
* scenario (W-W, W-C, C-W, C-C) MAE and RMSE: over the ratings of that scenario;
  clip_ndcg@k (the paper's scenario NDCG): the scenario's (prediction, rating) pairs in file
  order (test-user order) cut into clips of ``clip_size`` (the last, shorter clip kept),
  NDCG@k per clip, averaged. Overall has none.
* relevance metrics per user (users with >= 2 ratings in the cell and at least one relevant
  item, relevant = rating >= the results' ``relevance_threshold``), tie-averaged:
  precision@K = E[relevant in the top min(K, len)] / min(K, len); ndcg_rel@K = NDCG with
  gains 0/1 and IDCG = sum of the first min(R, K) discounts (R = relevant items);
  map@K = E[sum_{i <= K} rel_i * P@i] / min(R, K). The expectations over tie orders are
  computed by enumerating every order of the ties when there are at most 24, else by
  the closed form (mean relevance per rank; for AP the pair term r(r-1)/(g(g-1))).
* counts n, n_users, n_users_ranked (>= 2 ratings), n_users_relevant.
* the aggregate of a method: mean over its seeds and sample standard deviation (n - 1).
* item warm-up results (``protocol: item-warmup``; :func:`recompute_item_warmup`): per run
  and stage, AUC over all test rows = P(score of a positive > score of a negative), ties
  counted 1/2; F1 of ``prediction > 0.5`` (``f1``) and of ``prediction > mean of the stage's
  predictions`` (``f1_mean``, CVAR's rule), F1 = 0 without true positives; log-loss = mean of
  -(y log q + (1 - y) log(1 - q)), q clipped to [1e-7, 1 - 1e-7]; the row count n; and per
  method and stage the mean over seeds and sample standard deviation.
* Holm: every ``*_holm`` p-value of each family (``paired_tests``, ``baseline_tests``) is
  recomputed from the family's raw p-values, per kind of test (per seed, per user, unique users).
* unique-user tests (``per_unique_user``): per user, a's minus b's per-user value (MAE, mean
  squared error for rmse, within-user NDCG@k) averaged over the test's seeds where both have
  one; ``mean_diff`` = mean over users, ``n`` = users, ``n_pairs`` = user-seed pairs. (Bootstrap intervals and the raw p-values are
  random or need scipy; they are not recomputed.)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

SCENARIOS = ("W-W", "W-C", "C-W", "C-C")
MIN_RATINGS = 2


def tie_groups(preds: list[float]) -> list[list[int]]:
    """Item indices grouped by equal prediction, best group first."""
    order = sorted(range(len(preds)), key=lambda i: -preds[i])
    return [list(g) for _, g in itertools.groupby(order, key=lambda i: preds[i])]


def expected_at_ranks(preds: list[float], values: list[float]) -> list[float]:
    """At each rank, the mean of ``values`` over the tied group holding that rank."""
    out: list[float] = []
    for g in tie_groups(preds):
        mean = sum(values[i] for i in g) / len(g)
        out.extend([mean] * len(g))
    return out


def ndcg(preds: list[float], ratings: list[float], k: int) -> float:
    n = min(k, len(preds))
    gains = expected_at_ranks(preds, [2.0 ** y - 1.0 for y in ratings])
    dcg = sum(gains[r] / math.log2(r + 2) for r in range(n))
    ideal = sorted(ratings, reverse=True)[:n]
    idcg = sum((2.0 ** y - 1.0) / math.log2(r + 2) for r, y in enumerate(ideal))
    return 1.0 if idcg == 0 else dcg / idcg


def _orders(preds: list[float]):
    """Every ranking consistent with the predictions (ties permuted), or None if too many."""
    groups = tie_groups(preds)
    count = 1
    for g in groups:
        count *= math.factorial(len(g))
    if count > 24:
        return None
    return ([i for g in combo for i in g] for combo in itertools.product(*(itertools.permutations(g) for g in groups)))


def relevance_metrics(preds: list[float], rel: list[float], k: int) -> tuple[float, float, float] | None:
    """(precision@k, ndcg_rel@k, map@k), tie-averaged; None without a relevant item."""
    n_rel = sum(rel)
    if n_rel == 0:
        return None
    n = min(k, len(preds))
    disc = [1.0 / math.log2(r + 2) for r in range(n)]
    idcg = sum(disc[: int(min(n_rel, n))])
    orders = _orders(preds)
    if orders is not None:
        p_sum = nd_sum = ap_sum = 0.0
        count = 0
        for order in orders:
            r = [rel[i] for i in order]
            p_sum += sum(r[:n]) / n
            nd_sum += sum(r[i] * disc[i] for i in range(n)) / idcg
            ap_sum += sum(r[i] * sum(r[: i + 1]) / (i + 1) for i in range(n)) / min(n_rel, n)
            count += 1
        return p_sum / count, nd_sum / count, ap_sum / count
    # closed form for big tie groups: E[rel_i] per rank; E[rel_i rel_j] within a group
    m = expected_at_ranks(preds, rel)
    ap = 0.0
    rank = 0
    before = 0.0
    for g in tie_groups(preds):
        size, r_g = len(g), sum(rel[i] for i in g)
        pair = r_g * (r_g - 1) / (size * (size - 1)) if size > 1 else 0.0
        for j in range(size):
            if rank < n:
                ap += (m[rank] * before + m[rank] + j * pair) / (rank + 1)
            rank += 1
        before += r_g
    return sum(m[:n]) / n, sum(m[i] * disc[i] for i in range(n)) / idcg, ap / min(n_rel, n)


def mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cell_metrics(rows: list[dict], k: int, clip_size: int, ks: list[int], threshold: float, overall: bool) -> dict:
    key = f"ndcg@{k}"
    users: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        users.setdefault(r["user_id"], []).append(r)
    out: dict = {"n": len(rows), "n_users": len(users)}
    if not rows:
        for name in ("mae", "rmse", key, f"clip_{key}"):
            out[name] = None
    else:
        errors = [r["prediction"] - r["rating"] for r in rows]
        if overall:
            out["mae"] = sum(sum(abs(r["prediction"] - r["rating"]) for r in rs) / len(rs) for rs in users.values()) / len(users)
        else:
            out["mae"] = sum(abs(e) for e in errors) / len(errors)
        out["rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors))
        ranked = [rs for rs in users.values() if len(rs) >= MIN_RATINGS]
        out[key] = mean_or_none([ndcg([r["prediction"] for r in rs], [r["rating"] for r in rs], k) for rs in ranked])
        if overall:
            out[f"clip_{key}"] = None
        else:
            clips = [rows[i : i + clip_size] for i in range(0, len(rows), clip_size)]
            out[f"clip_{key}"] = sum(ndcg([r["prediction"] for r in c], [r["rating"] for r in c], k) for c in clips) / len(clips)
    ranked = [rs for rs in users.values() if len(rs) >= MIN_RATINGS]
    out["n_users_ranked"] = len(ranked)
    out["n_users_relevant"] = sum(1 for rs in ranked if any(r["rating"] >= threshold for r in rs))
    for kk in ks:
        vals = [relevance_metrics([r["prediction"] for r in rs], [1.0 if r["rating"] >= threshold else 0.0 for r in rs], kk)
                for rs in ranked]
        vals = [v for v in vals if v is not None]
        for j, name in enumerate(("precision", "ndcg_rel", "map")):
            out[f"{name}@{kk}"] = mean_or_none([v[j] for v in vals])
    return out


def metrics_of(rows: list[dict], k: int, clip_size: int, ks: list[int], threshold: float) -> dict[str, dict]:
    """Every cell's metrics and counts from the rows of one (method, seed)."""
    out = {"overall": cell_metrics(rows, k, clip_size, ks, threshold, overall=True)}
    for s in SCENARIOS:
        out[s] = cell_metrics([r for r in rows if r["scenario"] == s], k, clip_size, ks, threshold, overall=False)
    return out


def mean_std(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm step-down adjustment; None (a test not run) stays None and is not counted."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for j, i in enumerate(idx):
        running = max(running, min(1.0, (m - j) * pvalues[i]))
        out[i] = running
    return out


def per_user_values(rows: list[dict], cell: str, metric: str, k: int) -> dict[str, float]:
    """Each user's value in a cell: MAE, mean squared error (for rmse), or within-user NDCG@k
    (users with >= 2 ratings there)."""
    users: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        if cell == "overall" or r["scenario"] == cell:
            users.setdefault(r["user_id"], []).append(r)
    out: dict[str, float] = {}
    for u, rs in users.items():
        if metric == "mae":
            out[u] = sum(abs(r["prediction"] - r["rating"]) for r in rs) / len(rs)
        elif metric == "rmse":
            out[u] = sum((r["prediction"] - r["rating"]) ** 2 for r in rs) / len(rs)
        elif metric == f"ndcg@{k}" and len(rs) >= MIN_RATINGS:
            out[u] = ndcg([r["prediction"] for r in rs], [r["rating"] for r in rs], k)
    return out


def check_unique_user_tests(family: str, tests: list[dict], groups: dict, k: int, compare: "Comparison") -> None:
    """The unique-user tests' mean difference and counts: each user's a - b averaged over the
    test's seeds where both methods have a value for the user, then averaged over users."""
    cache: dict = {}

    def values(method: str, seed: int, cell: str, metric: str) -> dict[str, float]:
        key = (method, seed, cell, metric)
        if key not in cache:
            cache[key] = per_user_values(groups.get((method, seed), []), cell, metric, k)
        return cache[key]

    for t in tests:
        block = t.get("per_unique_user") or {}
        if "mean_diff" not in block:
            continue
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for seed in t["seeds"]:
            va, vb = values(t["a"], seed, t["cell"], t["metric"]), values(t["b"], seed, t["cell"], t["metric"])
            for u in va:
                if u in vb:
                    sums[u] = sums.get(u, 0.0) + va[u] - vb[u]
                    counts[u] = counts.get(u, 0) + 1
        what = f"{family} {t['a']} vs {t['b']} {t['cell']} {t['metric']} per_unique_user"
        mean = sum(sums[u] / counts[u] for u in sums) / len(sums) if sums else None
        compare(f"{what} mean_diff", mean, block.get("mean_diff"))
        compare(f"{what} n", float(len(sums)), float(block["n"]))
        compare(f"{what} n_pairs", float(sum(counts.values())), float(block["n_pairs"]))


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


def auc_of(preds: list[float], labels: list[int]) -> float | None:
    """P(positive scored above negative), ties 1/2: sort once, walk the tie groups."""
    order = sorted(range(len(preds)), key=lambda i: preds[i])
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    below = 0.0  # negatives strictly below the current group
    total = 0.0
    for _, grp in itertools.groupby(order, key=lambda i: preds[i]):
        grp = list(grp)
        pos = sum(labels[i] for i in grp)
        neg = len(grp) - pos
        total += pos * (below + 0.5 * neg)
        below += neg
    return total / (n_pos * n_neg)


def f1_of(preds: list[float], labels: list[int], threshold: float) -> float:
    tp = sum(1 for p, y in zip(preds, labels) if p > threshold and y == 1)
    fp = sum(1 for p, y in zip(preds, labels) if p > threshold and y == 0)
    fn = sum(1 for p, y in zip(preds, labels) if p <= threshold and y == 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def logloss_of(preds: list[float], labels: list[int]) -> float:
    eps = 1e-7
    total = 0.0
    for p, y in zip(preds, labels):
        q = min(max(p, eps), 1 - eps)
        total -= math.log(q) if y == 1 else math.log(1 - q)
    return total / len(preds)


class Comparison:
    """Counts the recomputed values checked against results.json and collects every disagreement
    (a missing value on one side only counts as one)."""

    def __init__(self, tol: float) -> None:
        self.tol, self.checked, self.worst = tol, 0, 0.0
        self.problems: list[str] = []

    def __call__(self, what: str, ours: float | None, theirs: float | None) -> None:
        self.checked += 1
        if ours is None or theirs is None:
            if not (ours is None and theirs is None):
                self.problems.append(f"{what}: recomputed {ours}, reported {theirs}")
            return
        diff = abs(ours - theirs)
        self.worst = max(self.worst, diff)
        if not diff <= self.tol:
            self.problems.append(f"{what}: recomputed {ours!r}, reported {theirs!r} (diff {diff:.3g})")


def recompute_item_warmup(run_dir: Path, results: dict, tol: float) -> int:
    """Check an item warm-up results.json against its predictions.csv.gz (see the module docstring)."""
    pred_path = run_dir / "predictions.csv.gz"
    opener = gzip.open if pred_path.exists() else open
    if not pred_path.exists():
        pred_path = run_dir / "predictions.csv"
    cols: dict[tuple[int, str, str], list[float]] = {}
    labels: dict[int, list[int]] = {}
    with opener(pred_path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header[:4] != ["seed", "item", "user", "label"]:
            sys.exit(f"{pred_path}: header starts {header[:4]}, expected seed,item,user,label")
        keys = [tuple(h.split("|")) for h in header[4:]]
        for line, row in enumerate(reader, start=2):
            seed = int(row[0])
            labels.setdefault(seed, []).append(int(row[3]))
            for (method, stage), v in zip(keys, row[4:]):
                if v != "":
                    cols.setdefault((seed, method, stage), []).append(float(v))
    compare = Comparison(tol)
    problems = compare.problems

    mine: dict[tuple[str, int, str], dict] = {}
    ok_runs = [r for r in results["runs"] if r["status"] == "ok"]
    for run in ok_runs:
        m, seed = run["method"], int(run["seed"])
        for stage in results["stages"]:
            p = cols.get((seed, m, stage))
            if p is None:
                problems.append(f"{m} seed {seed} stage {stage}: no predictions")
                continue
            y = labels[seed]
            mean = sum(p) / len(p)
            vals = {"auc": auc_of(p, y), "f1": f1_of(p, y, 0.5), "f1_mean": f1_of(p, y, mean),
                    "logloss": logloss_of(p, y), "n": len(p)}
            mine[(m, seed, stage)] = vals
            for k, v in vals.items():
                compare(f"{m} seed {seed} {stage} {k}", v, run["metrics"][stage].get(k))
    for method, entry in results["methods"].items():
        for stage, cell in entry["stages"].items():
            for k, rep in cell.items():
                vals = [mine[(method, s, stage)][k] for s in entry["seeds"] if (method, s, stage) in mine]
                if vals:
                    mean, std = mean_std(vals)
                    compare(f"{method} aggregate {stage} {k} mean", mean, rep["mean"])
                    compare(f"{method} aggregate {stage} {k} std", std, rep["std"])
    if problems:
        print(f"DISAGREE: {len(problems)} of {compare.checked} values differ (tolerance {tol:g}):")
        for p in problems[:50]:
            print("  " + p)
        return 1
    rows = sum(len(v) for v in labels.values())
    print(f"OK: {compare.checked} values of {len(ok_runs)} item warm-up runs recomputed from {rows} test rows agree with "
          f"results.json (largest difference {compare.worst:.2g}, tolerance {tol:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--tol", type=float, default=1e-9, help="largest accepted absolute difference")
    args = ap.parse_args(argv)
    results = json.loads((args.run_dir / "results.json").read_text("utf-8"))
    if results.get("protocol") == "item-warmup":
        return recompute_item_warmup(args.run_dir, results, args.tol)
    if results.get("format") != "metarec-bench-results-2":
        print(f"{args.run_dir}: results format {results.get('format')!r} is not metarec-bench-results-2; "
              f"rebuild it first: metarec report --rebuild {args.run_dir}")
        return 1
    info = results["metrics_info"]
    k, clip_size = int(info["k"]), int(info["clip_size"])
    ks = [int(x) for x in info["ranking_ks"]]
    threshold = float(info["relevance_threshold"])
    if int(info.get("min_ratings", MIN_RATINGS)) != MIN_RATINGS:
        print(f"results.json uses min_ratings {info['min_ratings']}; this script checks {MIN_RATINGS}")
        return 1
    key = f"ndcg@{k}"
    names = ["mae", "rmse", key, f"clip_{key}"] + [f"{m}@{kk}" for kk in ks for m in ("precision", "ndcg_rel", "map")]
    counts = ["n", "n_users", "n_users_ranked", "n_users_relevant"]
    pred_path = args.run_dir / "predictions.csv"
    if not pred_path.exists() and pred_path.with_suffix(".csv.gz").exists():
        pred_path = pred_path.with_suffix(".csv.gz")
    groups = read_rows(pred_path)

    compare = Comparison(args.tol)
    problems = compare.problems

    ok_runs = [r for r in results["runs"] if r["status"] == "ok"]
    recomputed: dict[tuple[str, int], dict] = {}
    for run in ok_runs:
        gk = (run["method"], int(run["seed"]))
        if gk not in groups:
            problems.append(f"{gk[0]} seed {gk[1]}: no rows in predictions.csv")
            continue
        mine = recomputed[gk] = metrics_of(groups[gk], k, clip_size, ks, threshold)
        for cell in ("overall", *SCENARIOS):
            for m in names + counts:
                compare(f"{gk[0]} seed {gk[1]} {cell} {m}", mine[cell][m], run["metrics"][cell].get(m))
    extra = set(groups) - {(r["method"], int(r["seed"])) for r in ok_runs}
    for gk in sorted(extra):
        problems.append(f"predictions.csv has rows of {gk[0]} seed {gk[1]}, which is not a successful run")

    for method, entry in results["methods"].items():
        if not entry.get("cells"):
            continue
        seeds = entry["seeds"]
        for cell in ("overall", *SCENARIOS):
            for m in names:
                vals = [recomputed[(method, s)][cell][m] for s in seeds if (method, s) in recomputed]
                vals = [v for v in vals if v is not None]
                rep = entry["cells"][cell][m]
                if not vals:
                    compare(f"{method} aggregate {cell} {m} mean", None, rep["mean"])
                    continue
                mean, std = mean_std(vals)
                compare(f"{method} aggregate {cell} {m} mean", mean, rep["mean"])
                compare(f"{method} aggregate {cell} {m} std", std, rep["std"])

    families = [("paired_tests", results.get("paired_tests") or [])]
    if results.get("baseline_tests"):
        families.append(("baseline_tests", results["baseline_tests"]["tests"]))
    for fam, tests in families:
        for block, p_key in (("per_seed", "ttest_p"), ("per_user", "p"), ("per_unique_user", "p")):
            raw = [t.get(block, {}).get(p_key) for t in tests]
            for t, adj in zip(tests, holm(raw)):
                compare(f"{fam} {t['a']} vs {t['b']} {t['cell']} {t['metric']} {block} Holm", adj,
                        t.get(block, {}).get(f"{p_key}_holm"))

        check_unique_user_tests(fam, tests, groups, k, compare)

    rows = sum(len(g) for g in groups.values())
    if problems:
        print(f"DISAGREE: {len(problems)} of {compare.checked} values differ (tolerance {args.tol:g}):")
        for p in problems[:50]:
            print("  " + p)
        return 1
    print(
        f"OK: {compare.checked} values of {len(ok_runs)} runs recomputed from {rows} predictions agree with "
        f"results.json (largest difference {compare.worst:.2g}, tolerance {args.tol:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
