"""Evaluation metrics for cold-start recommendation (MAMO, Dong et al. KDD 2020).

Pure numpy/scipy, plain functions in the scikit-learn style. Every function
validates its input and names the offending argument and value in the error.

Definitions (paper Eq. 13-15, appendix A.2.3) and our choices where the paper
and its reference code are silent or disagree:

* ``user_mae`` is Eq. 13: the mean over users of each user's mean absolute
  error, so every user weighs the same regardless of how many ratings it has.
  ``mae``/``rmse`` are flat means over ratings (used per scenario cell, A.2.3).
* NDCG uses gain ``2**y - 1`` and discount ``log2(n + 1)`` for rank
  ``n = 1..k``. The paper writes ``log`` without a base; the base cancels in
  DCG/IDCG, so the choice does not change any value.
* Ranking is by prediction, descending, with a *stable* sort: equal
  predictions keep their original order (the earlier item ranks first).
  Argmax-class predictions tie a lot, and a tie rule that is not fixed makes
  NDCG irreproducible; the reference code uses an unstable sort.
* DCG uses the true ratings *in predicted order*. The reference code's helper
  re-sorts the true ratings of the predicted top-k before discounting, so it
  only scores top-k membership; we score the order inside the top-k too,
  which is what Eq. 15 says.
* IDCG uses the k largest true ratings of the whole list. A list shorter than
  k uses all of its items (k is effectively ``min(k, len)`` for DCG and IDCG).
* If IDCG == 0 (every true rating is 0, so every gain is 0) NDCG is 1.0: every
  order is ideal. Negative true ratings are rejected, since their negative
  gains make NDCG unbounded.
* ``clip_ndcg`` (A.2.3, per-scenario NDCG): the clip length is not given by
  the paper or its code; the default is 5 (the query size). The trailing
  partial clip is kept and weighs as much as a full clip.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

__all__ = [
    "mae",
    "rmse",
    "user_mae",
    "ndcg_at_k",
    "user_ndcg",
    "clip_ndcg",
    "scenario_metrics",
    "bootstrap_ci",
    "bootstrap_metric_ci",
    "bootstrap_metric_replicates",
    "paired_test",
]

DEFAULT_SCENARIOS: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C")


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _as_1d_float(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {x!r:.80}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s); "
            f"first at index {i}: {arr[i]}"
        )
    return arr


def _check_pair(pred: Any, true: Any, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    p = _as_1d_float(pred, "pred")
    t = _as_1d_float(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {t.shape}")
    if p.size == 0 and not allow_empty:
        raise ValueError("pred and true are empty; a metric needs at least one rating")
    return p, t


def _check_index(user_index: Any, n: int, name: str = "user_index") -> np.ndarray:
    u = np.asarray(user_index)
    if u.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {u.shape}")
    if u.shape[0] != n:
        raise ValueError(f"{name} has length {u.shape[0]} but pred/true have length {n}")
    if u.dtype.kind == "f" and np.isnan(u).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(u))[0])}")
    if u.dtype.kind == "O" and any(v is None for v in u):
        raise ValueError(f"{name} contains None")
    return u


def _check_pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_ratings_nonneg(t: np.ndarray) -> None:
    if t.size and t.min() < 0:
        i = int(np.argmin(t))
        raise ValueError(
            f"true ratings must be >= 0 for NDCG (gain 2**y - 1); got {t[i]} at index {i}"
        )


def _groups(user_index: np.ndarray) -> list[np.ndarray]:
    """Row indices of each user, users in order of first appearance, rows in given order."""
    _, first, inv = np.unique(user_index, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    counts = np.bincount(inv)
    bounds = np.cumsum(counts)[:-1]
    groups = np.split(order, bounds)
    # np.unique sorts the labels; reorder groups to first appearance
    return [groups[g] for g in np.argsort(first, kind="stable")]


# --------------------------------------------------------------------------
# error metrics
# --------------------------------------------------------------------------

def mae(pred: Any, true: Any) -> float:
    """Mean absolute error over all ratings (a flat mean; per-scenario MAE in A.2.3)."""
    p, t = _check_pair(pred, true)
    return float(np.mean(np.abs(p - t)))


def rmse(pred: Any, true: Any) -> float:
    """Root mean squared error over all ratings (a flat mean)."""
    p, t = _check_pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def user_mae(pred: Any, true: Any, user_index: Any) -> float:
    """Paper Eq. 13: mean over users of each user's MAE.

    Every user counts once, so users with many query ratings do not dominate;
    this differs from ``mae`` whenever users have different rating counts.
    """
    p, t = _check_pair(pred, true)
    u = _check_index(user_index, p.size)
    _, inv = np.unique(u, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.bincount(inv, weights=np.abs(p - t))
    counts = np.bincount(inv)
    return float(np.mean(sums / counts))


# --------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------

def _ndcg_rows(p: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each row of equal-length, validated, non-empty lists (vectorised).

    See the module docstring for the rules.
    """
    kk = min(k, p.shape[1])
    discount = np.log2(np.arange(2, kk + 2))
    # stable sort of -pred: equal predictions keep their original order
    top = np.argsort(-p, axis=1, kind="stable")[:, :kk]
    ranked = np.take_along_axis(t, top, axis=1)
    ideal = -np.sort(-t, axis=1)[:, :kk]
    idcg = ((2.0 ** ideal - 1.0) / discount).sum(axis=1)
    dcg = ((2.0 ** ranked - 1.0) / discount).sum(axis=1)
    out = np.ones(p.shape[0])  # IDCG == 0: all gains are zero, any order is ideal
    pos = idcg > 0
    out[pos] = dcg[pos] / idcg[pos]
    return out


