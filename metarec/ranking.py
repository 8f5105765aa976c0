"""Full-catalogue ranking: each test user's relevant query items ranked among all candidate items.

The MAMO protocol ranks only a user's 5 query items (NDCG@3). Later cold-start papers (TaNP,
HIRE, RecBole-MetaRec) also rank against the catalogue, so this module scores, for every test
user, **every catalogue item the user has not rated in support** and reports Recall@k and
NDCG@k (k in {10, 20}) of the user's *relevant* query items (true rating >= ``threshold``):

* ``overall``: candidates = every item of the protocol's rating table; relevant = all relevant
  query items; users = every test user with at least one.
* per scenario ``W-W``, ``W-C``, ``C-W``, ``C-C``: the users of that user state, the candidates
  of that item state (warm or cold items, the protocol's item rule), the relevant query items of
  that item state.

Details that change numbers, stated once: binary relevance (NDCG gain 1 per relevant item,
``log2(rank + 1)`` discount, IDCG from ``min(k, #relevant)`` hits); ``Recall@k = hits / #relevant``;
the other query items and every unrated item count as non-relevant (the protocol keeps 20 ratings
per user, so some "unrated" items were rated in the raw data -- the usual full-ranking
convention); raw scores are ranked (no clipping to the rating range, which would create ties);
remaining ties are broken by a seeded random order of the candidates, never by item id.
Scores come from the learner's own ``adapt_and_predict`` on batches whose query is the candidate
list (:func:`metarec.tasks.candidate_batches`); the metrics are plain numpy.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from metarec.schema import SCENARIOS
from metarec.tasks import TaskSet, candidate_batches

KS: tuple[int, ...] = (10, 20)
#: Cells of the ranking table, as in the rating tables.
CELLS: tuple[str, ...] = ("overall", *SCENARIOS)


def item_states(split: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(rated, cold)`` per item-table row, reconstructed from the split's tasks.

    The protocol calls an item cold when it has at most ``item_cold_max_ratings`` ratings among
    the kept ratings of all users -- which are exactly the support and query ratings of the
    training, validation and test tasks. The result is checked against the scenario codes the
    protocol stored for every query rating.
    """
    parts = [t for t in (split.train, getattr(split, "validation", None), split.test) if t is not None]
    n_items = len(split.test.items)
    counts = np.zeros(n_items, dtype=np.int64)
    for t in parts:
        for items, mask in ((t.support_items, t.support_mask), (t.query_items, t.query_mask)):
            counts += np.bincount(items[mask].numpy(), minlength=n_items)
    limit = split.info.get("protocol", {}).get("item_cold_max_ratings")
    if limit is None:
        raise ValueError("catalogue ranking needs the protocol's item_cold_max_ratings in split.info['protocol']")
    rated, cold = counts > 0, (counts > 0) & (counts <= int(limit))
    for t in parts:
        m = t.query_mask.numpy()
        stored = (t.query_scenario.numpy()[m] % 2).astype(bool)
        if not np.array_equal(cold[t.query_items.numpy()[m]], stored):
            raise ValueError("catalogue ranking: item states do not match the protocol's scenario codes")
    return rated, cold


