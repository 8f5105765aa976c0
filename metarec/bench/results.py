"""Benchmark results on disk: per-run files, and the aggregated ``results.json`` / ``predictions.csv``.

A run directory holds::

    config.json                         the resolved BenchConfig (what --resume continues)
    runs/<method>__seed<k>.json         one finished run: metrics, CIs, timings, memory, errors
    runs/<method>__seed<k>.predictions.csv   its query predictions (written before the .json)
    checkpoints/<method>__seed<k>/      training checkpoints of an unfinished run
    results.json  predictions.csv  summary.md  summary.tex  plot.png  plot.svg

Every file is written atomically (temp file + rename), so a killed benchmark leaves old or new
files, never half-written ones; the aggregated files are always rebuilt from the per-run files.

Numbers, and the choices behind them:

* a cell (``overall`` or a scenario) holds, per metric (MAE, RMSE, the within-user NDCG@k,
  the paper's clip NDCG@k in scenario cells, Precision / NDCG_rel / MAP at the ranking
  cut-offs; see :class:`MetricSpec` and :func:`metarec.metrics.scenario_metrics`), ``mean``
  and ``std`` over seeds (``std`` with ``ddof=1``, the sample standard deviation; ``null``
  with one seed), the per-seed ``values``, ``n`` (query ratings per seed), user counts, and
  ``ci``: a percentile bootstrap interval of that mean, stratified by seed (test users are
  resampled within each seed's split, the cell's metric recomputed per seed and averaged).
  Per-run files hold each seed's own interval (the same computation with one seed).
* paired tests (when several methods ran) compare two methods cell by cell on the same seeds:
  ``per_seed`` on the per-seed cell values (t-test), ``per_user`` one Wilcoxon test per seed
  on per-user values, combined over seeds (Stouffer), so that a user who is a test user in
  several seeds is not several independent units, and ``per_unique_user`` one Wilcoxon test
  over the unique users of each user's mean difference across seeds. ``paired_tests`` (all pairs) and
  ``baseline_tests`` (every method against the best simple baseline) are two families, each
  Holm-adjusted on its own (``*_holm``).
* older folders (``metarec-bench-results-1``: NDCG ties kept list order) are recomputed from
  their predictions by :func:`rebuild_results` (``metarec report --rebuild``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from metarec import metrics as M
from metarec.checkpoint import atomic_write_text
from metarec.runtime import derive_seed
from metarec.schema import SCENARIOS

RESULTS_FORMAT = "metarec-bench-results-2"
RUN_FORMAT = "metarec-bench-run-2"
CELLS: tuple[str, ...] = ("overall", *SCENARIOS)
PREDICTION_COLUMNS = ("method", "seed", "user_id", "item_id", "rating", "prediction", "scenario")
STD_DDOF = 1


# ---------------------------------------------------------------------------- paths


def run_key(method: str, seed: int) -> str:
    """The file-name stem of one run, ``<method>__seed<k>``."""
    return f"{method}__seed{seed}"


class RunDir:
    """The paths of one benchmark output directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        """The resolved configuration (what ``--resume`` continues)."""
        return self.root / "config.json"

    @property
    def results(self) -> Path:
        """The aggregated results."""
        return self.root / "results.json"

    @property
    def predictions(self) -> Path:
        """One row per test query rating, every successful run."""
        return self.root / "predictions.csv"

    def run_json(self, method: str, seed: int) -> Path:
        """A finished run's record (present only when the run is complete)."""
        return self.root / "runs" / f"{run_key(method, seed)}.json"

    def run_predictions(self, method: str, seed: int) -> Path:
        """A run's predictions (written before its record)."""
        return self.root / "runs" / f"{run_key(method, seed)}.predictions.csv"

    def checkpoints(self, method: str, seed: int) -> Path:
        """Training checkpoints of an unfinished run."""
        return self.root / "checkpoints" / run_key(method, seed)

    def run_files(self) -> list[Path]:
        """Every run record present."""
        d = self.root / "runs"
        return sorted(d.glob("*__seed*.json")) if d.is_dir() else []


# ---------------------------------------------------------------------------- JSON


def clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``null`` (strict JSON), numpy scalars become Python ones."""
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [clean_json(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def write_text(path: str | Path, text: str) -> None:
    """Atomic write, then the usual permissions (the temporary file is private: 0600)."""
    atomic_write_text(path, text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json(path: str | Path, data: Any) -> None:
    """Write strict JSON (NaN -> null) atomically."""
    write_text(path, json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON with an error that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------------------- predictions


def predictions_csv_text(rows: Iterable[Sequence[Any]], header: bool = True) -> str:
    """CSV text of prediction rows; floats are written with ``repr`` so they read back exactly."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(PREDICTION_COLUMNS)
    for r in rows:
        w.writerow([repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in r])
    return buf.getvalue()


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """A predictions CSV (or ``.csv.gz``) as columns (``rating``/``prediction`` float64, ``seed`` int, rest str)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open  # committed folders keep predictions.csv.gz
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != PREDICTION_COLUMNS:
            raise ValueError(f"{path}: expected header {','.join(PREDICTION_COLUMNS)}, got {header}")
        cols: list[list[str]] = [[] for _ in PREDICTION_COLUMNS]
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(PREDICTION_COLUMNS):
                raise ValueError(f"{path}, line {line_no}: expected {len(PREDICTION_COLUMNS)} fields, got {len(row)}")
            for c, v in zip(cols, row):
                c.append(v)
    out = {name: np.asarray(c, dtype=object) for name, c in zip(PREDICTION_COLUMNS, cols)}
    try:
        out["seed"] = np.asarray(cols[1], dtype=np.int64)
        out["rating"] = np.asarray(cols[4], dtype=np.float64)
        out["prediction"] = np.asarray(cols[5], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: a seed, rating or prediction is not a number ({exc})") from None
    return out


def user_positions(user_ids: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... per user in order of first appearance (rows of a user are consecutive)."""
    _, first, inv = np.unique(user_ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inv.reshape(-1)]


# ---------------------------------------------------------------------------- metrics of one run


