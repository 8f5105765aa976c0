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
* Ranking is by prediction, descending, and **ties are averaged** (McSherry &
  Najork, ECIR 2008): a group of equal predictions contributes, at each rank it
  occupies, the mean gain of its items -- the expected DCG over uniformly random
  orders of the ties. A constant predictor therefore scores the NDCG of a random
  order, not of the query's time order, and the score does not depend on the
  order the items are listed in. The same expectation is taken for Precision@k
  and AP@k (:func:`ranking_metrics`). (Before this rule, ties kept list order,
  which let a constant predictor score the NDCG of the time order.)
* DCG uses the true ratings *in predicted order*. The reference code's helper
  re-sorts the true ratings of the predicted top-k before discounting, so it
  only scores top-k membership; we score the order inside the top-k too,
  which is what Eq. 15 says.
* IDCG uses the k largest true ratings of the whole list. A list shorter than
  k uses all of its items (k is effectively ``min(k, len)`` for DCG and IDCG).
* If IDCG == 0 (every true rating is 0, so every gain is 0) NDCG is 1.0: every
  order is ideal. Negative true ratings are rejected, since their negative
  gains make NDCG unbounded.
* ``user_ndcg`` with ``min_ratings=2`` is the within-user NDCG of a scenario
  cell: each user's own query ratings in the cell are ranked, users with one
  rating (nothing to order) are left out.