def catalogue_scores(
    learner: Any, tasks: TaskSet, candidates: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """``[N, C]`` raw scores of every candidate item for every task's user (float32, CPU)."""
    out = np.empty((len(tasks), len(candidates)), dtype=np.float32)
    items = torch.as_tensor(candidates, dtype=torch.long)
    with torch.no_grad():
        for idx, batch in candidate_batches(tasks, items, batch_size, device=learner.device):
            out[idx.numpy()] = learner.adapt_and_predict(batch).float().cpu().numpy()
    return out


def rank_metrics(
    scores: np.ndarray, relevant: np.ndarray, allowed: np.ndarray, ks: Sequence[int] = KS,
    *, rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Per-user ``recall@k`` and ``ndcg@k`` from ``scores``, ``relevant`` and ``allowed`` (all ``[U, C]``).

    Candidates that are not ``allowed`` (the user's support items, other item states) are never
    ranked; users without a relevant allowed item get NaN. Ties: seeded random order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool) & allowed
    n_rel = relevant.sum(1)
    U, C = scores.shape
    order = (rng or np.random.default_rng(0)).permutation(C)  # tie-break: a random, not id, order
    s = np.where(allowed, scores, -np.inf)[:, order]
    rel = relevant[:, order]
    kmax = min(max(ks), C)
    top = np.argpartition(-s, kmax - 1, axis=1)[:, :kmax] if kmax < C else np.tile(np.arange(C), (U, 1))
    top_scores = np.take_along_axis(s, top, 1)
    # sort the top block: by score descending, ties by the random position (stable on position)
    sub = np.lexsort((top, -top_scores), axis=1)
    top = np.take_along_axis(top, sub, 1)
    hits = np.take_along_axis(rel, top, 1) & np.isfinite(np.take_along_axis(s, top, 1))
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            kk = min(k, kmax)
            h = hits[:, :kk]
            dcg = (h * discount[:kk]).sum(1)
            ideal = np.cumsum(discount[:kk])[np.clip(np.minimum(n_rel, kk) - 1, 0, None)]
            out[f"recall@{k}"] = np.where(n_rel > 0, h.sum(1) / n_rel, np.nan)
            out[f"ndcg@{k}"] = np.where(n_rel > 0, dcg / ideal, np.nan)
    return out


def catalogue_ranking(
    learner: Any,
    split: Any,
    *,
    threshold: float = 4.0,
    ks: Sequence[int] = KS,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """The full-catalogue ranking metrics of ``learner`` on ``split.test``, per cell.

    Returns ``{"cells": {cell: {"recall@10": mean, ..., "n_users": int}}, "candidates": {...},
    "threshold": ..., "ks": [...]}``; means are over the cell's users with a relevant item.
    """
    test = split.test
    rated, cold = item_states(split)
    cand = np.nonzero(rated)[0]
    scores = catalogue_scores(learner, test, cand, batch_size=batch_size)
    pos = np.full(len(rated), -1, dtype=np.int64)
    pos[cand] = np.arange(len(cand))
    n = len(test)
    support = np.zeros((n, len(cand)), dtype=bool)
    s_items, s_mask = test.support_items.numpy(), test.support_mask.numpy()
    rows = np.repeat(np.arange(n), s_items.shape[1])
    ok = s_mask.ravel() & (pos[s_items.ravel()] >= 0)
    support[rows[ok], pos[s_items.ravel()[ok]]] = True
    relevant = np.zeros_like(support)
    q_items, q_mask = test.query_items.numpy(), test.query_mask.numpy()
    good = q_mask & (test.query_ratings.numpy() >= threshold)
    qrows = np.repeat(np.arange(n), q_items.shape[1])
    okq = good.ravel() & (pos[q_items.ravel()] >= 0)
    relevant[qrows[okq], pos[q_items.ravel()[okq]]] = True
    scen = test.query_scenario.numpy()
    user_cold = np.array([bool((scen[i][q_mask[i]] >= 2).any()) for i in range(n)])
    cand_cold = cold[cand]
    rng_seed = np.random.SeedSequence([int(seed), 7919]).generate_state(1)[0]
    cells: dict[str, Any] = {}
    for cell in CELLS:
        if cell == "overall":
            users, items_ok = np.arange(n), np.ones(len(cand), dtype=bool)
        else:
            c = SCENARIOS.index(cell)
            users = np.nonzero(user_cold == bool(c >= 2))[0]
            items_ok = cand_cold == bool(c % 2)
        allowed = ~support[users] & items_ok[None, :]
        values = rank_metrics(
            scores[users], relevant[users], allowed, ks, rng=np.random.default_rng(rng_seed)
        )
        has = np.isfinite(next(iter(values.values())))
        entry: dict[str, Any] = {name: (float(np.mean(v[has])) if has.any() else None) for name, v in values.items()}
        entry["n_users"] = int(has.sum())
        entry["n_candidates"] = int(items_ok.sum())
        cells[cell] = entry
    return {
        "cells": cells,
        "threshold": threshold,
        "ks": list(ks),
        "candidates": {"all": int(len(cand)), "warm": int((~cand_cold).sum()), "cold": int(cand_cold.sum())},
        "what": "relevant query items (rating >= threshold) ranked among all catalogue items of the "
                "cell's item state that the user has not rated in support",
    }


def aggregate_catalogue(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Mean and std (ddof=1) over seeds of every catalogue metric of one method's runs (None if none)."""
    recs = [r["catalogue_ranking"] for r in runs if r.get("catalogue_ranking")]
    if not recs:
        return None
    out: dict[str, Any] = {"n_seeds": len(recs), "cells": {}}
    for cell in recs[0]["cells"]:
        entry: dict[str, Any] = {}
        for name in recs[0]["cells"][cell]:
            if name.startswith("n_"):
                continue
            v = np.array([np.nan if r["cells"][cell][name] is None else r["cells"][cell][name] for r in recs], float)
            f = v[np.isfinite(v)]
            entry[name] = {
                "mean": float(f.mean()) if f.size else None,
                "std": float(f.std(ddof=1)) if f.size > 1 else None,
                "values": [None if not np.isfinite(x) else float(x) for x in v],
            }
        entry["n_users_per_seed"] = [r["cells"][cell]["n_users"] for r in recs]
        out["cells"][cell] = entry
    return out


__all__ = ["CELLS", "KS", "aggregate_catalogue", "catalogue_ranking", "catalogue_scores", "item_states", "rank_metrics"]