@dataclass(frozen=True)
class MetricSpec:
    """What a run's metrics are: the NDCG cut-off, the clip length, the relevance rule.

    ``threshold``: a query item is relevant when its true rating is >= this (ranking metrics);
    ``ranking_ks``: the cut-offs of Precision / NDCG_rel / MAP; ``min_ratings``: a user counts
    in a cell's per-user ranking metrics with at least this many query ratings there.
    """

    k: int = 3
    clip_size: int = 5
    ranking_ks: tuple[int, ...] = (3, 5)
    threshold: float = 4.0
    min_ratings: int = 2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MetricSpec":
        """From a (resolved) bench config dict; keys an older config lacks take the defaults."""
        d = cls()
        return cls(
            k=int(config.get("k", d.k)),
            clip_size=int(config.get("clip_size", d.clip_size)),
            ranking_ks=tuple(int(x) for x in config.get("ranking_ks", d.ranking_ks)),
            threshold=float(config.get("relevance_threshold", d.threshold)),
            min_ratings=d.min_ratings,
        )

    @property
    def ndcg(self) -> str:
        """The key of the within-user NDCG@k."""
        return f"ndcg@{self.k}"

    @property
    def clip(self) -> str:
        """The key of the paper's clip NDCG@k (scenario cells only)."""
        return f"clip_ndcg@{self.k}"

    @property
    def per_user(self) -> tuple[str, ...]:
        """Metrics that are means of per-user values (the units a test or bootstrap resamples)."""
        rank = tuple(f"{name}@{kk}" for kk in self.ranking_ks for name in ("precision", "ndcg_rel", "map"))
        return (self.ndcg, *rank)

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric key of a cell, in report order."""
        return ("mae", "rmse", self.ndcg, self.clip, *self.per_user[1:])


def per_user_scores(pred: np.ndarray, true: np.ndarray, units: np.ndarray, metric: str, spec: "MetricSpec | int",
                    ) -> np.ndarray:
    """Each user's value of ``metric`` (users in order of first appearance), NaN where a user
    does not count (see :func:`metarec.metrics.per_user_scores`). ``spec`` may be a plain k."""
    if not isinstance(spec, MetricSpec):
        spec = MetricSpec(k=int(spec), min_ratings=1)
    return M.per_user_scores(pred, true, units, metric, threshold=spec.threshold, min_ratings=spec.min_ratings)


def _mean_of_units(p: np.ndarray, t: np.ndarray, u: np.ndarray) -> float:
    return float(np.mean(p))


@dataclass
class Stratum:
    """One seed's query predictions: the units a bootstrap resamples are its test users."""

    seed: int
    pred: np.ndarray
    true: np.ndarray
    units: np.ndarray
    scenario: np.ndarray


