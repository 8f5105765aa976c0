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

* a cell (``overall`` or a scenario) holds, per metric, ``mean`` and ``std`` over seeds
  (``std`` with ``ddof=1``, the sample standard deviation; ``null`` with one seed), the
  per-seed ``values``, ``n`` (query ratings per seed) and ``ci``: a percentile bootstrap
  interval of that mean, stratified by seed (test users are resampled within each seed's
  split, the cell's metric recomputed per seed and averaged). Per-run files hold each seed's
  own interval (the same computation with one seed).
* paired tests (when several methods ran) compare two methods cell by cell on the same seeds:
  ``per_seed`` on the per-seed cell values (read the t-test), ``per_user`` on the per-user
  errors of the cell pooled across seeds (read the Wilcoxon test); see
  :func:`metarec.metrics.paired_test`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from metarec import metrics as M
from metarec.checkpoint import atomic_write_text
from metarec.runtime import derive_seed
from metarec.schema import SCENARIOS

RESULTS_FORMAT = "metarec-bench-results-1"
RUN_FORMAT = "metarec-bench-run-1"
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
    """A predictions CSV as columns (``rating``/``prediction`` float64, ``seed`` int, rest str)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
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


def _metric_fns(k: int, clip_size: int) -> dict[str, dict[str, Any]]:
    """Per scenario cell, the metric functions ``(pred, true, user) -> float`` for bootstrap CIs."""
    key = f"ndcg@{k}"
    cell = {
        "mae": lambda p, t, u: M.mae(p, t),
        key: lambda p, t, u: M.clip_ndcg(p, t, k=k, clip_size=clip_size),
    }
    return {c: cell for c in SCENARIOS}


def per_user_scores(pred: np.ndarray, true: np.ndarray, units: np.ndarray, metric: str, k: int) -> np.ndarray:
    """Each user's MAE or NDCG@k (``metric`` = ``mae`` / ``ndcg@k``), users in order of first appearance."""
    pos = user_positions(units) if len(units) else np.zeros(0, dtype=np.int64)
    n_users = int(pos.max()) + 1 if len(pos) else 0
    if metric == "mae":
        sums = np.bincount(pos, weights=np.abs(pred - true), minlength=n_users)
        return sums / np.maximum(np.bincount(pos, minlength=n_users), 1)
    order = np.argsort(pos, kind="stable")
    bounds = np.cumsum(np.bincount(pos, minlength=n_users))[:-1]
    return np.array([M.ndcg_at_k(pred[g], true[g], k=k) for g in np.split(order, bounds)])


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


def cell_confidence_intervals(
    strata: Sequence[Stratum], *, k: int, clip_size: int, n_boot: int, level: float
) -> dict[str, dict[str, list[float]]]:
    """Bootstrap CI of MAE and NDCG@k in every cell, for the mean over strata (seeds).

    Stratified: each replicate resamples test users within every seed's split
    (:func:`metarec.metrics.bootstrap_metric_replicates`), computes the cell's metric per seed
    and averages over the seeds whose cell is not empty -- exactly how the reported mean is
    made, so the interval is the interval of that number. With one seed this is the plain
    user bootstrap of that run.
    """
    alpha = 1.0 - level
    out: dict[str, dict[str, list[float]]] = {}
    key = f"ndcg@{k}"
    cell_fns = {"overall": {"mae": None, key: None}, **_metric_fns(k, clip_size)}
    for cell, fns in cell_fns.items():
        out[cell] = {}
        for name, fn in fns.items():
            reps = []
            for st in strata:
                seed = derive_seed(st.seed, "bootstrap", cell, name)
                if cell == "overall":
                    # user_mae / user_ndcg are means of per-user scores: resampling users is
                    # resampling those scores (same draws, same values, far faster)
                    scores = per_user_scores(st.pred, st.true, st.units, name, k)
                    reps.append(
                        M.bootstrap_metric_replicates(
                            scores, np.zeros_like(scores), np.arange(len(scores)), _mean_of_units,
                            n_boot=n_boot, seed=seed,
                        )
                    )
                    continue
                m = st.scenario == cell
                if not m.any():
                    continue
                reps.append(
                    M.bootstrap_metric_replicates(st.pred[m], st.true[m], st.units[m], fn, n_boot=n_boot, seed=seed)
                )
            if not reps:
                out[cell][name] = [float("nan"), float("nan")]
                continue
            mean_reps = np.mean(np.stack(reps), axis=0)
            lo, hi = np.percentile(mean_reps, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
            out[cell][name] = [float(lo), float(hi)]
    return out


def run_metrics(
    pred: np.ndarray,
    true: np.ndarray,
    user_ids: np.ndarray,
    scenario: np.ndarray,
    *,
    k: int,
    clip_size: int,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, Any]:
    """``{"metrics": scenario_metrics(...), "ci": {...}}`` of one run's query predictions."""
    units = user_positions(user_ids)
    table = M.scenario_metrics(pred, true, units, scenario, k=k, clip_size=clip_size, scenarios=SCENARIOS)
    ci = cell_confidence_intervals(
        [Stratum(seed, pred, true, units, scenario)], k=k, clip_size=clip_size, n_boot=n_boot, level=level
    )
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


def aggregate_method(
    runs: Sequence[Mapping[str, Any]],
    preds: Mapping[int, Mapping[str, np.ndarray]],
    *,
    k: int,
    clip_size: int,
    n_boot: int,
    level: float,
) -> dict[str, Any]:
    """Mean/std over the successful seeds of one method, plus the stratified bootstrap CI per cell."""
    key = f"ndcg@{k}"
    seeds = [int(r["seed"]) for r in runs]
    cells: dict[str, Any] = {}
    strata = [
        Stratum(s, preds[s]["prediction"], preds[s]["rating"], user_positions(preds[s]["user_id"]), preds[s]["scenario"])
        for s in seeds
        if s in preds
    ]
    seed_ci = cell_confidence_intervals(strata, k=k, clip_size=clip_size, n_boot=n_boot, level=level) if strata else {}
    for cell in CELLS:
        entry: dict[str, Any] = {}
        for name in ("mae", "rmse", key):
            values = [_nan(r["metrics"][cell][name]) for r in runs]
            mean, std = _mean_std(values)
            entry[name] = {"mean": mean, "std": std, "values": values}
            if name in seed_ci.get(cell, {}):
                entry[name]["ci"] = seed_ci[cell][name]
        n_per_seed = [int(r["metrics"][cell]["n"]) for r in runs]
        entry["n"] = float(np.mean(n_per_seed)) if n_per_seed else 0.0
        entry["n_per_seed"] = n_per_seed
        entry["n_users_per_seed"] = [int(r["metrics"][cell]["n_users"]) for r in runs]
        cells[cell] = entry
    return {"seeds": seeds, "n_seeds": len(seeds), "cells": cells}


def _per_user_values(pr: Mapping[str, np.ndarray], cell: str, metric: str, k: int) -> tuple[list[tuple], np.ndarray]:
    """Per-user values of one cell: MAE (mean abs error on the cell's ratings) or NDCG@k (overall only)."""
    m = np.ones(len(pr["prediction"]), dtype=bool) if cell == "overall" else pr["scenario"] == cell
    uid = pr["user_id"][m]
    pos = user_positions(uid) if len(uid) else np.zeros(0, dtype=np.int64)
    keys: list[str] = [""] * (int(pos.max()) + 1 if len(pos) else 0)
    for i, u in zip(pos, uid):
        keys[i] = str(u)
    return keys, per_user_scores(pr["prediction"][m], pr["rating"][m], uid, metric, k)


def paired_tests(
    method_runs: Mapping[str, Sequence[Mapping[str, Any]]],
    method_preds: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]],
    *,
    k: int,
) -> list[dict[str, Any]]:
    """Every pair of methods, every cell and metric: per-seed and per-user paired tests (a - b)."""
    key = f"ndcg@{k}"
    names = [m for m, runs in method_runs.items() if runs]
    out: list[dict[str, Any]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ra = {int(r["seed"]): r for r in method_runs[a]}
            rb = {int(r["seed"]): r for r in method_runs[b]}
            common = sorted(set(ra) & set(rb))
            for cell in CELLS:
                for metric in ("mae", key):
                    entry: dict[str, Any] = {"a": a, "b": b, "cell": cell, "metric": metric, "seeds": common}
                    xa = [_nan(ra[s]["metrics"][cell][metric]) for s in common]
                    xb = [_nan(rb[s]["metrics"][cell][metric]) for s in common]
                    ok = [j for j in range(len(common)) if math.isfinite(xa[j]) and math.isfinite(xb[j])]
                    if len(ok) >= 2:
                        entry["per_seed"] = M.paired_test([xa[j] for j in ok], [xb[j] for j in ok])
                    else:
                        entry["per_seed"] = {"skipped": f"needs >= 2 seeds with values in both methods, have {len(ok)}"}
                    # per-user units exist for MAE in every cell, for NDCG@k only overall
                    # (a scenario's NDCG is a clip-NDCG over users, not a per-user score)
                    if metric == "mae" or cell == "overall":
                        ua: list[float] = []
                        ub: list[float] = []
                        for s in common:
                            ka, va = _per_user_values(method_preds[a][s], cell, metric, k)
                            kb, vb = _per_user_values(method_preds[b][s], cell, metric, k)
                            if ka != kb:
                                raise ValueError(
                                    f"paired test {a} vs {b}, seed {s}: the test users differ; the runs "
                                    "do not share a split"
                                )
                            ua.extend(va.tolist())
                            ub.extend(vb.tolist())
                        if len(ua) >= 2:
                            entry["per_user"] = M.paired_test(ua, ub)
                        else:
                            entry["per_user"] = {"skipped": f"needs >= 2 users, have {len(ua)}"}
                    out.append(entry)
    return out


def collect_runs(rd: RunDir, methods: Sequence[str], seeds: Sequence[int]) -> dict[tuple[str, int], dict[str, Any]]:
    """Every per-run file present for the planned (method, seed) pairs."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for m in methods:
        for s in seeds:
            path = rd.run_json(m, s)
            if path.exists():
                rec = read_json(path)
                if rec.get("format") != RUN_FORMAT:
                    raise ValueError(f"{path}: not a metarec run file (format {rec.get('format')!r})")
                found[(m, s)] = rec
    return found


def build_results(
    rd: RunDir,
    config: Mapping[str, Any],
    *,
    environment: Mapping[str, Any],
    dataset: Mapping[str, Any],
    wall_time_s: float | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Rebuild ``results.json`` and ``predictions.csv`` from the per-run files; returns the results."""
    methods = list(config["methods"])
    seeds = [int(s) for s in config["seeds"]]
    k, clip_size = int(config["k"]), int(config["clip_size"])
    n_boot, level = int(config["n_boot"]), float(config["ci_level"])
    found = collect_runs(rd, methods, seeds)

    method_runs: dict[str, list[dict[str, Any]]] = {}
    method_preds: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    summary: dict[str, Any] = {}
    parts: list[str] = []
    for m in methods:
        ok = [found[(m, s)] for s in seeds if (m, s) in found and found[(m, s)]["status"] == "ok"]
        failed = [found[(m, s)] for s in seeds if (m, s) in found and found[(m, s)]["status"] != "ok"]
        missing = [s for s in seeds if (m, s) not in found]
        preds = {int(r["seed"]): load_run_predictions(rd, m, int(r["seed"])) for r in ok}
        method_runs[m], method_preds[m] = ok, preds
        for r in ok:
            parts.append(rd.run_predictions(m, int(r["seed"])).read_text("utf-8").split("\n", 1)[1])
        status = "ok" if ok and not failed and not missing else ("failed" if not ok else "partial")
        entry: dict[str, Any] = {
            "status": status,
            "seeds_ok": [int(r["seed"]) for r in ok],
            "seeds_failed": [int(r["seed"]) for r in failed],
            "seeds_missing": missing,
            "errors": [{"seed": r["seed"], "error": r.get("error"), "traceback": r.get("traceback")} for r in failed],
        }
        if ok:
            entry.update(aggregate_method(ok, preds, k=k, clip_size=clip_size, n_boot=n_boot, level=level))
            entry["preset"] = ok[0].get("preset")
            entry["learner_config"] = ok[0].get("learner_config")
            if ok[0].get("settings_source") is not None:
                entry["settings_source"] = ok[0]["settings_source"]
        summary[m] = entry

    tests = paired_tests(method_runs, method_preds, k=k) if sum(1 for r in method_runs.values() if r) > 1 else []
    runs = [found[(m, s)] for m in methods for s in seeds if (m, s) in found]
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "label": Path(rd.root).name,
        "command": list(command) if command else None,
        "config": dict(config),
        "seeds": seeds,
        "dataset": dict(dataset),
        "protocol": dataset.get("protocol"),
        "metrics_info": {
            "k": k,
            "clip_size": clip_size,
            "overall": "mae = mean over test users of per-user MAE (Eq. 13); ndcg = mean per-user NDCG@k (Eq. 14)",
            "scenario": "mae = mean over the cell's query ratings; ndcg = clip-NDCG@k over clips of clip_size "
            "ratings in test-user order (appendix A.2.3)",
            "std": f"sample standard deviation over seeds (ddof={STD_DDOF}); null with one seed",
            "ci": f"{level:.0%} percentile bootstrap of the mean over seeds, {n_boot} resamples of test "
            "users within each seed's split (stratified by seed); per run: the same with one seed",
            "paired_tests": "a - b on common seeds; per_seed: cell values per seed (read ttest_p); "
            "per_user: per-user errors of the cell pooled over seeds (read wilcoxon_p)",
            "ndcg_ties": "stable sort: equal predictions keep test order (metarec.metrics)",
        },
        "environment": dict(environment),
        "wall_time_s": wall_time_s,
        "methods": summary,
        "paired_tests": tests,
        "runs": runs,
    }
    header = ",".join(PREDICTION_COLUMNS) + "\n"
    write_text(rd.predictions, header + "".join(parts))
    write_json(rd.results, results)
    return results