def _ndcg(p: np.ndarray, t: np.ndarray, k: int) -> float:
    """NDCG@k of one validated, non-empty list."""
    return float(_ndcg_rows(p[None, :], t[None, :], k)[0])


def _ndcg_of_lists(p: np.ndarray, t: np.ndarray, lists: list[np.ndarray], k: int) -> np.ndarray:
    """NDCG@k of each row-index list, batching lists of equal length."""
    out = np.empty(len(lists))
    lengths = np.array([g.size for g in lists])
    for n in np.unique(lengths):
        which = np.flatnonzero(lengths == n)
        rows = np.stack([lists[i] for i in which])
        out[which] = _ndcg_rows(p[rows], t[rows], k)
    return out


def ndcg_at_k(pred: Any, true: Any, k: int = 3) -> float:
    """NDCG@k of ONE ranked list (paper Eq. 14-15).

    Items are ranked by ``pred`` descending; ties keep their original order
    (earlier first), so the score is deterministic. The true ratings are used
    in that order (unlike the reference code, which re-sorts them inside the
    top-k). IDCG takes the k largest true ratings; a list shorter than k uses
    all its items; IDCG == 0 gives 1.0. Raises ValueError on empty input.
    """
    k = _check_pos_int(k, "k")
    p, t = _check_pair(pred, true)
    _check_ratings_nonneg(t)
    return _ndcg(p, t, k)


def user_ndcg(pred: Any, true: Any, user_index: Any, k: int = 3) -> float:
    """Paper Eq. 14: mean over users of NDCG@k on each user's query list.

    A user's list is its ratings in the given order (which only matters to
    break prediction ties).
    """
    k = _check_pos_int(k, "k")
    p, t = _check_pair(pred, true)
    u = _check_index(user_index, p.size)
    _check_ratings_nonneg(t)
    return float(np.mean(_ndcg_of_lists(p, t, _groups(u), k)))


def clip_ndcg(pred: Any, true: Any, k: int = 3, clip_size: int = 5) -> float:
    """Per-scenario NDCG of appendix A.2.3: mean NDCG@k over consecutive clips.

    A user's query ratings in one scenario are often fewer than k, so the paper
    concatenates the scenario's (pred, true) pairs across users (the caller
    passes them in test-user order) and cuts them into clips of ``clip_size``.
    The trailing partial clip is kept and weighs like a full one (so no rating
    is dropped). Empty input returns NaN: a scenario with no ratings has no
    score, and that is not an error.
    """
    k = _check_pos_int(k, "k")
    clip_size = _check_pos_int(clip_size, "clip_size")
    p, t = _check_pair(pred, true, allow_empty=True)
    if p.size == 0:
        return float("nan")
    _check_ratings_nonneg(t)
    n_full = p.size // clip_size
    cut = n_full * clip_size
    scores = list(_ndcg_rows(p[:cut].reshape(n_full, clip_size), t[:cut].reshape(n_full, clip_size), k))
    if cut < p.size:
        scores.append(_ndcg(p[cut:], t[cut:], k))  # trailing partial clip, kept
    return float(np.mean(scores))


