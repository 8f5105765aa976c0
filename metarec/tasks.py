"""Tasks: one user's episode (support and query ratings), and batches of them as fixed-shape tensors.

A :class:`TaskSet` stores all tasks of a split as a handful of ``[n_users, n_support]`` /
``[n_users, n_query]`` tensors plus the user and item :class:`FeatureTable`. A
:class:`TaskBatch` gathers the features of some users into tensors of identical shape, which is
what lets a learner adapt every user of the batch at once with :func:`torch.func.vmap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from metarec.schema import SCENARIOS, Feature, FeatureSchema


@dataclass
class FeatureTable:
    """Feature values of every user (or every item), one row per entity.

    ``columns[name]`` is a ``long [n]`` tensor for categorical features, a ``long [n, max_values]``
    tensor padded with -1 for multi-valued ones, and a ``float [n]`` tensor for numeric ones.
    ``ids`` holds the raw identifiers (as strings) so that results can name users and items.
    """

    features: tuple[Feature, ...]
    columns: dict[str, Tensor]
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        for f in self.features:
            if f.name not in self.columns:
                raise ValueError(f"feature table lacks a column for feature {f.name!r}")
            col = self.columns[f.name]
            if col.shape[0] != n:
                raise ValueError(
                    f"column {f.name!r} has {col.shape[0]} rows but the table has {n} ids"
                )
            if f.kind == "categorical" and n and (col.min() < 0 or col.max() >= f.cardinality):
                raise ValueError(
                    f"categorical column {f.name!r} holds indices outside [0, {f.cardinality})"
                )
            if f.kind == "multi_categorical":
                if col.dim() != 2 or col.shape[1] != f.max_values:
                    raise ValueError(
                        f"multi_categorical column {f.name!r} must be [n, {f.max_values}], "
                        f"got {list(col.shape)}"
                    )
                if n and (col.min() < -1 or col.max() >= f.cardinality):
                    raise ValueError(
                        f"multi_categorical column {f.name!r} holds indices outside [-1, {f.cardinality})"
                    )

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, index: Tensor) -> dict[str, Tensor]:
        """Feature columns for the rows in ``index`` (any shape); result shapes start with ``index.shape``."""
        return {name: col[index] for name, col in self.columns.items()}

    def to(self, device: torch.device | str) -> "FeatureTable":
        """A copy with every column on ``device``."""
        return replace(self, columns={k: v.to(device) for k, v in self.columns.items()})


@dataclass
class Task:
    """One user's episode: profile, support ratings to adapt on, query ratings to predict.

    A read-only view for inspection and tutorials; learners work on :class:`TaskBatch`.
    """

    user_id: str
    user_features: dict[str, Tensor]
    support_item_ids: list[str]
    support_features: dict[str, Tensor]
    support_ratings: Tensor
    query_item_ids: list[str]
    query_features: dict[str, Tensor]
    query_ratings: Tensor
    query_scenarios: list[str]


@dataclass
class TaskBatch:
    """Many tasks stacked into fixed-shape tensors (``B`` users, ``S`` support, ``Q`` query items).

    Masks mark real entries (True) versus padding (False); with the paper's protocol every task
    has exactly 15 support and 5 query ratings, so masks are all True, but learners must respect
    them so that other support sizes work too.
    """

    user_index: Tensor  # long [B], rows of the user table
    user_features: dict[str, Tensor]  # [B, ...]
    support_items: Tensor  # long [B, S], rows of the item table
    support_features: dict[str, Tensor]  # [B, S, ...]
    support_ratings: Tensor  # float [B, S]
    support_mask: Tensor  # bool [B, S]
    query_items: Tensor  # long [B, Q]
    query_features: dict[str, Tensor]  # [B, Q, ...]
    query_ratings: Tensor  # float [B, Q]; all NaN in the batches adapt_and_predict gets
    query_mask: Tensor  # bool [B, Q]
    query_scenario: Tensor  # long [B, Q], index into SCENARIOS (-1 on padding)

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    @property
    def device(self) -> torch.device:
        """The device the batch's tensors are on."""
        return self.user_index.device

    def to(self, device: torch.device | str) -> "TaskBatch":
        """A copy with every tensor on ``device``."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                moved[f.name] = {k: v.to(device) for k, v in value.items()}
            else:
                moved[f.name] = value.to(device)
        return TaskBatch(**moved)

    def without_query_ratings(self) -> "TaskBatch":
        """A copy whose query rating slots are NaN: what a learner sees at prediction time."""
        return replace(self, query_ratings=torch.full_like(self.query_ratings, float("nan")))

    @property
    def query_ratings_hidden(self) -> bool:
        """Whether the query ratings are hidden (NaN), as in every batch handed to ``adapt_and_predict``."""
        return bool(self.query_ratings.numel()) and bool(torch.isnan(self.query_ratings).all())

    def episode(self) -> tuple:
        """The per-user tensors as one tuple, in the order the engine's vmap expects.

        ``(user_features, support_features, support_ratings, support_mask,
        query_features, query_ratings, query_mask)``
        """
        return (
            self.user_features,
            self.support_features,
            self.support_ratings,
            self.support_mask,
            self.query_features,
            self.query_ratings,
            self.query_mask,
        )


@dataclass
class TaskSet:
    """All tasks of one split, as tensors indexed by task number.

    Build it with the protocol (:mod:`metarec.data.protocol`) or directly from arrays. Slicing
    gives sub-sets, :meth:`batches` yields :class:`TaskBatch` objects.
    """

    schema: FeatureSchema
    users: FeatureTable
    items: FeatureTable
    user_index: Tensor  # long [N]
    support_items: Tensor  # long [N, S]
    support_ratings: Tensor  # float [N, S]
    query_items: Tensor  # long [N, Q]
    query_ratings: Tensor  # float [N, Q]
    query_scenario: Tensor  # long [N, Q]
    support_mask: Tensor | None = None  # bool [N, S]; None = all True
    query_mask: Tensor | None = None  # bool [N, Q]; None = all True
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.user_index.shape[0]
        if self.support_mask is None:
            self.support_mask = torch.ones_like(self.support_items, dtype=torch.bool)
        if self.query_mask is None:
            self.query_mask = torch.ones_like(self.query_items, dtype=torch.bool)
        for name in ("support_items", "support_ratings", "support_mask"):
            t = getattr(self, name)
            if t.dim() != 2 or t.shape != self.support_items.shape or t.shape[0] != n:
                raise ValueError(f"{name} must be [{n}, S] like support_items, got {list(t.shape)}")
        for name in ("query_items", "query_ratings", "query_mask", "query_scenario"):
            t = getattr(self, name)
            if t.dim() != 2 or t.shape != self.query_items.shape or t.shape[0] != n:
                raise ValueError(f"{name} must be [{n}, Q] like query_items, got {list(t.shape)}")
        self.support_ratings = self.support_ratings.float()
        self.query_ratings = self.query_ratings.float()

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    @property
    def n_support(self) -> int:
        """Support slots per task (``S``)."""
        return int(self.support_items.shape[1])

    @property
    def n_query(self) -> int:
        """Query slots per task (``Q``)."""
        return int(self.query_items.shape[1])

    def without_query_ratings(self) -> "TaskSet":
        """A copy whose query rating slots are NaN (items, masks and scenarios kept).

        :meth:`metarec.learner.Learner.predict` and the benchmark hand learners only such sets
        at prediction time, so a learner cannot read the ratings it is scored on: one that
        tries gets NaN and is refused.
        """
        return replace(self, query_ratings=torch.full_like(self.query_ratings, float("nan")), info=dict(self.info))

    def subset(self, index: Sequence[int] | Tensor) -> "TaskSet":
        """The tasks at ``index`` (in that order), sharing the feature tables."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return replace(
            self,
            user_index=self.user_index[idx],
            support_items=self.support_items[idx],
            support_ratings=self.support_ratings[idx],
            support_mask=self.support_mask[idx],
            query_items=self.query_items[idx],
            query_ratings=self.query_ratings[idx],
            query_mask=self.query_mask[idx],
            query_scenario=self.query_scenario[idx],
            info=dict(self.info),
        )

    def batch(self, index: Sequence[int] | Tensor, device: torch.device | str | None = None) -> TaskBatch:
        """Gather the tasks at ``index`` into one :class:`TaskBatch` (optionally on ``device``)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        users = self.user_index[idx]
        s_items = self.support_items[idx]
        q_items = self.query_items[idx]
        batch = TaskBatch(
            user_index=users,
            user_features=self.users.gather(users),
            support_items=s_items,
            support_features=self.items.gather(s_items),
            support_ratings=self.support_ratings[idx],
            support_mask=self.support_mask[idx],
            query_items=q_items,
            query_features=self.items.gather(q_items),
            query_ratings=self.query_ratings[idx],
            query_mask=self.query_mask[idx],
            query_scenario=self.query_scenario[idx],
        )
        return batch if device is None else batch.to(device)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> Iterator[TaskBatch]:
        """Yield batches of ``batch_size`` tasks (the last one smaller unless ``drop_last``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            yield self.batch(idx, device=device)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """How many batches :meth:`batches` yields for these settings."""
        n = len(self)
        return n // batch_size if drop_last else -(-n // batch_size)

    def __getitem__(self, i: int) -> Task:
        if not -len(self) <= i < len(self):
            raise IndexError(f"task index {i} out of range for {len(self)} tasks")
        u = int(self.user_index[i])
        s_mask = self.support_mask[i]
        q_mask = self.query_mask[i]
        s_items = self.support_items[i][s_mask]
        q_items = self.query_items[i][q_mask]
        return Task(
            user_id=str(self.users.ids[u]),
            user_features={k: v[u] for k, v in self.users.columns.items()},
            support_item_ids=[str(self.items.ids[j]) for j in s_items.tolist()],
            support_features=self.items.gather(s_items),
            support_ratings=self.support_ratings[i][s_mask],
            query_item_ids=[str(self.items.ids[j]) for j in q_items.tolist()],
            query_features=self.items.gather(q_items),
            query_ratings=self.query_ratings[i][q_mask],
            query_scenarios=[SCENARIOS[c] for c in self.query_scenario[i][q_mask].tolist()],
        )

    def with_candidates(self, items: Tensor | Sequence[int]) -> "TaskSet":
        """The same users and support sets, with ``items`` (item-table rows) as every user's query.

        For scoring arbitrary items -- e.g. the whole catalogue in the full-ranking evaluation
        (:mod:`metarec.ranking`): a learner adapts to the support set and predicts the candidates
        exactly as it predicts query items. The query ratings are unknown (NaN; learners never
        read them) and the query scenario is -1.
        """
        cand = torch.as_tensor(items, dtype=torch.long).reshape(-1)
        if cand.numel() == 0:
            raise ValueError("with_candidates needs at least one candidate item")
        if int(cand.min()) < 0 or int(cand.max()) >= len(self.items):
            raise ValueError(f"candidate items must be rows of the item table, in [0, {len(self.items)})")
        n = len(self)
        q = cand.unsqueeze(0).expand(n, -1)
        return replace(
            self,
            query_items=q,
            query_ratings=torch.full(q.shape, float("nan")),
            query_mask=torch.ones(q.shape, dtype=torch.bool),
            query_scenario=torch.full(q.shape, -1, dtype=torch.long),
            info={**self.info, "candidates": int(cand.numel())},
        )

    def scenario_counts(self) -> dict[str, int]:
        """Number of (real) query ratings per scenario label."""
        codes = self.query_scenario[self.query_mask]
        return {name: int((codes == c).sum()) for c, name in enumerate(SCENARIOS)}


def candidate_batches(
    tasks: TaskSet,
    items: Tensor | Sequence[int],
    batch_size: int,
    *,
    device: torch.device | str | None = None,
) -> Iterator[tuple[Tensor, TaskBatch]]:
    """``(task positions, batch)`` over ``tasks`` in order, each batch's query = ``items``.

    :meth:`TaskSet.with_candidates` in batches of ``batch_size`` users (the item features are
    gathered per batch, so memory grows with ``batch_size x len(items)``, not with the number of
    users).
    """
    scored = tasks.with_candidates(items)
    for start in range(0, len(scored), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(scored)))
        yield idx, scored.batch(idx, device=device)