* ``clip_ndcg`` (A.2.3, the paper's per-scenario NDCG): the clip length is not
  given by the paper or its code; the default is 5 (the query size). The
  trailing partial clip is kept and weighs as much as a full clip. It
  concatenates users inside a clip, so it also scores how predictions of
  different users compare; it is kept to compare with the paper.
* Relevance metrics (``precision@k``, ``ndcg_rel@k`` with binary gains,
  ``map@k``): relevant = true rating >= ``threshold`` (default 4); users
  without a relevant item are left out (no order can help them); a list
  shorter than k is ranked whole: Precision@k divides by min(k, length) and
  AP@k by min(k, relevant items).
* ``holm`` adjusts a family of p-values; ``paired_test_by_stratum`` tests
  per-user differences one seed at a time and combines the seeds (Stouffer);
  ``paired_test_by_unit`` first averages each user's differences over the
  seeds that hold the user, then tests once over the unique users.
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
    "bootstrap_clip_ndcg_replicates",
    "paired_test",
    "paired_test_by_stratum",
    "paired_test_by_unit",
    "holm",
    "per_user_scores",
    "ranking_metrics",
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

def _tie_groups(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank each row by prediction, descending, and find its groups of tied predictions.

    Returns ``order`` (row-wise positions of the items, best first), ``flat`` (a global id of
    each ranked position's tie group, usable with ``np.bincount``), ``size`` (the size of each
    global group id) and ``start`` (the first rank of each position's group).
    """
    n, length = p.shape
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    new = np.ones_like(ps, dtype=bool)
    new[:, 1:] = ps[:, 1:] != ps[:, :-1]
    gid = np.cumsum(new, axis=1) - 1
    flat = gid + (np.arange(n) * length)[:, None]
    size = np.bincount(flat.ravel(), minlength=n * length)
    start = np.maximum.accumulate(np.where(new, np.arange(length), 0), axis=1)
    return order, flat, size, start


def _tie_mean(values: np.ndarray, order: np.ndarray, flat: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per ranked position, the mean of ``values`` over its tie group (the expected value at
    that position when ties are ordered uniformly at random)."""
    ranked = np.take_along_axis(values, order, axis=1)
    sums = np.bincount(flat.ravel(), weights=ranked.ravel(), minlength=size.size)
    return (sums / np.maximum(size, 1))[flat]


def _ndcg_rows(p: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """Tie-averaged NDCG@k of each row of equal-length, validated, non-empty lists (vectorised).

    See the module docstring for the rules.
    """
    kk = min(k, p.shape[1])
    discount = np.log2(np.arange(2, kk + 2))
    order, flat, size, _ = _tie_groups(p)
    gain = _tie_mean(2.0 ** t - 1.0, order, flat, size)[:, :kk]
    ideal = -np.sort(-t, axis=1)[:, :kk]
    idcg = ((2.0 ** ideal - 1.0) / discount).sum(axis=1)
    dcg = (gain / discount).sum(axis=1)
    out = np.ones(p.shape[0])  # IDCG == 0: all gains are zero, any order is ideal
    pos = idcg > 0
    out[pos] = dcg[pos] / idcg[pos]
    return out


def _relevance_rows(p: np.ndarray, rel: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Tie-averaged Precision@k, binary NDCG@k and AP@k of each row (``rel`` is 0/1).

    Each value is its expectation over uniformly random orders of tied predictions
    (McSherry & Najork 2008). A row without a relevant item gets NaN for all three.
    """
    n, length = p.shape
    kk = min(k, length)
    order, flat, size, start = _tie_groups(p)
    m = _tie_mean(rel, order, flat, size)  # E[rel at rank i]
    n_rel = rel.sum(axis=1)
    precision = m[:, :kk].sum(axis=1) / kk
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    idcg = np.cumsum(discount)[np.minimum(n_rel, kk).astype(int) - 1]
    ndcg = (m[:, :kk] * discount).sum(axis=1) / np.where(n_rel > 0, idcg, 1.0)
    # AP@k = 1/min(R, k) * sum_{i<=k} rel_i * P@i; E[rel_i * sum_{j<=i} rel_j] =
    # m_i * (relevant in earlier groups) + m_i + (earlier ranks in i's group) * r(r-1)/(g(g-1))
    ranked = np.take_along_axis(rel, order, axis=1)
    before = np.concatenate([np.zeros((n, 1)), np.cumsum(ranked, axis=1)[:, :-1]], axis=1)
    rel_before_group = np.take_along_axis(before, start, axis=1)
    g = size[flat].astype(float)
    r = m * g
    same = np.where(g > 1, r * (r - 1.0) / np.maximum(g * (g - 1.0), 1.0), 0.0)
    ranks = np.arange(1, length + 1)
    joint = m * rel_before_group + m + (ranks - 1 - start) * same
    ap = (joint[:, :kk] / ranks[:kk]).sum(axis=1) / np.maximum(np.minimum(n_rel, kk), 1)
    none = n_rel == 0
    for v in (precision, ndcg, ap):
        v[none] = np.nan
    return {"precision": precision, "ndcg_rel": ndcg, "map": ap}


def _ndcg(p: np.ndarray, t: np.ndarray, k: int) -> float:
    """NDCG@k of one validated, non-empty list."""
    return float(_ndcg_rows(p[None, :], t[None, :], k)[0])


def _rows_of_lists(
    lists: list[np.ndarray], fn: Callable[[np.ndarray], np.ndarray], min_len: int = 1
) -> np.ndarray:
    """``fn(rows)`` of each row-index list, batching lists of equal length; NaN below ``min_len``."""
    out = np.full(len(lists), np.nan)
    lengths = np.array([g.size for g in lists], dtype=int)
    for n in np.unique(lengths):
        if n < min_len:
            continue
        which = np.flatnonzero(lengths == n)
        out[which] = fn(np.stack([lists[i] for i in which]))
    return out


def _ndcg_of_lists(p: np.ndarray, t: np.ndarray, lists: list[np.ndarray], k: int, min_len: int = 1) -> np.ndarray:
    """NDCG@k of each row-index list (NaN for lists shorter than ``min_len``)."""
    return _rows_of_lists(lists, lambda rows: _ndcg_rows(p[rows], t[rows], k), min_len)


def ndcg_at_k(pred: Any, true: Any, k: int = 3) -> float:
    """NDCG@k of ONE ranked list (paper Eq. 14-15), tie-averaged.

    Items are ranked by ``pred`` descending; a group of equal predictions contributes its
    mean gain at each of its ranks (the expected DCG over random orders of the ties), so a
    constant predictor scores the NDCG of a random order, not of the list order. The true
    ratings are used in predicted order (unlike the reference code, which re-sorts them
    inside the top-k). IDCG takes the k largest true ratings; a list shorter than k uses all
    its items; IDCG == 0 gives 1.0. Raises ValueError on empty input.
    """
    k = _check_pos_int(k, "k")
    p, t = _check_pair(pred, true)
    _check_ratings_nonneg(t)
    return _ndcg(p, t, k)


def user_ndcg(pred: Any, true: Any, user_index: Any, k: int = 3, min_ratings: int = 1) -> float:
    """Paper Eq. 14: mean over users of NDCG@k on each user's query list.

    Only users with at least ``min_ratings`` ratings count (``min_ratings=2`` is the
    within-user NDCG of a scenario cell: a single rating has no order to score). NaN when
    no user qualifies.
    """
    k = _check_pos_int(k, "k")
    min_ratings = _check_pos_int(min_ratings, "min_ratings")
    p, t = _check_pair(pred, true, allow_empty=True)
    u = _check_index(user_index, p.size)
    _check_ratings_nonneg(t)
    if p.size == 0:
        return float("nan")
    return _nanmean(_ndcg_of_lists(p, t, _groups(u), k, min_ratings))


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number (a rating), got {threshold!r}")
    return float(threshold)


def _parse_metric(metric: Any) -> tuple[str, int | None]:
    """``"mae"`` -> ("mae", None); ``"ndcg@3"`` -> ("ndcg", 3); unknown names are rejected."""
    names = ("mae", "mse", "ndcg", "precision", "ndcg_rel", "map")
    text = str(metric)
    base, _, kk = text.partition("@")
    if base not in names or (base in ("mae", "mse")) != (kk == ""):
        raise ValueError(
            f"unknown metric {metric!r}; expected 'mae', 'mse' or one of "
            f"{', '.join(n + '@K' for n in names[2:])} with an integer K >= 1"
        )
    if kk == "":
        return base, None
    if not kk.isdigit() or int(kk) < 1:
        raise ValueError(f"metric {metric!r}: the cut-off after '@' must be an integer >= 1")
    return base, int(kk)


def per_user_scores(
    pred: Any,
    true: Any,
    user_index: Any,
    metric: str,
    *,
    threshold: float = 4.0,
    min_ratings: int = 1,
) -> np.ndarray:
    """One value per user (users in order of first appearance), NaN where a user does not count.

    ``metric``: ``mae`` / ``mse`` (the user's mean absolute / squared error),
    ``ndcg@K`` (graded, tie-averaged NDCG@K of the user's list), or the relevance metrics
    ``precision@K``, ``ndcg_rel@K`` (binary gains), ``map@K`` with relevance
    ``true >= threshold``. Users with fewer than ``min_ratings`` ratings are NaN for the
    ranking metrics; users without a relevant item are NaN for the relevance metrics
    (no order can help them, so they are left out rather than scored 0 or 1).
    """
    base, k = _parse_metric(metric)
    min_ratings = _check_pos_int(min_ratings, "min_ratings")
    threshold = _check_threshold(threshold)
    p, t = _check_pair(pred, true, allow_empty=True)
    u = _check_index(user_index, p.size)
    if p.size == 0:
        return np.zeros(0)
    groups = _groups(u)
    if base in ("mae", "mse"):
        pos = np.empty(p.size, dtype=np.int64)
        for i, g in enumerate(groups):
            pos[g] = i
        err = np.abs(p - t) if base == "mae" else (p - t) ** 2
        return np.bincount(pos, weights=err, minlength=len(groups)) / np.bincount(pos, minlength=len(groups))
    if base == "ndcg":
        _check_ratings_nonneg(t)
        return _ndcg_of_lists(p, t, groups, k, min_ratings)
    rel = (t >= threshold).astype(float)
    return _rows_of_lists(groups, lambda rows: _relevance_rows(p[rows], rel[rows], k)[base], min_ratings)


def ranking_metrics(
    pred: Any,
    true: Any,
    user_index: Any,
    ks: Sequence[int] = (3, 5),
    threshold: float = 4.0,
    min_ratings: int = 2,
) -> dict[str, float]:
    """Per-user ranking metrics of query lists, averaged over users.

    ``precision@K``, ``ndcg_rel@K`` (binary NDCG) and ``map@K`` for each K in ``ks``,
    relevance ``true >= threshold``, all tie-averaged; ``n_users_ranked`` (users with at
    least ``min_ratings`` ratings) and ``n_users_relevant`` (those of them with a relevant
    item: the users the three metrics average over). A list shorter than K is ranked whole
    and Precision@K divides by min(K, length); MAP@K divides by min(K, relevant items).
    """
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
        raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks!r}")
    ks = [_check_pos_int(k, "ks") for k in ks]
    min_ratings = _check_pos_int(min_ratings, "min_ratings")
    threshold = _check_threshold(threshold)
    p, t = _check_pair(pred, true, allow_empty=True)
    u = _check_index(user_index, p.size)
    groups = _groups(u) if p.size else []
    lengths = np.array([g.size for g in groups], dtype=int)
    rel = (t >= threshold).astype(float)
    ranked = lengths >= min_ratings
    has_rel = np.array([rel[g].any() for g in groups], dtype=bool) if groups else np.zeros(0, bool)
    out: dict[str, float] = {}
    for k in ks:
        rows = {
            name: _rows_of_lists(groups, lambda r, name=name: _relevance_rows(p[r], rel[r], k)[name], min_ratings)
            for name in ("precision", "ndcg_rel", "map")
        }
        for name, v in rows.items():
            out[f"{name}@{k}"] = _nanmean(v)
    out["n_users_ranked"] = int(ranked.sum())
    out["n_users_relevant"] = int((ranked & has_rel).sum())
    return out


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
    ranking_ks: Sequence[int] = (3, 5),
    threshold: float = 4.0,
    min_ratings: int = 2,
) -> dict[str, dict[str, float]]:
    """The paper's Table 1 row for one run, and more: overall plus one cell per scenario.

    Every cell: ``mae``, ``rmse``, ``ndcg@k`` = the within-user NDCG@k (mean over users
    with at least ``min_ratings`` query ratings in the cell of NDCG@k of their own list),
    and the relevance metrics of :func:`ranking_metrics` (``precision@K``, ``ndcg_rel@K``,
    ``map@K`` for K in ``ranking_ks``, relevance ``true >= threshold``), with ``n``
    (ratings), ``n_users``, ``n_users_ranked`` and ``n_users_relevant``.
    ``overall``: mae = ``user_mae`` (Eq. 13), ndcg@k is Eq. 14, rmse is flat over all
    ratings (the paper has no RMSE). Scenario cells (A.2.3): flat ``mae``/``rmse`` over
    the cell's ratings and, besides, the paper's ``clip_ndcg@k`` (:func:`clip_ndcg`, pairs in
    the given order); overall has no clip NDCG (NaN). An empty cell gets NaN metrics and
    zero counts. ``scenario`` holds names from ``scenarios`` or integer codes into it.
    """
    k = _check_pos_int(k, "k")
    clip_size = _check_pos_int(clip_size, "clip_size")
    min_ratings = _check_pos_int(min_ratings, "min_ratings")
    if len(set(scenarios)) != len(scenarios):
        raise ValueError(f"scenarios must be distinct, got {list(scenarios)}")
    p, t = _check_pair(pred, true)
    u = _check_index(user_index, p.size)
    s = _scenario_labels(scenario, p.size, scenarios)
    _check_ratings_nonneg(t)
    key = f"ndcg@{k}"

    def cell(m: np.ndarray, overall: bool) -> dict[str, float]:
        n = int(m.sum())
        pm, tm, um = p[m], t[m], u[m]
        ranking = ranking_metrics(pm, tm, um, ks=ranking_ks, threshold=threshold, min_ratings=min_ratings)
        nan = float("nan")
        out = {
            "mae": (user_mae(pm, tm, um) if overall else mae(pm, tm)) if n else nan,
            "rmse": rmse(pm, tm) if n else nan,
            key: user_ndcg(pm, tm, um, k=k, min_ratings=min_ratings),
            f"clip_{key}": nan if overall else clip_ndcg(pm, tm, k=k, clip_size=clip_size),
        }
        out.update({name: v for name, v in ranking.items() if not name.startswith("n_")})
        out.update({
            "n": n,
            "n_users": int(np.unique(um).size),
            "n_users_ranked": ranking["n_users_ranked"],
            "n_users_relevant": ranking["n_users_relevant"],
        })
        return out

    result = {"overall": cell(np.ones(p.size, dtype=bool), True)}
    for name in scenarios:
        result[name] = cell(s == name, False)
    return result


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


def paired_test_by_stratum(a: Sequence[Any], b: Sequence[Any]) -> dict[str, Any]:
    """Paired per-unit test (a - b) over several strata (seeds), one Wilcoxon test per stratum.

    ``a[s]`` and ``b[s]`` hold the paired units (e.g. per-user errors) of stratum ``s``. A
    user is a test user in several seeds' splits, so pooling the strata would count one
    person several times as independent evidence. Instead each stratum gets its own
    one-sided Wilcoxon signed-rank test (alternative a > b, as a mid-p so that the discrete
    statistic's extreme ends do not give infinite z; zero differences dropped; all zero:
    z = 0), its p is turned into z_s = Phi^-1(1 - p_s), and the z's are combined by
    Stouffer's method with equal weights, Z = sum z_s / sqrt(S); the two-sided p is
    2 (1 - Phi(|Z|)). Direction is kept (a stratum favouring b cancels one favouring a),
    which Fisher's method on two-sided p's would not do. The strata must be independent for
    the combined p to be exact; seeds' splits share some users, so it is still optimistic
    when the same users recur, but it no longer multiplies the evidence by the seeds.

    Returns ``mean_diff`` (mean over strata of each stratum's mean difference),
    ``stouffer_z``, ``p`` (two-sided), ``per_stratum`` (n, mean_diff, one-sided mid-p) and
    ``n`` (units in all). Strata with fewer than 2 units are skipped; at least one is needed.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must have the same number of strata, got {len(a)} and {len(b)}")
    zs: list[float] = []
    per: list[dict[str, float]] = []
    diffs: list[float] = []
    for s, (xa, xb) in enumerate(zip(a, b)):
        x = _as_1d_float(xa, f"a[{s}]")
        y = _as_1d_float(xb, f"b[{s}]")
        if x.shape != y.shape:
            raise ValueError(f"stratum {s}: a and b must have the same shape, got {x.shape} and {y.shape}")
        if x.size < 2:
            continue
        d = x - y
        if not np.any(d != 0):
            p_one = 0.5
        else:
            # mid-p, (P(T > t) + P(T >= t)) / 2: a discrete statistic's one-sided p is 1 at the
            # far end (e.g. every difference negative), which would make z = -inf
            p_ge = float(stats.wilcoxon(x, y, alternative="greater").pvalue)
            p_le = float(stats.wilcoxon(x, y, alternative="less").pvalue)
            p_one = (p_ge + 1.0 - p_le) / 2.0
        z = float(stats.norm.isf(min(max(p_one, 1e-300), 1.0 - 1e-16)))
        zs.append(z)
        diffs.append(float(d.mean()))
        per.append({"n": int(x.size), "mean_diff": float(d.mean()), "p_greater_mid": p_one})
    if not zs:
        raise ValueError("paired_test_by_stratum needs a stratum with at least 2 paired units")
    z_all = float(np.sum(zs) / np.sqrt(len(zs)))
    return {
        "mean_diff": float(np.mean(diffs)),
        "stouffer_z": z_all,
        "p": float(min(1.0, 2.0 * stats.norm.sf(abs(z_all)))),
        "n": int(sum(r["n"] for r in per)),
        "n_strata": len(per),
        "per_stratum": per,
    }


def _as_1d_with_nan(x: Any, name: str) -> np.ndarray:
    """A 1-D float array in which NaN (a unit without a value) is allowed, infinity is not."""
    try:
        arr = np.asarray(x, dtype=float).reshape(-1) if len(x) else np.zeros(0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {x!r:.80}") from exc
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains an infinite value")
    return arr


def paired_test_by_unit(keys: Sequence[Sequence[Any]], a: Sequence[Any], b: Sequence[Any]) -> dict[str, Any]:
    """Paired test (a - b) over unique units (users) that recur across strata (seeds).

    ``keys[s]`` names the units of stratum ``s`` and ``a[s]``, ``b[s]`` hold their paired values
    (NaN in either: the unit does not count in that stratum). A user who is a test user in
    several seeds is ONE unit: its differences are averaged over the seeds where it has values,
    and the tests run once over the unique users -- a two-sided Wilcoxon signed-rank test
    (``p``, zero differences dropped, all zero: 1.0) and a one-sample t-test of the user means
    against 0 (``ttest_p``; all equal non-zero: 0.0). Unlike combining one test per seed
    (:func:`paired_test_by_stratum`), no user contributes more than one independent term. The
    seeds' training randomness is averaged into each user's difference, not tested: the
    per-seed comparison (:func:`paired_test`) is the test of that.

    Returns ``mean_diff`` (mean over unique users of their mean difference), ``p``,
    ``ttest_p``, ``n`` (unique users) and ``n_pairs`` (user-seed pairs used).
    """
    if not (len(keys) == len(a) == len(b)):
        raise ValueError(f"keys, a and b must have the same number of strata, got {len(keys)}, {len(a)} and {len(b)}")
    sums: dict[Any, float] = {}
    counts: dict[Any, int] = {}
    for s, (ks, xa, xb) in enumerate(zip(keys, a, b)):
        x, y = _as_1d_with_nan(xa, f"a[{s}]"), _as_1d_with_nan(xb, f"b[{s}]")
        if not (len(ks) == x.size == y.size):
            raise ValueError(f"stratum {s}: keys, a and b must have the same length, got {len(ks)}, {x.size} and {y.size}")
        d = x - y
        for key, v in zip(ks, d):
            if np.isfinite(v):
                sums[key] = sums.get(key, 0.0) + float(v)
                counts[key] = counts.get(key, 0) + 1
    if len(sums) < 2:
        raise ValueError(f"paired_test_by_unit needs at least 2 units with values, got {len(sums)}")
    d = np.asarray([sums[k] / counts[k] for k in sums])
    if not np.any(d != 0):
        w_p = t_p = 1.0
    else:
        w_p = float(stats.wilcoxon(d).pvalue)
        t_p = 0.0 if np.all(d == d[0]) else float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"mean_diff": float(d.mean()), "p": w_p, "ttest_p": t_p, "n": int(d.size),
            "n_pairs": int(sum(counts.values()))}


def holm(pvalues: Any) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control, any dependence).

    Sorted ascending, the i-th smallest of m p-values becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. NaN entries (tests not run) stay NaN and are
    not counted in m. Reject at level alpha where the adjusted p <= alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    ok = np.isfinite(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        bad = p[ok][(p[ok] < 0) | (p[ok] > 1)][0]
        raise ValueError(f"p-values must be in [0, 1], got {bad}")
    out = np.full(p.shape, np.nan)
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(vals[order] * (m - np.arange(m))))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def bootstrap_clip_ndcg_replicates(
    pred: Any, true: Any, user_index: Any, k: int = 3, clip_size: int = 5, n_boot: int = 1000, seed: int = 0,
    chunk: int = 64,
) -> np.ndarray:
    """``bootstrap_metric_replicates(pred, true, user_index, clip_ndcg)`` computed in batches.

    The same draws for a seed and the same values (up to float rounding), without a Python
    call per replicate: every replicate's resampled users are laid out in draw order, cut
    into clips, and all clips of ``chunk`` replicates are scored at once.
    """
    k = _check_pos_int(k, "k")
    clip_size = _check_pos_int(clip_size, "clip_size")
    n_boot = _check_pos_int(n_boot, "n_boot")
    chunk = _check_pos_int(chunk, "chunk")
    p, t = _check_pair(pred, true, allow_empty=True)
    u = _check_index(user_index, p.size)
    if p.size == 0:
        return np.full(n_boot, np.nan)
    _check_ratings_nonneg(t)
    groups = _groups(u)
    order = np.concatenate(groups)
    counts = np.array([g.size for g in groups])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_users = counts.size
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(n_boot, n_users))
    values = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        d = draws[b0:b0 + chunk]
        nb = d.shape[0]
        lengths = counts[d].ravel()
        total = int(lengths.sum())
        offsets = np.repeat(starts[d.ravel()] - (np.cumsum(lengths) - lengths), lengths)
        rows = order[offsets + np.arange(total)]
        tot = counts[d].sum(axis=1)
        rep = np.repeat(np.arange(nb), tot)
        pos = np.arange(total) - np.repeat(np.cumsum(tot) - tot, tot)
        n_full = tot // clip_size
        full = pos < (n_full * clip_size)[rep]
        sums = np.zeros(nb)
        if full.any():
            fr = rows[full]
            scores = _ndcg_rows(p[fr].reshape(-1, clip_size), t[fr].reshape(-1, clip_size), k)
            sums += np.bincount(np.repeat(np.arange(nb), n_full), weights=scores, minlength=nb)
        rem = tot - n_full * clip_size
        part_rows, part_rep = rows[~full], rep[~full]
        for r in np.unique(rem[rem > 0]):
            which = np.flatnonzero(rem == r)
            sel = np.isin(part_rep, which)
            pr = part_rows[sel]
            sums[which] += _ndcg_rows(p[pr].reshape(-1, r), t[pr].reshape(-1, r), k)
        values[b0:b0 + nb] = sums / (n_full + (rem > 0))
    return values