# --------------------------------------------------------------------------
# scenario table
# --------------------------------------------------------------------------

def _scenario_labels(scenario: Any, n: int, scenarios: Sequence[str]) -> np.ndarray:
    s = np.asarray(scenario)
    if s.ndim != 1:
        raise ValueError(f"scenario must be 1-D, got shape {s.shape}")
    if s.shape[0] != n:
        raise ValueError(f"scenario has length {s.shape[0]} but pred/true have length {n}")
    names = np.asarray(list(scenarios), dtype=object)
    if s.dtype.kind in "iu":
        bad = (s < 0) | (s >= len(names))
        if bad.any():
            raise ValueError(
                f"integer scenario codes must be in 0..{len(names) - 1}; "
                f"got {s[bad][0]} at index {int(np.flatnonzero(bad)[0])}"
            )
        return names[s]
    if s.dtype.kind == "f":
        raise ValueError(f"scenario must hold names or integer codes, got float dtype {s.dtype}")
    s = s.astype(object)
    unknown = sorted({str(v) for v in s} - {str(v) for v in names})
    if unknown:
        raise ValueError(f"unknown scenario label(s) {unknown}; expected one of {list(scenarios)}")
    return s


def scenario_metrics(
    pred: Any,
    true: Any,
    user_index: Any,
    scenario: Any,
    k: int = 3,
    clip_size: int = 5,
    scenarios: Sequence[str] = DEFAULT_SCENARIOS,
) -> dict[str, dict[str, float]]:
    """The paper's Table 1 row for one run: overall plus one cell per scenario.

    ``overall``: mae = ``user_mae`` (Eq. 13), ndcg = ``user_ndcg`` (Eq. 14),
    rmse = flat RMSE over all ratings (the paper has no RMSE; a per-rating
    RMSE is the usual one). Each scenario (A.2.3): flat ``mae``/``rmse`` over
    that scenario's ratings and ``clip_ndcg`` over its pairs in the given
    order. An empty scenario gets NaN metrics and n = n_users = 0.
    ``scenario`` holds names from ``scenarios`` or integer codes into it.
    """
    k = _check_pos_int(k, "k")
    clip_size = _check_pos_int(clip_size, "clip_size")
    if len(set(scenarios)) != len(scenarios):
        raise ValueError(f"scenarios must be distinct, got {list(scenarios)}")
    p, t = _check_pair(pred, true)
    u = _check_index(user_index, p.size)
    s = _scenario_labels(scenario, p.size, scenarios)
    key = f"ndcg@{k}"
    out: dict[str, dict[str, float]] = {
        "overall": {
            "mae": user_mae(p, t, u),
            "rmse": rmse(p, t),
            key: user_ndcg(p, t, u, k=k),
            "n": int(p.size),
            "n_users": int(np.unique(u).size),
        }
    }
    for name in scenarios:
        m = s == name
        n = int(m.sum())
        out[name] = {
            "mae": mae(p[m], t[m]) if n else float("nan"),
            "rmse": rmse(p[m], t[m]) if n else float("nan"),
            key: clip_ndcg(p[m], t[m], k=k, clip_size=clip_size),
            "n": n,
            "n_users": int(np.unique(u[m]).size),
        }
    return out


# --------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------

def _check_boot_args(n_boot: Any, alpha: Any) -> int:
    n_boot = _check_pos_int(n_boot, "n_boot")
    if not isinstance(alpha, numbers.Real) or not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return n_boot


