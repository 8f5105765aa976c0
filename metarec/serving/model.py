"""A fitted model that recommends to new users: adapt to their first ratings, score the catalogue.

:class:`RecommenderModel` wraps any registered learner with no method-specific code. Each
request becomes the :class:`~metarec.tasks.TaskBatch` the benchmark feeds
:meth:`~metarec.learner.Learner.adapt_and_predict`: the support set is the user's ratings (in
the order given, oldest first), the query is the candidate items with NaN ratings (a learner
never reads query ratings at prediction). A user with no ratings gets one padded support slot
with ``support_mask`` False, which every learner must ignore (the test suite checks that each
registered learner does), so 0, 1 or 500 ratings all go through the same path.
"""

from __future__ import annotations

import math
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from metarec.schema import FeatureSchema, scenario_code
from metarec.serving.catalogue import Catalogue, UserFeaturePolicy, encode_user, stack_rows
from metarec.tasks import TaskBatch


class RecommendError(ValueError):
    """A request the model cannot answer; ``field`` names the offending part (``ratings[3].item``)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UnknownItemError(RecommendError):
    """An item id that is not in the model's catalogue."""


class RatingRangeError(RecommendError):
    """A rating outside the model's rating range (or not a number)."""


@dataclass
class Recommendation:
    """Items for one user, best first: ids, predicted ratings, ranks (1 = best), states, titles.

    Items are ranked by the model's raw output; ``predicted`` is clipped to the rating range
    like the benchmark's predictions, so two items shown at the top rating keep their order.
    """

    item_ids: list[str]
    predicted: list[float]
    ranks: list[int]
    states: list[str]
    titles: list[str | None]
    n_ratings_used: int
    n_candidates: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: one entry per item plus what was used."""
        return {
            "items": [
                {"rank": r, "item": i, "predicted_rating": p, "state": s, **({"title": t} if t is not None else {})}
                for r, i, p, s, t in zip(self.ranks, self.item_ids, self.predicted, self.states, self.titles)
            ],
            "n_ratings_used": self.n_ratings_used,
            "n_candidates": self.n_candidates,
            "notes": list(self.notes),
        }


@dataclass
class Prediction:
    """Predicted ratings of the given items for one user (in the order asked)."""

    item_ids: list[str]
    predicted: list[float]
    n_ratings_used: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "predictions": [{"item": i, "predicted_rating": p} for i, p in zip(self.item_ids, self.predicted)],
            "n_ratings_used": self.n_ratings_used,
            "notes": list(self.notes),
        }


@dataclass
class _Request:
    user: dict[str, Tensor]
    user_index: int
    support_rows: list[int]
    support_ratings: list[float]
    query_rows: np.ndarray
    notes: list[str]
    #: ``query_rows`` is the whole catalogue in order (its query tensors are cached).
    full_catalogue: bool = False


def user_index_of(user_id: Any) -> int:
    """A stable stand-in for the user-table row of a new user (learners may seed per-user draws by it)."""
    return 0 if user_id is None else zlib.crc32(str(user_id).encode("utf-8")) & 0x7FFFFFFF


class RecommenderModel:
    """A learner fitted by ``metarec fit``, with its schema, catalogue and user-feature policy."""

    def __init__(
        self,
        learner: Any,
        catalogue: Catalogue,
        policies: Sequence[UserFeaturePolicy],
        *,
        info: Mapping[str, Any] | None = None,
        card: Mapping[str, Any] | None = None,
        path: str | Path | None = None,
        precompute_items: bool = True,
    ) -> None:
        self.learner = learner
        self.schema: FeatureSchema = learner.schema
        self.catalogue = catalogue
        self.policies = {p.name: p for p in policies}
        missing = [f.name for f in self.schema.user_features if f.name not in self.policies]
        if missing:
            raise ValueError(f"no user-feature policy for {', '.join(missing)}")
        self.info = dict(info or {})
        self.card = dict(card or {})
        self.path = None if path is None else Path(path)
        self.device = learner.device
        self._catalogue_device = catalogue.items.to(self.device)
        self._lock = threading.Lock()
        self._cache_item_inputs(precompute_items)
        #: Also :func:`warnings.warn` about skipped unknown items (they are always in the notes).
        self.warn_on_skip = True
        self.grad_mode = self._probe_grad_mode()

    def _cache_item_inputs(self, precompute: bool) -> None:
        """What no request changes, computed once: the catalogue's feature columns on the device,
        the learner's :meth:`~metarec.learner.Learner.precompute_item_inputs` of every catalogue
        item (``precompute=False`` leaves them out: the learner then recomputes them per call,
        with the same numbers), and the query tensors of the whole catalogue."""
        columns = dict(self._catalogue_device.columns)
        extra: dict[str, Tensor] = {}
        if precompute:
            with torch.no_grad():
                extra = {k: v.detach() for k, v in self.learner.precompute_item_inputs(columns).items()}
            clash = sorted(set(extra) & set(columns))
            if clash:
                raise ValueError(f"{type(self.learner).__name__}.precompute_item_inputs returned feature names {clash}")
        #: Per-catalogue-row inputs a batch's support and query features are gathered from.
        self._item_table: dict[str, Tensor] = {**columns, **extra}
        self.precomputed_item_inputs = sorted(extra)
        n = len(self.catalogue)
        rows = torch.arange(n, dtype=torch.long, device=self.device)
        cold = torch.as_tensor(self.catalogue.cold, device=self.device).long()
        self._full = {
            "items": rows,
            "features": self._item_table,
            "scenario": scenario_code(True, False) + cold,  # a new user is a cold user: C-W or C-C
            "cold": cold,
        }

    def _gather(self, rows: Tensor) -> dict[str, Tensor]:
        return {k: v[rows] for k, v in self._item_table.items()}

    # ------------------------------------------------------------------ description
    @property
    def method(self) -> str:
        """The learner's registered name."""
        return str(self.info.get("method", getattr(self.learner, "name", type(self.learner).__name__)))

    @property
    def rating_range(self) -> tuple[float, float]:
        """``(min, max)`` of the ratings the model was fitted on."""
        return float(self.schema.rating_min), float(self.schema.rating_max)

    def __repr__(self) -> str:
        return f"RecommenderModel(method={self.method!r}, items={len(self.catalogue)}, path={str(self.path) if self.path else None!r})"

    # ------------------------------------------------------------------ public API
    def recommend(
        self,
        user: Mapping[str, Any] | None = None,
        ratings: Sequence[Any] = (),
        k: int = 10,
        *,
        exclude_rated: bool = True,
        candidates: Sequence[Any] | None = None,
        item_state: str | None = None,
        unknown_items: str = "error",
        user_id: Any = None,
    ) -> Recommendation:
        """The ``k`` best items for a user given their profile and first ``ratings``.

        ``ratings``: ``(item_id, rating)`` pairs (or ``{"item": ..., "rating": ...}``), oldest
        first; any number from 0. ``candidates``: item ids to rank (default: the catalogue);
        ``item_state``: ``"warm"`` or ``"cold"`` to rank only those; ``exclude_rated``: leave out
        the items the user rated. ``unknown_items="skip"`` drops unknown ids with a warning
        instead of raising :class:`UnknownItemError`.
        """
        return self.recommend_batch(
            [dict(user=user, ratings=ratings, candidates=candidates, user_id=user_id)],
            k=k, exclude_rated=exclude_rated, item_state=item_state, unknown_items=unknown_items,
        )[0]

    def predict(
        self,
        user: Mapping[str, Any] | None,
        ratings: Sequence[Any],
        items: Sequence[Any],
        *,
        unknown_items: str = "error",
        user_id: Any = None,
    ) -> Prediction:
        """Predicted ratings of ``items`` (in that order) after adapting to ``ratings``."""
        return self.predict_batch([dict(user=user, ratings=ratings, items=items, user_id=user_id)],
                                  unknown_items=unknown_items)[0]

    def recommend_batch(
        self,
        requests: Sequence[Mapping[str, Any]],
        k: int = 10,
        *,
        exclude_rated: bool = True,
        item_state: str | None = None,
        unknown_items: str = "error",
    ) -> list[Recommendation]:
        """:meth:`recommend` for many users at once; each request is a dict with ``user``,
        ``ratings`` and optionally ``candidates`` and ``user_id``."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RecommendError(f"k must be a positive integer, got {k!r}", "k")
        state_rows = self.catalogue.rows_in_state(item_state) if item_state is not None else None
        prepared, keep = [], []
        for n, req in enumerate(requests):
            where = f"[{n}]." if len(requests) > 1 else ""
            r = self._prepare(req, unknown_items, where, items_key="candidates")
            rows = r.query_rows
            mask = np.ones(len(rows), dtype=bool)
            if state_rows is not None:
                mask &= np.isin(rows, state_rows)
            if exclude_rated and r.support_rows:
                mask &= ~np.isin(rows, np.asarray(r.support_rows))
            if r.full_catalogue and state_rows is None:
                # score the whole catalogue from the cached query tensors and drop the rated
                # items afterwards (an item's prediction does not depend on the other query items)
                keep.append(mask)
            else:
                r.query_rows, r.full_catalogue = rows[mask], False
                keep.append(None)
            prepared.append(r)
        scores, raw = self._score(prepared, with_raw=True)
        out = []
        for r, s, z, mask in zip(prepared, scores, raw, keep):
            if mask is not None:
                r.query_rows, s, z = r.query_rows[mask], s[mask], z[mask]
            # rank by the model's own output: clipping to the rating range (as the benchmark
            # does for its predictions) would tie every item the model puts above the top
            order = top_k(z, int(k))
            rows = r.query_rows[order]
            out.append(Recommendation(
                item_ids=[str(self.catalogue.ids[j]) for j in rows],
                predicted=[float(x) for x in s[order]],
                ranks=list(range(1, len(rows) + 1)),
                states=[self.catalogue.state(int(j)) for j in rows],
                titles=[self.catalogue.title(int(j)) for j in rows],
                n_ratings_used=len(r.support_rows),
                n_candidates=len(r.query_rows),
                notes=r.notes,
            ))
        return out

    def predict_batch(self, requests: Sequence[Mapping[str, Any]], *, unknown_items: str = "error") -> list[Prediction]:
        """:meth:`predict` for many users at once (dicts with ``user``, ``ratings``, ``items``)."""
        prepared = []
        for n, req in enumerate(requests):
            where = f"[{n}]." if len(requests) > 1 else ""
            if req.get("items") is None:
                raise RecommendError("items: give the item ids to predict", f"{where}items")
            prepared.append(self._prepare(req, unknown_items, where, items_key="items"))
        scores = self._score(prepared)
        return [
            Prediction([str(self.catalogue.ids[j]) for j in r.query_rows], [float(x) for x in s], len(r.support_rows), r.notes)
            for r, s in zip(prepared, scores)
        ]

    # ------------------------------------------------------------------ request -> tasks
    def _item_row(self, item: Any, loc: str, field: str, unknown_items: str, notes: list[str]) -> int | None:
        """The catalogue row of ``item``; an unknown id is an error naming ``field``, or skipped with a note."""
        row = self.catalogue.row(item)
        if row is not None:
            return row
        if unknown_items == "skip":
            msg = f"{loc}: unknown item id {str(item)!r} skipped (not in the model's catalogue)"
            notes.append(msg)
            if self.warn_on_skip:
                warnings.warn(msg, stacklevel=4)
            return None
        raise UnknownItemError(
            f"{field}: unknown item id {str(item)!r}: not in the model's catalogue of {len(self.catalogue)} items "
            "(pass unknown_items='skip' to drop unknown ids)", field)

    def _prepare(self, req: Mapping[str, Any], unknown_items: str, where: str, *, items_key: str) -> _Request:
        if unknown_items not in ("error", "skip"):
            raise RecommendError(f"unknown_items must be 'error' or 'skip', got {unknown_items!r}", "unknown_items")
        user, notes = encode_user(self.schema, self.policies, req.get("user"))
        lo, hi = self.rating_range
        rows: list[int] = []
        values: list[float] = []
        seen: dict[int, int] = {}
        for n, entry in enumerate(req.get("ratings") or ()):
            loc = f"{where}ratings[{n}]"
            item, rating = _pair(entry, loc)
            row = self._item_row(item, loc, f"{loc}.item", unknown_items, notes)
            if row is None:
                continue
            try:
                value = float(rating)
            except (TypeError, ValueError):
                raise RatingRangeError(f"{loc}.rating: {rating!r} is not a number", f"{loc}.rating") from None
            if isinstance(rating, bool) or not math.isfinite(value) or not lo <= value <= hi:
                raise RatingRangeError(
                    f"{loc}.rating: {rating!r} for item {str(item)!r} is outside the model's rating range [{lo:g}, {hi:g}]",
                    f"{loc}.rating")
            if row in seen:
                raise RecommendError(
                    f"{loc}.item: item {str(item)!r} is rated twice (also at ratings[{seen[row]}]); give each item once",
                    f"{loc}.item")
            seen[row] = n
            rows.append(row)
            values.append(value)
        items = req.get(items_key)
        full = items is None
        if full:
            query = np.arange(len(self.catalogue))
        else:
            if isinstance(items, (str, bytes)):
                raise RecommendError(f"{where}{items_key}: give a list of item ids, not one string", f"{where}{items_key}")
            query_rows = []
            for n, item in enumerate(items):
                loc = f"{where}{items_key}[{n}]"
                row = self._item_row(item, loc, loc, unknown_items, notes)
                if row is not None:
                    query_rows.append(row)
            query = np.asarray(query_rows, dtype=np.int64)
        return _Request(user, user_index_of(req.get("user_id")), rows, values, query, notes, full)

    def build_batch(self, prepared: Sequence[_Request]) -> TaskBatch:
        """The :class:`TaskBatch` of some prepared requests: support = ratings, query = candidates.

        Built on the device directly from the cached catalogue inputs; a batch whose users all
        ask for the whole catalogue uses its cached query tensors as they are (no gather).
        """
        b = len(prepared)
        dev = self.device
        lo, hi = self.rating_range
        s = max(1, max(len(r.support_rows) for r in prepared))
        s_items = np.zeros((b, s), dtype=np.int64)
        s_ratings = np.full((b, s), (lo + hi) / 2, dtype=np.float32)
        s_mask = np.zeros((b, s), dtype=bool)
        for i, r in enumerate(prepared):
            n = len(r.support_rows)
            s_items[i, :n] = r.support_rows
            s_ratings[i, :n] = r.support_ratings
            s_mask[i, :n] = True
        support_items = torch.from_numpy(s_items).to(dev)
        if all(r.full_catalogue for r in prepared):
            full = self._full
            q = len(full["items"])
            q_items = full["items"].expand(b, q)
            q_features = {k: v.unsqueeze(0).expand(b, *v.shape) for k, v in full["features"].items()}
            q_mask = torch.ones(b, q, dtype=torch.bool, device=dev)
            q_scen = full["scenario"].expand(b, q)
        else:
            q = max(1, max(len(r.query_rows) for r in prepared))
            rows = np.zeros((b, q), dtype=np.int64)
            mask = np.zeros((b, q), dtype=bool)
            for i, r in enumerate(prepared):
                m = len(r.query_rows)
                rows[i, :m] = r.query_rows
                mask[i, :m] = True
            q_items = torch.from_numpy(rows).to(dev)
            q_mask = torch.from_numpy(mask).to(dev)
            q_features = self._gather(q_items)
            # a new user is a cold user: C-W or C-C
            q_scen = torch.where(q_mask, scenario_code(True, False) + self._full["cold"][q_items], -1)
        return TaskBatch(
            user_index=torch.as_tensor([r.user_index for r in prepared], dtype=torch.long, device=dev),
            user_features={k: v.to(dev) for k, v in stack_rows([r.user for r in prepared]).items()},
            support_items=support_items,
            support_features=self._gather(support_items),
            support_ratings=torch.from_numpy(s_ratings).to(dev),
            support_mask=torch.from_numpy(s_mask).to(dev),
            query_items=q_items,
            query_features=q_features,
            query_ratings=torch.full((b, q), float("nan"), device=dev),
            query_mask=q_mask,
            query_scenario=q_scen,
        )

    def _score(self, prepared: Sequence[_Request], *, with_raw: bool = False) -> Any:
        """Each request's predictions for its query rows (users in chunks of ``eval_batch_size``),
        post-processed (clipped) as the benchmark's; ``with_raw`` adds the learner's raw outputs."""
        out: list[np.ndarray] = []
        raw_out: list[np.ndarray] = []
        step = int(getattr(self.learner.config, "eval_batch_size", 256))
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
            if all(len(r.query_rows) == 0 for r in chunk):
                out.extend(np.zeros(0) for _ in chunk)
                raw_out.extend(np.zeros(0) for _ in chunk)
                continue
            batch = self.build_batch(chunk)
            with self._lock, self.no_grad():
                raw = self.learner.adapt_and_predict(batch)
                pred = self.learner.postprocess(raw).detach().float().cpu().numpy()
                raw = raw.detach().float().cpu().numpy()
            for i, r in enumerate(chunk):
                p = pred[i, : len(r.query_rows)].astype(np.float64)
                if not np.all(np.isfinite(p)):
                    raise RuntimeError(f"{self.method}: the model produced {int((~np.isfinite(p)).sum())} non-finite predictions")
                out.append(p)
                raw_out.append(raw[i, : len(r.query_rows)].astype(np.float64))
        return (out, raw_out) if with_raw else out

    # ------------------------------------------------------------------ grad mode
    @contextmanager
    def no_grad(self) -> Iterator[None]:
        """``torch.inference_mode()``, or ``torch.no_grad()`` for a learner whose adaptation
        needs autograd (see :attr:`grad_mode`)."""
        ctx = torch.inference_mode() if self.grad_mode == "inference_mode" else torch.no_grad()
        with ctx:
            yield

    def _probe_grad_mode(self) -> str:
        """``inference_mode`` when the learner adapts and predicts under it, else ``no_grad``.

        Learners that adapt with :func:`torch.func.grad` work under inference mode; those that
        call :func:`torch.autograd.grad` in their inner loop cannot (inference tensors never
        record a graph), and run under ``no_grad`` with their own ``enable_grad`` instead.
        """
        probe = _Request(*encode_user(self.schema, self.policies, {})[:1], 0, [0], [float(self.schema.rating_max)],
                         np.arange(min(2, len(self.catalogue))), [])
        batch = self.build_batch([probe])
        try:
            with torch.inference_mode():
                self.learner.adapt_and_predict(batch)
            return "inference_mode"
        except RuntimeError:
            return "no_grad"


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores``, best first, ties by index: the first ``k`` of a
    full ``lexsort`` (same order, ties included), sorting only the items that can be among them."""
    n = len(scores)
    neg = -np.asarray(scores)
    if k >= n:
        return np.lexsort((np.arange(n), neg))
    kth = np.partition(neg, k - 1)[k - 1]
    cand = np.flatnonzero(neg <= kth)  # everything that can rank in the first k, ties at the k-th included
    return cand[np.lexsort((cand, neg[cand]))][:k]


def _pair(entry: Any, loc: str) -> tuple[Any, Any]:
    if isinstance(entry, Mapping):
        if "item" not in entry or "rating" not in entry:
            raise RecommendError(f"{loc}: a rating needs 'item' and 'rating', got keys {sorted(entry)}", loc)
        return entry["item"], entry["rating"]
    if isinstance(entry, (list, tuple)) and len(entry) == 2:
        return entry[0], entry[1]
    raise RecommendError(f"{loc}: a rating is an (item_id, rating) pair, got {entry!r}", loc)


__all__ = ["Prediction", "RatingRangeError", "Recommendation", "RecommendError", "RecommenderModel", "UnknownItemError", "top_k",
           "user_index_of"]
