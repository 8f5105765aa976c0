"""Metrics of the item warm-up protocol: AUC, F1 and log-loss per stage, with item-bootstrap intervals.

* **AUC**: pooled over every test row (CVAR's ``roc_auc_score``), ties counted one half.
* **F1** at threshold 0.5 (``f1``): a fixed, non-transductive threshold; and ``f1_mean`` at the
  mean of the stage's test predictions -- CVAR's rule, which looks at the test predictions and is
  reported only to compare with published numbers.
* **log-loss**: mean binary cross-entropy, predictions clipped to [1e-7, 1 - 1e-7].

Intervals resample **new items** with replacement (an item brings all its test rows): items are
the independent units of this protocol, as users are of the other one. Every metric is a
weighted statistic of the rows (weight = how often the row's item was drawn), so a replicate
costs one pass over rows sorted once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-7
METRICS: tuple[str, ...] = ("auc", "f1", "f1_mean", "logloss")


def _weighted(pred: np.ndarray, label: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of the weight matrix ``w`` ``[R, n]`` (rows sorted by ``pred``)."""
    pos = label > 0.5
    # AUC: sort ascending, group ties; a positive beats every lower negative and half its tied ones
    order = np.argsort(pred, kind="stable")
    p, y, ww = pred[order], pos[order], w[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(p)) + 1]
    wn = np.where(y, 0.0, ww)
    wp = np.where(y, ww, 0.0)
    neg_g = np.add.reduceat(wn, starts, axis=1)
    pos_g = np.add.reduceat(wp, starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g
    n_pos, n_neg = pos_g.sum(1), neg_g.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_g * (below + 0.5 * neg_g)).sum(1) / (n_pos * n_neg)
    out = {"auc": auc}
    total = w.sum(1)
    for name, thr in (("f1", np.full(len(w), 0.5)), ("f1_mean", (w * pred).sum(1) / total)):
        hit = pred[None, :] > thr[:, None]
        tp = (w * (hit & pos)).sum(1)
        fp = (w * (hit & ~pos)).sum(1)
        fn = (w * (~hit & pos)).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    q = np.clip(pred, EPS, 1 - EPS)
    ll = -(label * np.log(q) + (1 - label) * np.log(1 - q))
    out["logloss"] = (w * ll).sum(1) / total
    return out


def stage_metrics(pred: Any, label: Any) -> dict[str, float]:
    """AUC, F1 (0.5 and test-mean thresholds) and log-loss of one stage's test predictions."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    vals = _weighted(p, y, np.ones((1, len(p))))
    return {k: float(v[0]) for k, v in vals.items()} | {"n": int(len(p))}


def bootstrap_replicates(pred: Any, label: Any, item: Any, *, n_boot: int, seed: int, chunk: int = 32) -> dict[str, np.ndarray]:
    """``n_boot`` replicates of every metric, resampling items (same draws for a seed and items)."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    _, inv = np.unique(np.asarray(item), return_inverse=True)
    n_items = int(inv.max()) + 1 if len(inv) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_items, size=(n_boot, n_items))
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for s in range(0, n_boot, chunk):
        counts = np.stack([np.bincount(d, minlength=n_items) for d in draws[s:s + chunk]]).astype(np.float64)
        vals = _weighted(p, y, counts[:, inv])
        for m in METRICS:
            out[m].append(vals[m])
    return {m: np.concatenate(v) if v else np.empty(0) for m, v in out.items()}


def percentile_interval(values: np.ndarray, level: float) -> list[float]:
    """The central ``level`` percentile interval of ``values`` (NaNs ignored)."""
    a = (1 - level) / 2
    v = values[np.isfinite(values)]
    if v.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(v, [100 * a, 100 * (1 - a)])
    return [float(lo), float(hi)]


__all__ = ["METRICS", "bootstrap_replicates", "percentile_interval", "stage_metrics"]