def _percentile_interval(stats_: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(stats_, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def bootstrap_ci(
    per_user_values: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-user values (e.g. per-user MAE).

    Users are the independent units, so they are what is resampled.
    Deterministic for a given seed. Empty input returns (nan, nan), matching
    ``clip_ndcg`` for a scenario with no ratings.
    """
    n_boot = _check_boot_args(n_boot, alpha)
    v = _as_1d_float(per_user_values, "per_user_values")
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // v.size)  # bound memory of the index matrix
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        means[s:s + b] = v[rng.integers(0, v.size, size=(b, v.size))].mean(axis=1)
    return _percentile_interval(means, alpha)


def bootstrap_metric_ci(
    pred: Any,
    true: Any,
    user_index: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of any metric, resampling USERS with replacement.

    A resampled user brings all of its ratings, in their original order, and
    users are laid out in draw order (which is what ``clip_ndcg`` sees). Each
    draw of a user gets a fresh user id (0..n_users-1), so a user drawn twice
    counts twice in per-user metrics such as ``user_mae``. ``metric_fn`` is
    called as ``metric_fn(pred, true, user_index)``; wrap flat metrics, e.g.
    ``lambda p, t, u: clip_ndcg(p, t)``. Meant for small cells (C-C has a few
    dozen ratings) whose point estimate alone hides the uncertainty.
    Deterministic for a seed; empty input returns (nan, nan).
    """
    n_boot = _check_boot_args(n_boot, alpha)
    values = bootstrap_metric_replicates(pred, true, user_index, metric_fn, n_boot=n_boot, seed=seed)
    if values.size and np.isnan(values).all():
        return float("nan"), float("nan")
    return _percentile_interval(values, alpha)


def bootstrap_metric_replicates(
    pred: Any,
    true: Any,
    user_index: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """The ``n_boot`` bootstrap values behind :func:`bootstrap_metric_ci` (same draws for a seed).

    Exposed so that callers can combine independent resamples, e.g. a stratified bootstrap of
    a mean over several seeds' splits (resample users within each split, average the
    replicates). Empty input gives ``n_boot`` NaNs.
    """
    n_boot = _check_pos_int(n_boot, "n_boot")
    if not callable(metric_fn):
        raise ValueError(f"metric_fn must be callable, got {metric_fn!r}")
    p, t = _check_pair(pred, true, allow_empty=True)
    u = _check_index(user_index, p.size)
    if p.size == 0:
        return np.full(n_boot, np.nan)
    groups = _groups(u)
    order = np.concatenate(groups)  # rows grouped by user, in-user order kept
    counts = np.array([g.size for g in groups])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_users = counts.size
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(n_boot, n_users))
    new_ids = np.arange(n_users)
    values = np.empty(n_boot)
    for b in range(n_boot):
        d = draws[b]
        lengths = counts[d]
        total = int(lengths.sum())
        # positions into `order`: start of each drawn user + 0..len-1
        offsets = np.repeat(starts[d] - (np.cumsum(lengths) - lengths), lengths)
        rows = order[offsets + np.arange(total)]
        values[b] = metric_fn(p[rows], t[rows], np.repeat(new_ids, lengths))
    return values


def paired_test(a: Any, b: Any) -> dict[str, float]:
    """Paired comparison of two methods on the same units (a - b).

    Returns ``mean_diff`` (mean of a - b), ``wilcoxon_p`` (two-sided Wilcoxon
    signed-rank; zero differences are dropped; all-zero differences give 1.0),
    ``ttest_p`` (two-sided paired t-test; identical inputs give 1.0) and ``n``.

    Which to read: per-user errors on the same split are many, skewed and
    heavy-tailed units, so use the Wilcoxon test. Per-seed metric values are
    few (3-10) and roughly normal, so use the t-test; with n <= 5 the Wilcoxon
    test cannot reach p < 0.05 at all. Per-user tests within one seed ignore
    seed-to-seed variation (the paper warns results vary with the seed, A.3),
    so a claim that one method beats another needs the per-seed comparison.
    """
    x = _as_1d_float(a, "a")
    y = _as_1d_float(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError(f"paired_test needs at least 2 paired units, got {x.size}")
    d = x - y
    if not np.any(d != 0):
        w_p = t_p = 1.0
    else:
        w_p = float(stats.wilcoxon(x, y).pvalue)
        if np.all(d == d[0]):
            t_p = 0.0  # constant non-zero difference: zero variance, t is infinite
        else:
            t_p = float(stats.ttest_rel(x, y).pvalue)
    return {"mean_diff": float(np.mean(d)), "wilcoxon_p": w_p, "ttest_p": t_p, "n": int(x.size)}