# ---------------------------------------------------------------------------- reading for reports


class ResultsView:
    """One table's worth of results: a label, a dataset name and per-method aggregate cells."""

    def __init__(self, label: str, dataset: str, methods: Mapping[str, Any], *, k: int = 3,
                 published: bool = False, source: Mapping[str, Any] | None = None,
                 aliases: Sequence[str] = ()) -> None:
        self.label = label
        self.dataset = dataset
        #: Every name the dataset goes by (loader name, command-line name), to match references.
        self.aliases = {dataset, *aliases}
        self.methods = dict(methods)
        self.k = k
        self.published = published
        self.source = dict(source or {})

    @property
    def ndcg_key(self) -> str:
        """The results' key of NDCG@k, e.g. ``ndcg@3``."""
        return f"ndcg@{self.k}"

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
    if fmt == RESULTS_FORMAT:
        k = int(data.get("metrics_info", {}).get("k", data.get("config", {}).get("k", 3)))
        return [
            ResultsView(
                label or data.get("label") or path.parent.name,
                data.get("dataset", {}).get("name") or data.get("config", {}).get("dataset", "?"),
                {m: e for m, e in data.get("methods", {}).items() if e.get("cells")},
                k=k,
                aliases=[a for a in (data.get("config", {}).get("dataset"),) if a],
            )
        ]
    if fmt == "metarec-bench-reference-1":
        views = []
        for ds, block in data.get("datasets", {}).items():
            views.append(
                ResultsView(
                    label or data.get("label", path.stem), ds, block.get("methods", {}),
                    k=int(data.get("k", 3)), published=True, source=data.get("source", {}),
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