def _user_sums(pred: np.ndarray, true: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user (first-appearance order): sum of absolute errors, of squared errors, ratings."""
    pos = user_positions(units)
    n = int(pos.max()) + 1
    d = pred - true
    return (np.bincount(pos, weights=np.abs(d), minlength=n), np.bincount(pos, weights=d * d, minlength=n),
            np.bincount(pos, minlength=n).astype(float))


def _ratio_replicates(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of sum(num)/sum(den) over resampled users -- the same draws as
    :func:`metarec.metrics.bootstrap_metric_replicates` for a seed, computed at once."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num.size, size=(n_boot, num.size))
    return num[draws].sum(axis=1) / den[draws].sum(axis=1)


def _mean_replicates(scores: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean of per-user ``scores`` (the draws of
    :func:`metarec.metrics.bootstrap_metric_replicates` for a seed, computed at once)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, scores.size, size=(n_boot, scores.size))
    return scores[draws].mean(axis=1)


def _stratum_replicates(st: Stratum, cell: str, name: str, spec: MetricSpec, n_boot: int) -> np.ndarray | None:
    """One seed's bootstrap replicates of one cell's metric (None: the cell has no value)."""
    seed = derive_seed(st.seed, "bootstrap", cell, name)
    m = np.ones(st.pred.size, dtype=bool) if cell == "overall" else st.scenario == cell
    if not m.any():
        return None
    p, t, u = st.pred[m], st.true[m], st.units[m]
    if name == spec.clip:
        if cell == "overall":
            return None
        return M.bootstrap_clip_ndcg_replicates(p, t, u, k=spec.k, clip_size=spec.clip_size, n_boot=n_boot, seed=seed)
    if name in ("mae", "rmse") and not (cell == "overall" and name == "mae"):
        abs_sum, sq_sum, count = _user_sums(p, t, u)
        if name == "mae":
            return _ratio_replicates(abs_sum, count, n_boot, seed)
        return np.sqrt(_ratio_replicates(sq_sum, count, n_boot, seed))
    # means of per-user values (overall MAE is Eq. 13): resample the users that count
    scores = per_user_scores(p, t, u, name, spec)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return None
    return _mean_replicates(scores, n_boot, seed)


def cell_confidence_intervals(
    strata: Sequence[Stratum], *, k: int | None = None, clip_size: int | None = None, n_boot: int, level: float,
    spec: MetricSpec | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Bootstrap CI of every metric in every cell, for the mean over strata (seeds).

    Stratified by seed: each replicate resamples test users within every seed's split (with
    the draws of :func:`metarec.metrics.bootstrap_metric_replicates`), computes the cell's
    metric per seed and averages over the seeds whose cell has a value -- exactly how the
    reported mean is made, so the interval is the interval of that number. Flat metrics
    (a scenario's MAE, RMSE) resample users with all their ratings; per-user metrics resample
    the users that count for them; the clip NDCG is recomputed on the resampled users laid
    out in draw order. With one seed this is the plain user bootstrap of that run.
    """
    if spec is None:
        spec = MetricSpec(k=3 if k is None else k, clip_size=5 if clip_size is None else clip_size)
    alpha = 1.0 - level
    out: dict[str, dict[str, list[float]]] = {}
    for cell in CELLS:
        out[cell] = {}
        for name in spec.names:
            if cell == "overall" and name == spec.clip:
                continue
            reps = [r for r in (_stratum_replicates(st, cell, name, spec, n_boot) for st in strata) if r is not None]
            if not reps:
                out[cell][name] = [float("nan"), float("nan")]
                continue
            mean_reps = np.mean(np.stack(reps), axis=0)
            lo, hi = np.percentile(mean_reps, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
            out[cell][name] = [float(lo), float(hi)]
    return out


#: Metrics that compare predictions with ratings on their scale: n/a for a learner whose
#: ``output`` is ``"score"`` (:attr:`metarec.learner.Learner.output`).
ERROR_METRICS: tuple[str, ...] = ("mae", "rmse")
SCORE_OUTPUT_NOTE = "n/a: the learner outputs scores, not calibrated ratings (Learner.output = 'score')"


def mark_score_output(scores: dict[str, Any]) -> dict[str, Any]:
    """``run_metrics`` output with MAE/RMSE replaced by None (n/a) in every cell and interval."""
    for cell in scores.get("metrics", {}).values():
        for name in ERROR_METRICS:
            if name in cell:
                cell[name] = None
    for cell in scores.get("ci", {}).values():
        for name in ERROR_METRICS:
            cell.pop(name, None)
    scores["metric_notes"] = {name: SCORE_OUTPUT_NOTE for name in ERROR_METRICS}
    return scores


def run_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    user_ids: np.ndarray,
    scenario: np.ndarray,
    *,
    k: int | None = None,
    clip_size: int | None = None,
    n_boot: int,
    level: float,
    seed: int,
    spec: MetricSpec | None = None,
) -> dict[str, Any]:
    """``{"metrics": scenario_metrics(...), "ci": {...}}`` of one run's query predictions."""
    if spec is None:
        spec = MetricSpec(k=3 if k is None else k, clip_size=5 if clip_size is None else clip_size)
    units = user_positions(user_ids)
    table = M.scenario_metrics(
        pred, true, units, scenario, k=spec.k, clip_size=spec.clip_size, scenarios=SCENARIOS,
        ranking_ks=spec.ranking_ks, threshold=spec.threshold, min_ratings=spec.min_ratings,
    )
    ci = cell_confidence_intervals([Stratum(seed, pred, true, units, scenario)], n_boot=n_boot, level=level, spec=spec)
    return {"metrics": table, "ci": ci}


# ---------------------------------------------------------------------------- aggregation


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    v = np.asarray([_nan(x) for x in values], dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return float("nan"), None
    mean = float(finite.mean())
    std = float(finite.std(ddof=STD_DDOF)) if finite.size > STD_DDOF else None
    return mean, std


def load_run_predictions(rd: RunDir, method: str, seed: int) -> dict[str, np.ndarray]:
    """One run's predictions as columns (see :func:`read_predictions`)."""
    return read_predictions(rd.run_predictions(method, seed))


COUNT_KEYS = ("n_users", "n_users_ranked", "n_users_relevant")


def aggregate_method(
    runs: Sequence[Mapping[str, Any]],
    preds: Mapping[int, Mapping[str, np.ndarray]],
    *,
    k: int | None = None,
    clip_size: int | None = None,
    n_boot: int,
    level: float,
    spec: MetricSpec | None = None,
) -> dict[str, Any]:
    """Mean/std over the successful seeds of one method, plus the stratified bootstrap CI per cell."""
    if spec is None:
        spec = MetricSpec(k=3 if k is None else k, clip_size=5 if clip_size is None else clip_size)
    seeds = [int(r["seed"]) for r in runs]
    scores_only = any(r.get("output") == "score" for r in runs)
    cells: dict[str, Any] = {}
    strata = [
        Stratum(s, preds[s]["prediction"], preds[s]["rating"], user_positions(preds[s]["user_id"]), preds[s]["scenario"])
        for s in seeds
        if s in preds
    ]
    seed_ci = cell_confidence_intervals(strata, n_boot=n_boot, level=level, spec=spec) if strata else {}
    for cell in CELLS:
        entry: dict[str, Any] = {}
        for name in spec.names:
            if scores_only and name in ERROR_METRICS:
                entry[name] = {"mean": None, "std": None, "values": [None] * len(runs), "na": SCORE_OUTPUT_NOTE}
                continue
            values = [_nan(r["metrics"][cell].get(name)) for r in runs]
            mean, std = _mean_std(values)
            entry[name] = {"mean": mean, "std": std, "values": values}
            if name in seed_ci.get(cell, {}):
                entry[name]["ci"] = seed_ci[cell][name]
        n_per_seed = [int(r["metrics"][cell]["n"]) for r in runs]
        entry["n"] = float(np.mean(n_per_seed)) if n_per_seed else 0.0
        entry["n_per_seed"] = n_per_seed
        for c in COUNT_KEYS:
            entry[f"{c}_per_seed"] = [int(r["metrics"][cell].get(c, 0)) for r in runs]
        cells[cell] = entry
    return {"seeds": seeds, "n_seeds": len(seeds), "cells": cells}


#: The metrics that paired tests compare (per seed all of them; per user all but the clip NDCG).
def tested_metrics(spec: MetricSpec) -> tuple[str, ...]:
    """MAE, RMSE, the within-user NDCG@k and the paper's clip NDCG@k."""
    return ("mae", "rmse", spec.ndcg, spec.clip)


def _per_user_values(pr: Mapping[str, np.ndarray], cell: str, metric: str, spec: MetricSpec) -> tuple[list[str], np.ndarray]:
    """Per-user units of one cell: MAE, MSE (for ``rmse``) or the within-user NDCG (NaN: user does not count)."""
    m = np.ones(len(pr["prediction"]), dtype=bool) if cell == "overall" else pr["scenario"] == cell
    uid = pr["user_id"][m]
    if not len(uid):
        return [], np.zeros(0)
    pos = user_positions(uid)
    keys: list[str] = [""] * (int(pos.max()) + 1)
    for i, u in zip(pos, uid):
        keys[i] = str(u)
    name = "mse" if metric == "rmse" else metric
    return keys, per_user_scores(pr["prediction"][m], pr["rating"][m], uid, name, spec)


#: The (block, p-value key) of each kind of paired test; each is Holm-adjusted on its own.
TEST_BLOCKS: tuple[tuple[str, str], ...] = (("per_seed", "ttest_p"), ("per_user", "p"), ("per_unique_user", "p"))


def reported_holm_p(test: Mapping[str, Any]) -> tuple[float | None, str, float | None]:
    """(Holm-adjusted p, test name, mean difference) that the report marks a comparison by: the
    unique-user test where the results have it, else the per-user test combined over seeds."""
    for block, name in (("per_unique_user", "unique-user Wilcoxon"), ("per_user", "per-user Wilcoxon, Stouffer")):
        b = test.get(block) or {}
        if b.get("p_holm") is not None:
            return float(b["p_holm"]), name, b.get("mean_diff")
    return None, "", None


def _add_holm(tests: list[dict[str, Any]]) -> None:
    """Holm-adjust, in place, each kind of p-value over the whole family ``tests`` (one table)."""
    for block, key in TEST_BLOCKS:
        raw = [t.get(block, {}).get(key) for t in tests]
        adj = M.holm([np.nan if p is None else p for p in raw])
        for t, a in zip(tests, adj):
            if block in t and key in t[block]:
                t[block][f"{key}_holm"] = float(a)


def paired_tests(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    method_preds: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
    *,
    k: int | None = None,
    spec: MetricSpec | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Paired tests (a - b) of method pairs, every cell and tested metric; Holm over the family.

    ``pairs``: which (a, b) to compare (default: every pair of methods that has runs). The
    returned list is one family: its p-values are Holm-adjusted together (``*_holm``).

    * ``per_seed``: the cell's per-seed values of a and b on their common seeds, paired
      t-test (:func:`metarec.metrics.paired_test`; read ``ttest_p``).
    * ``per_user``: one Wilcoxon signed-rank test per seed on the per-user values of the cell
      (MAE; squared error for RMSE; within-user NDCG for users with >= 2 ratings there),
      combined over seeds by Stouffer's method (:func:`metarec.metrics.paired_test_by_stratum`),
      so a user who is a test user in several seeds is not counted as several independent
      users. The clip NDCG has no per-user units.
    * ``per_unique_user``: each user's differences averaged over the seeds where the user is a
      test user, then one Wilcoxon signed-rank test (``p``) and one t-test (``ttest_p``) over
      the unique users (:func:`metarec.metrics.paired_test_by_unit`): no user is more than one
      independent unit, whatever the seeds' splits share. The test the fair comparison reads.
    """
    if spec is None:
        spec = MetricSpec(k=3 if k is None else k)
    names = [m for m, runs in method_runs.items() if runs]
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    cache: dict[tuple[str, int, str, str], tuple[list[str], np.ndarray]] = {}

    def units(method: str, seed: int, cell: str, metric: str) -> tuple[list[str], np.ndarray]:
        key = (method, seed, cell, metric)
        if key not in cache:
            cache[key] = _per_user_values(method_preds[method][seed], cell, metric, spec)
        return cache[key]

    out: list[dict[str, Any]] = []
    for a, b in pairs:
        ra = {int(r["seed"]): r for r in method_runs.get(a, ())}
        rb = {int(r["seed"]): r for r in method_runs.get(b, ())}
        common = sorted(set(ra) & set(rb))
        scores_only = any(r.get("output") == "score" for r in (*method_runs.get(a, ()), *method_runs.get(b, ())))
        for cell in CELLS:
            for metric in tested_metrics(spec):
                if cell == "overall" and metric == spec.clip:
                    continue
                entry: dict[str, Any] = {"a": a, "b": b, "cell": cell, "metric": metric, "seeds": common}
                if scores_only and metric in ERROR_METRICS:
                    entry["per_seed"] = entry["per_user"] = entry["per_unique_user"] = {"skipped": SCORE_OUTPUT_NOTE}
                    out.append(entry)
                    continue
                xa = [_nan(ra[s]["metrics"][cell].get(metric)) for s in common]
                xb = [_nan(rb[s]["metrics"][cell].get(metric)) for s in common]
                ok = [j for j in range(len(common)) if math.isfinite(xa[j]) and math.isfinite(xb[j])]
                if len(ok) >= 2:
                    entry["per_seed"] = M.paired_test([xa[j] for j in ok], [xb[j] for j in ok])
                else:
                    entry["per_seed"] = {"skipped": f"needs >= 2 seeds with values in both methods, have {len(ok)}"}
                if metric != spec.clip:
                    sa: list[np.ndarray] = []
                    sb: list[np.ndarray] = []
                    keys: list[list[str]] = []
                    for s in common:
                        ka, va = units(a, s, cell, metric)
                        kb, vb = units(b, s, cell, metric)
                        if ka != kb:
                            raise ValueError(
                                f"paired test {a} vs {b}, seed {s}: the test users differ; the runs "
                                "do not share a split"
                            )
                        both = np.isfinite(va) & np.isfinite(vb)
                        sa.append(va[both])
                        sb.append(vb[both])
                        keys.append([k for k, ok in zip(ka, both) if ok])
                    if any(x.size >= 2 for x in sa):
                        entry["per_user"] = M.paired_test_by_stratum(sa, sb)
                    else:
                        entry["per_user"] = {"skipped": "needs a seed with >= 2 users that have values"}
                    if len({k for ks in keys for k in ks}) >= 2:
                        entry["per_unique_user"] = M.paired_test_by_unit(keys, sa, sb)
                    else:
                        entry["per_unique_user"] = {"skipped": "needs >= 2 users that have values"}
                out.append(entry)
    _add_holm(out)
    return out


#: The registered simple baselines' learner classes live here; the best of them is the comparator.
SIMPLE_BASELINE_MODULE = "metarec.methods.simple"


def _pool_score(source: Mapping[str, Any] | None) -> tuple[str, float, tuple[Any, ...]] | None:
    """(metric, best pool value, pool identity) of a tuned method's settings source, else None."""
    if not source or source.get("kind") != "tuned" or source.get("best_value") is None:
        return None
    pool = tuple(source.get(k) for k in ("dataset", "tuning_fraction", "tuning_seed", "split_seed", "metric"))
    return str(source.get("metric", "")), float(source["best_value"]), pool


def choose_simple_baseline(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
    """The comparator of ``baseline_tests`` among the simple baselines that ran, and the rule used.

    When the simple baselines' settings come from ``metarec tune`` studies scored on one
    tuning pool (same dataset, pool, split and metric in their provenance), the one with the
    best pool score is chosen: a choice that never looks at a test user. Simple baselines
    without a study (nothing to tune, e.g. the global mean) are then not candidates, and the
    rule says so. Otherwise the one with the lowest overall test MAE (mean over seeds) is
    chosen, and the rule says that it was chosen on this table's test numbers (it picks which
    comparison to show, never a setting).
    """
    simple = [m for m in summary if m in {r["method"] for r in runs if r.get("status") == "ok" and str(
        r.get("learner_class", "")).startswith(SIMPLE_BASELINE_MODULE + ":")} and summary[m].get("cells")]
    if not simple:
        return None, ""
    scored = {m: _pool_score(summary[m].get("settings_source")) for m in simple}
    pooled = {m: v for m, v in scored.items() if v is not None}
    if pooled and len({v[2] for v in pooled.values()}) == 1:
        metric = next(iter(pooled.values()))[0]
        higher = "ndcg" in metric or "precision" in metric or "map" in metric
        best = (max if higher else min)(pooled, key=lambda m: pooled[m][1])
        left = [m for m in simple if m not in pooled]
        values = ", ".join(f"{m} {v[1]:.4f}" for m, v in pooled.items())
        rule = (f"the simple baseline with the best tuning-pool score ({metric}: {values}), chosen without "
                "looking at a test user" + (f"; not candidates, having no study: {', '.join(left)}" if left else ""))
        return best, rule
    best, best_mae = None, math.inf
    for m in simple:
        v = _nan(summary[m]["cells"]["overall"]["mae"]["mean"])
        if math.isfinite(v) and v < best_mae:
            best, best_mae = m, v
    return best, ("the simple baseline (metarec.methods.simple) with the lowest overall MAE, chosen on this "
                  "table's test numbers (no tuning-pool scores to choose by)")


def best_simple_baseline(summary: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The comparator :func:`choose_simple_baseline` picks (None without a simple baseline)."""
    return choose_simple_baseline(summary, runs)[0]


def baseline_tests(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    method_preds: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
    baseline: str,
    *,
    spec: MetricSpec,
) -> dict[str, Any]:
    """Every other method against ``baseline`` (a - baseline): one family, Holm-adjusted on its own."""
    if not method_runs.get(baseline):
        known = ", ".join(m for m, r in method_runs.items() if r)
        raise ValueError(f"baseline {baseline!r} has no successful runs to compare with; methods with runs: {known}")
    others = [m for m, r in method_runs.items() if r and m != baseline]
    return {
        "baseline": baseline,
        "tests": paired_tests(method_runs, method_preds, spec=spec, pairs=[(m, baseline) for m in others]),
    }


#: Older formats whose numbers ``rescore_run`` / ``rebuild_results`` recompute with today's metrics.
LEGACY_RUN_FORMATS = ("metarec-bench-run-1",)
LEGACY_RESULTS_FORMATS = ("metarec-bench-results-1",)


def rescore_run(record: Mapping[str, Any], preds: Mapping[str, np.ndarray], *, spec: MetricSpec, n_boot: int,
                level: float) -> dict[str, Any]:
    """A successful run's record with its metrics and intervals recomputed from its predictions
    (same seed, same bootstrap draws); everything else (timings, history, config) is kept."""
    rec = dict(record)
    rec.update(run_metrics(preds["prediction"], preds["rating"], preds["user_id"], preds["scenario"],
                           n_boot=n_boot, level=level, seed=int(record["seed"]), spec=spec))
    if record.get("format") != RUN_FORMAT:
        rec["rescored_from"] = record.get("format")
    rec["format"] = RUN_FORMAT
    return rec


def collect_runs(rd: RunDir, methods: Sequence[str], seeds: Sequence[int], *,
                 spec: MetricSpec | None = None, n_boot: int = 1000, level: float = 0.95,
                 ) -> dict[tuple[str, int], dict[str, Any]]:
    """Every per-run file present for the planned (method, seed) pairs.

    A successful run of an older format (older metric definitions) is rescored from its
    predictions with ``spec`` and its file rewritten, so that a resumed benchmark never mixes
    the two definitions.
    """
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for m in methods:
        for s in seeds:
            path = rd.run_json(m, s)
            if path.exists():
                rec = read_json(path)
                fmt = rec.get("format")
                if fmt in LEGACY_RUN_FORMATS:
                    if rec.get("status") == "ok":
                        rec = rescore_run(rec, load_run_predictions(rd, m, s), spec=spec or MetricSpec(),
                                          n_boot=n_boot, level=level)
                    else:
                        rec = {**rec, "format": RUN_FORMAT}
                    write_json(path, rec)
                elif fmt != RUN_FORMAT:
                    raise ValueError(f"{path}: not a metarec run file (format {fmt!r})")
                found[(m, s)] = rec
    return found


def metrics_info(spec: MetricSpec, *, n_boot: int, level: float) -> dict[str, Any]:
    """What every number of ``results.json`` means (written into it)."""
    k, t = spec.k, spec.threshold
    return {
        "k": k,
        "clip_size": spec.clip_size,
        "ranking_ks": list(spec.ranking_ks),
        "relevance_threshold": t,
        "min_ratings": spec.min_ratings,
        "overall": "mae = mean over test users of per-user MAE (Eq. 13); rmse over all ratings; "
        f"ndcg@{k} = mean over users of NDCG@{k} of their query list (Eq. 14)",
        "scenario": "mae, rmse = over the cell's query ratings; "
        f"ndcg@{k} = within-user NDCG@{k}: mean over users with >= {spec.min_ratings} query ratings in the "
        f"cell of NDCG@{k} of their own ratings there; clip_ndcg@{k} = the paper's clip NDCG (appendix "
        f"A.2.3): clips of {spec.clip_size} ratings in test-user order, mixing users",
        "ranking": f"precision@K, ndcg_rel@K (binary gains), map@K per user on the cell's query items, "
        f"relevant = true rating >= {t:g}; users with < {spec.min_ratings} ratings in the cell or no "
        "relevant item are left out (n_users_relevant counts the rest); a list shorter than K is ranked "
        "whole, precision divides by min(K, length), AP by min(K, relevant items)",
        "ndcg_ties": "tie-averaged (McSherry & Najork 2008): tied predictions share their mean gain, "
        "the expected value over random orders of the ties; the same for precision and MAP",
        "std": f"sample standard deviation over seeds (ddof={STD_DDOF}); null with one seed",
        "ci": f"{level:.0%} percentile bootstrap of the mean over seeds, {n_boot} resamples of test "
        "users within each seed's split (stratified by seed); per run: the same with one seed",
        "paired_tests": "a - b on common seeds; per_seed: paired t-test on the per-seed cell values "
        "(ttest_p); per_user: per seed a one-sided Wilcoxon signed-rank test on per-user values (MAE, "
        "squared error for rmse, within-user NDCG), seeds combined by Stouffer's z (p, two-sided); "
        "per_unique_user: each user's a - b averaged over the seeds where the user is a test user, then "
        "one two-sided Wilcoxon signed-rank test (p) and t-test (ttest_p) over the unique users; "
        "*_holm: Holm-adjusted within the family (paired_tests: all pairs; baseline_tests: every method "
        "vs the best simple baseline)",
    }


def assemble_results(
    config: Mapping[str, Any],
    found: Mapping[tuple[str, int], Mapping[str, Any]],
    load_preds: Callable[[str, int], dict[str, np.ndarray]],
    *,
    label: str,
    environment: Mapping[str, Any],
    dataset: Mapping[str, Any],
    wall_time_s: float | None = None,
    command: Sequence[str] | None = None,
    baseline: str | None = None,
    dropped: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The aggregated results of the runs ``found`` (``(method, seed) -> record``).

    ``load_preds(method, seed)`` gives a run's predictions. ``baseline``: the method the
    ``baseline_tests`` family compares every other method with (default: the best simple
    baseline, :func:`best_simple_baseline`). ``dropped``: runs removed with ``--drop-failed``
    (neither missing nor failed; listed as ``dropped_runs``).
    """
    dropped_keys = {(str(d["method"]), int(d["seed"])) for d in dropped}
    methods = list(config["methods"])
    seeds = [int(s) for s in config["seeds"]]
    spec = MetricSpec.from_config(config)
    n_boot, level = int(config["n_boot"]), float(config["ci_level"])

    method_runs: dict[str, list[dict[str, Any]]] = {}
    method_preds: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    summary: dict[str, Any] = {}
    for m in methods:
        ok = [dict(found[(m, s)]) for s in seeds if (m, s) in found and found[(m, s)]["status"] == "ok"]
        failed = [found[(m, s)] for s in seeds if (m, s) in found and found[(m, s)]["status"] != "ok"]
        missing = [s for s in seeds if (m, s) not in found and (m, s) not in dropped_keys]
        preds = {int(r["seed"]): load_preds(m, int(r["seed"])) for r in ok}
        method_runs[m], method_preds[m] = ok, preds
        status = "ok" if ok and not failed and not missing else ("failed" if not ok else "partial")
        if not ok and not failed and not missing and any((m, s) in dropped_keys for s in seeds):
            status = "dropped"
        entry: dict[str, Any] = {
            "status": status,
            "seeds_ok": [int(r["seed"]) for r in ok],
            "seeds_failed": [int(r["seed"]) for r in failed],
            "seeds_missing": missing,
            "seeds_dropped": [s for s in seeds if (m, s) in dropped_keys],
            "errors": [{"seed": r["seed"], "error": r.get("error"), "traceback": r.get("traceback")} for r in failed],
        }
        if ok:
            entry.update(aggregate_method(ok, preds, n_boot=n_boot, level=level, spec=spec))
            from metarec.ranking import aggregate_catalogue

            catalogue = aggregate_catalogue(ok)
            if catalogue is not None:
                entry["catalogue_ranking"] = catalogue
            entry["preset"] = ok[0].get("preset")
            labels = sorted({r.get("preset_label") or r.get("preset") or "defaults" for r in ok})
            entry["preset_label"] = " | ".join(labels)
            entry["learner_config"] = ok[0].get("learner_config")
            entry["learner_class"] = ok[0].get("learner_class")
            entry["learner_distribution"] = ok[0].get("learner_distribution")
            if ok[0].get("settings_source") is not None:
                entry["settings_source"] = ok[0]["settings_source"]
            if any(r.get("untrained") for r in ok):
                entry["untrained"] = True
        summary[m] = entry

    runs = [dict(found[(m, s)]) for m in methods for s in seeds if (m, s) in found]
    several = sum(1 for r in method_runs.values() if r) > 1
    tests = paired_tests(method_runs, method_preds, spec=spec) if several else []
    base, rule = (baseline, "the method named with --against") if baseline is not None else \
        choose_simple_baseline(summary, runs)
    vs_base = baseline_tests(method_runs, method_preds, base, spec=spec) if several and base else None
    if vs_base is not None:
        vs_base["rule"] = rule
    return {
        "format": RESULTS_FORMAT,
        "label": label,
        "command": list(command) if command else None,
        "config": dict(config),
        "seeds": seeds,
        "dataset": dict(dataset),
        "protocol": dataset.get("protocol"),
        "metrics_info": metrics_info(spec, n_boot=n_boot, level=level),
        "environment": dict(environment),
        "wall_time_s": wall_time_s,
        "methods": summary,
        "paired_tests": tests,
        "baseline_tests": vs_base,
        "runs": runs,
        "dropped_runs": [dict(d) for d in dropped],
    }


def build_results(
    rd: RunDir,
    config: Mapping[str, Any],
    *,
    environment: Mapping[str, Any],
    dataset: Mapping[str, Any],
    wall_time_s: float | None = None,
    command: Sequence[str] | None = None,
    dropped: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Rebuild ``results.json`` and ``predictions.csv`` from the per-run files; returns the results.

    ``dropped`` lists runs removed from the benchmark with ``--drop-failed`` (``method``,
    ``seed``, ``error``): they are neither missing nor failed, and results.json lists them.
    """
    methods = list(config["methods"])
    seeds = [int(s) for s in config["seeds"]]
    spec = MetricSpec.from_config(config)
    dropped_keys = {(str(d["method"]), int(d["seed"])) for d in dropped}
    found = {key: rec for key, rec in collect_runs(rd, methods, seeds, spec=spec, n_boot=int(config["n_boot"]),
                                                   level=float(config["ci_level"])).items()
             if key not in dropped_keys}
    results = assemble_results(
        config, found, lambda m, s: load_run_predictions(rd, m, s), label=Path(rd.root).name,
        environment=environment, dataset=dataset, wall_time_s=wall_time_s, command=command, dropped=dropped,
    )
    parts = [rd.run_predictions(r["method"], int(r["seed"])).read_text("utf-8").split("\n", 1)[1]
             for r in results["runs"] if r["status"] == "ok"]
    header = ",".join(PREDICTION_COLUMNS) + "\n"
    write_text(rd.predictions, header + "".join(parts))
    write_json(rd.results, results)
    return clean_json(results)  # as results.json holds it (NaN -> null)


def _aggregated_predictions(root: Path) -> Path | None:
    for name in ("predictions.csv", "predictions.csv.gz"):
        if (root / name).exists():
            return root / name
    return None


def _prediction_loader(rd: RunDir, runs: Mapping[tuple[str, int], Mapping[str, Any]],
                       ) -> Callable[[str, int], dict[str, np.ndarray]]:
    """``load(method, seed)`` of a finished folder's predictions: the per-run files when every
    successful run has one, else the aggregated ``predictions.csv(.gz)``."""
    if (rd.root / "runs").is_dir() and all(rd.run_predictions(m, s).exists()
                                           for (m, s), r in runs.items() if r["status"] == "ok"):
        def load(m: str, s: int) -> dict[str, np.ndarray]:
            return load_run_predictions(rd, m, s)
        return load
    path = _aggregated_predictions(rd.root)
    if path is None:
        raise FileNotFoundError(f"{rd.root}: no predictions (runs/*.predictions.csv, predictions.csv or "
                                "predictions.csv.gz) to rebuild from")
    cols = read_predictions(path)
    keys = np.char.add(np.char.add(cols["method"].astype(str), "|"), cols["seed"].astype(str))

    def load_aggregated(m: str, s: int) -> dict[str, np.ndarray]:
        sel = keys == f"{m}|{s}"
        if not sel.any():
            raise ValueError(f"{path}: no predictions of {m} seed {s}, a successful run in results.json")
        return {c: v[sel] for c, v in cols.items()}
    return load_aggregated


def retest_results(root: str | Path, *, baseline: str | None = None) -> dict[str, Any]:
    """Recompute only the paired tests of a finished folder (format 2) from its predictions, in place.

    The metrics, intervals and runs are kept as they are (no rescoring, no bootstrap); the two
    families ``paired_tests`` and ``baseline_tests`` are rebuilt with this metarec's tests (e.g.
    adding the unique-user test), the comparator chosen as :func:`assemble_results` does, and
    ``retested`` records the version that did it. Cheap where ``--rebuild`` is not.
    """
    rd = RunDir(root)
    if not rd.results.exists():
        raise FileNotFoundError(f"{rd.results}: no results.json to retest")
    results = read_json(rd.results)
    if results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{rd.results}: results format {results.get('format')!r}; rebuild it first with "
                         f"`metarec report --rebuild {rd.root}`")
    config = results["config"]
    spec = MetricSpec.from_config(config)
    ok = [r for r in results.get("runs", []) if r.get("status") == "ok"]
    load = _prediction_loader(rd, {(r["method"], int(r["seed"])): r for r in ok})
    method_runs = {m: [r for r in ok if r["method"] == m] for m in config["methods"]}
    method_preds = {m: {int(r["seed"]): load(m, int(r["seed"])) for r in rs} for m, rs in method_runs.items()}
    several = sum(1 for rs in method_runs.values() if rs) > 1
    results["paired_tests"] = paired_tests(method_runs, method_preds, spec=spec) if several else []
    base, rule = (baseline, "the method named with --against") if baseline is not None else \
        choose_simple_baseline(results["methods"], results.get("runs", []))
    vs_base = baseline_tests(method_runs, method_preds, base, spec=spec) if several and base else None
    if vs_base is not None:
        vs_base["rule"] = rule
    results["baseline_tests"] = vs_base
    info = metrics_info(spec, n_boot=int(config["n_boot"]), level=float(config["ci_level"]))
    results.setdefault("metrics_info", {})["paired_tests"] = info["paired_tests"]
    from metarec import __version__

    results["retested"] = {"metarec": __version__,
                           "how": "metarec report --retest: the paired tests recomputed from the predictions"}
    write_json(rd.results, results)
    return clean_json(results)


def rebuild_results(root: str | Path, *, baseline: str | None = None) -> dict[str, Any]:
    """Recompute every number of a finished benchmark folder from its predictions, in place.

    Reads ``results.json`` (any format, including the older ``metarec-bench-results-1``) and
    the predictions: the per-run files under ``runs/`` when present, else the folder's
    ``predictions.csv`` or ``predictions.csv.gz`` (committed folders keep only those). Each
    successful run is rescored (:func:`rescore_run`: same seeds, same bootstrap draws), then
    aggregated, tested and written to ``results.json``; the provenance (command, environment,
    wall times, timings) is kept, and ``rebuilt`` records the metarec version that did it.
    Predictions are not rewritten. ``baseline``: the comparator of ``baseline_tests``.
    """
    rd = RunDir(root)
    if not rd.results.exists():
        raise FileNotFoundError(f"{rd.results}: no results.json to rebuild")
    old = read_json(rd.results)
    fmt = old.get("format")
    if fmt != RESULTS_FORMAT and fmt not in LEGACY_RESULTS_FORMATS:
        raise ValueError(f"{rd.results}: unknown results format {fmt!r} (expected {RESULTS_FORMAT})")
    config = dict(old["config"])
    spec = MetricSpec.from_config(config)
    n_boot, level = int(config["n_boot"]), float(config["ci_level"])
    runs = {(r["method"], int(r["seed"])): r for r in old.get("runs", [])}
    load = _prediction_loader(rd, runs)
    found = {key: (rescore_run(r, load(*key), spec=spec, n_boot=n_boot, level=level) if r["status"] == "ok"
                   else {**r, "format": RUN_FORMAT})
             for key, r in runs.items()}
    results = assemble_results(
        config, found, load, label=old.get("label") or rd.root.name, environment=old.get("environment", {}),
        dataset=old.get("dataset", {}), wall_time_s=old.get("wall_time_s"), command=old.get("command"),
        baseline=baseline,
    )
    for key in old:  # provenance the aggregation does not make (wall_time_note, runs_time_s, ...)
        if key not in results:
            results[key] = old[key]
    from metarec import __version__

    results["rebuilt"] = {"from_format": fmt, "metarec": __version__,
                          "how": "metarec report --rebuild: every run rescored from its predictions"}
    write_json(rd.results, results)
    return results


# ---------------------------------------------------------------------------- reading for reports


class ResultsView:
    """One table's worth of results: a label, a dataset name and per-method aggregate cells."""

    def __init__(self, label: str, dataset: str, methods: Mapping[str, Any], *, k: int = 3,
                 published: bool = False, source: Mapping[str, Any] | None = None,
                 aliases: Sequence[str] = (), baseline_tests: Mapping[str, Any] | None = None) -> None:
        self.label = label
        self.dataset = dataset
        #: Every name the dataset goes by (loader name, command-line name), to match references.
        self.aliases = {dataset, *aliases}
        self.methods = dict(methods)
        self.k = k
        self.published = published
        self.source = dict(source or {})
        #: The run's ``baseline_tests`` family (every method against the best simple baseline), if any.
        self.baseline_tests = dict(baseline_tests) if baseline_tests else None

    @property
    def ndcg_key(self) -> str:
        """The results' key of the within-user NDCG@k, e.g. ``ndcg@3``."""
        return f"ndcg@{self.k}"

    @property
    def clip_key(self) -> str:
        """The results' key of the paper's clip NDCG@k, e.g. ``clip_ndcg@3``."""
        return f"clip_ndcg@{self.k}"

    def value(self, method: str, cell: str, metric: str) -> tuple[float, float | None]:
        """(mean, std) of a cell; NaN when the method or cell is absent."""
        entry = self.methods.get(method, {})
        c = entry.get("cells", {}).get(cell, {}).get(metric)
        if not c:
            return float("nan"), None
        return _nan(c.get("mean")), (None if c.get("std") is None else float(c["std"]))

    def cell(self, method: str, cell: str) -> Mapping[str, Any]:
        """Everything stored for one method's cell (empty when absent)."""
        return self.methods.get(method, {}).get("cells", {}).get(cell, {})


def _published_cells(methods: Mapping[str, Any], k: int) -> dict[str, Any]:
    """A reference file's methods, its scenario ``ndcg@k`` read as what it is: the paper's clip NDCG."""
    out: dict[str, Any] = {}
    for m, e in methods.items():
        cells = {}
        for c, entry in (e.get("cells") or {}).items():
            entry = dict(entry)
            if c != "overall" and f"ndcg@{k}" in entry and f"clip_ndcg@{k}" not in entry:
                entry[f"clip_ndcg@{k}"] = entry.pop(f"ndcg@{k}")
            cells[c] = entry
        out[m] = {**e, "cells": cells}
    return out


def load_views(path: str | Path, label: str | None = None) -> list[ResultsView]:
    """Results views from a run directory, a ``results.json`` or a reference file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "results.json").exists():
            raise FileNotFoundError(
                f"{path}: no results.json; if the benchmark was interrupted, finish it with "
                f"`metarec bench --resume --out {path}`"
            )
        path = path / "results.json"
    data = read_json(path)
    fmt = data.get("format")
    if fmt in LEGACY_RESULTS_FORMATS:
        raise ValueError(
            f"{path}: written by an older metarec ({fmt}: NDCG ties kept list order, no RMSE/per-user/ranking "
            f"columns); recompute its numbers from its predictions with `metarec report --rebuild {path.parent}`"
        )
    if fmt == RESULTS_FORMAT:
        k = int(data.get("metrics_info", {}).get("k", data.get("config", {}).get("k", 3)))
        return [
            ResultsView(
                label or data.get("label") or path.parent.name,
                data.get("dataset", {}).get("name") or data.get("config", {}).get("dataset", "?"),
                {m: e for m, e in data.get("methods", {}).items() if e.get("cells")},
                k=k,
                aliases=[a for a in (data.get("config", {}).get("dataset"),) if a],
                baseline_tests=data.get("baseline_tests"),
            )
        ]
    if fmt == "metarec-bench-reference-1":
        views = []
        k = int(data.get("k", 3))
        for ds, block in data.get("datasets", {}).items():
            views.append(
                ResultsView(
                    label or data.get("label", path.stem), ds, _published_cells(block.get("methods", {}), k),
                    k=k, published=True, source=data.get("source", {}),
                    aliases=block.get("aliases", ()),
                )
            )
        return views
    raise ValueError(f"{path}: unknown results format {fmt!r} (expected {RESULTS_FORMAT} or a reference file)")


__all__ = [
    "CELLS",
    "PREDICTION_COLUMNS",
    "RESULTS_FORMAT",
    "RUN_FORMAT",
    "ResultsView",
    "RunDir",
    "build_results",
    "assemble_results",
    "baseline_tests",
    "best_simple_baseline",
    "choose_simple_baseline",
    "MetricSpec",
    "paired_tests",
    "rebuild_results",
    "reported_holm_p",
    "retest_results",
    "rescore_run",
    "clean_json",
    "load_views",
    "predictions_csv_text",
    "read_json",
    "read_predictions",
    "write_text",
    "run_key",
    "run_metrics",
    "write_json",
]
