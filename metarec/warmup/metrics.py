"""Metrics of the item warm-up protocol: AUC, F1 and log-loss per stage, with item-bootstrap intervals.

* **AUC**: pooled over every test row (CVAR's ``roc_auc_score``), ties counted one half.
* **F1** at threshold 0.5 (``f1``): a fixed, non-transductive threshold; and ``f1_mean`` at the
  mean of the stage's test predictions -- CVAR's rule, which looks at the test predictions and is
  reported only to compare with published numbers.
* **log-loss**: mean binary cross-entropy, predictions clipped to [1e-7, 1 - 1e-7].

Intervals resample **new items** with replacement (an item brings all its test rows): items are
the independent units of this protocol, as users are of the other one. Every metric is a
weighted statistic of the rows (weight = how often the row's item was drawn); per-item
statistics computed once make a replicate cost a few item-by-item products, not a pass over rows.
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


def _sorted_by_item(p: np.ndarray, inv: np.ndarray, n_items: int) -> list[np.ndarray]:
    """Each item's scores, sorted (one sort for all items)."""
    order = np.lexsort((p, inv))
    bounds = np.searchsorted(inv[order], np.arange(n_items + 1))
    ps = p[order]
    return [ps[bounds[i]:bounds[i + 1]] for i in range(n_items)]


def _pair_matrix(p: np.ndarray, pos: np.ndarray, inv: np.ndarray, n_items: int) -> np.ndarray:
    """``C[i, j]``: pairs (positive row of item i, negative row of item j) with the positive scored
    higher, ties 1/2. Per negative item j: each of its negatives adds 1/2 to the positives tied
    with it and 1 to those above it -- a difference array over the sorted positives."""
    order = np.argsort(p[pos], kind="stable")
    p_pos, item_pos = p[pos][order], inv[pos][order]
    out = np.zeros((n_items, n_items))
    if p_pos.size == 0:
        return out
    for j, negs in enumerate(_sorted_by_item(p[~pos], inv[~pos], n_items)):
        if negs.size == 0:
            continue
        left = np.searchsorted(p_pos, negs, side="left")  # first positive >= the negative
        right = np.searchsorted(p_pos, negs, side="right")  # first positive > the negative
        step = 0.5 * (np.bincount(left, minlength=p_pos.size + 1) + np.bincount(right, minlength=p_pos.size + 1))
        out[:, j] = np.bincount(item_pos, weights=np.cumsum(step)[:-1], minlength=n_items)
    return out


class _ItemStats:
    """Per-item sufficient statistics of every metric, so a replicate costs ``O(n_items^2)``, not ``O(rows)``.

    A replicate weights each item by how often it was drawn. Counts, sums and log-loss are then
    ``w @ per_item``; the AUC numerator is ``w^T C w`` with ``C[i, j]`` = the pairs (positive row
    of item i, negative row of item j) ordered correctly (ties 1/2); F1 at the replicate's mean
    threshold needs each item's positives and negatives above that threshold (sorted scores).
    All of it is exactly the row-level definition (:func:`_weighted`) on the resampled rows.
    """

    def __init__(self, p: np.ndarray, y: np.ndarray, inv: np.ndarray, n_items: int) -> None:
        pos = y > 0.5
        q = np.clip(p, EPS, 1 - EPS)
        ll = -(y * np.log(q) + (1 - y) * np.log(1 - q))

        def per_item(values: np.ndarray) -> np.ndarray:
            return np.bincount(inv, weights=values.astype(np.float64), minlength=n_items)

        self.n = per_item(np.ones_like(p))
        self.pos = per_item(pos)
        self.neg = self.n - self.pos
        self.tp05 = per_item(pos & (p > 0.5))
        self.fp05 = per_item(~pos & (p > 0.5))
        self.sum_p = per_item(p)
        self.ll = per_item(ll)
        self.pos_scores = _sorted_by_item(p[pos], inv[pos], n_items)
        self.neg_scores = _sorted_by_item(p[~pos], inv[~pos], n_items)
        self.pairs = _pair_matrix(p, pos, inv, n_items)

    def replicates(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric for each row of the item-weight matrix ``w`` ``[R, n_items]``."""
        n_pos, n_neg, total = w @ self.pos, w @ self.neg, w @ self.n
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {"auc": ((w @ self.pairs) * w).sum(1) / (n_pos * n_neg)}
            thr = (w @ self.sum_p) / total
            above_pos = np.stack([s.size - np.searchsorted(s, thr, side="right") for s in self.pos_scores], 1)
            above_neg = np.stack([s.size - np.searchsorted(s, thr, side="right") for s in self.neg_scores], 1)
            for name, tp, fp in (("f1", w @ self.tp05, w @ self.fp05),
                                 ("f1_mean", (w * above_pos).sum(1), (w * above_neg).sum(1))):
                fn = n_pos - tp
                out[name] = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            out["logloss"] = (w @ self.ll) / total
        return out


def bootstrap_replicates(pred: Any, label: Any, item: Any, *, n_boot: int, seed: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """``n_boot`` replicates of every metric, resampling items (same draws for a seed and items)."""
    p = np.asarray(pred, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    _, inv = np.unique(np.asarray(item), return_inverse=True)
    inv = inv.reshape(-1)
    n_items = int(inv.max()) + 1 if len(inv) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_items, size=(n_boot, n_items))
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    if n_items == 0:
        return {m: np.empty(0) for m in METRICS}
    stats = _ItemStats(p, y, inv, n_items)
    for s in range(0, n_boot, chunk):
        counts = np.stack([np.bincount(d, minlength=n_items) for d in draws[s:s + chunk]]).astype(np.float64)
        vals = stats.replicates(counts)
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
