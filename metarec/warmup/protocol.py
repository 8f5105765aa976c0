"""The item warm-up protocol (CVAR / MetaEmb family): old items, new items, stages a, b, c.

Where the user-cold protocol (:mod:`metarec.data.protocol`) makes one task per user, this one
is about new *items*, and it is evaluated on a stream:

1. **Labels**: a rating >= ``positive_rating`` (default 4) is a click (1), else 0.
2. **Old / new items** by interaction count over the whole log (CVAR's rule; the counts see the
   future -- documented in ``info``): an item with more than ``old_min_count`` ratings is old,
   one with ``n_stages * stage_size`` .. ``old_min_count`` ratings is new, the rest are dropped.
   The CVAR preset (ML-1M) is 200 / 20 ratings x 3 stages: 1,420 old items (854,530 rows),
   972 new items, 58,409 test rows.
3. **Per new item order**: by time (ties: file order) where the data has time; a seeded random
   order otherwise (Yelp) -- the seed then decides the warm-up batches.
4. Each new item's first ``stage_size`` rows are warm-up batch a, the next b, then c; the rest
   are its **test** rows. Every stage is evaluated on the same test rows.

A learner pre-trains on the old items' rows (``base``), gets the new items' features and writes
their cold ID embeddings (stage ``cold``), then sees the warm-up batches one by one; after each
the harness predicts the test rows. AUC, F1 and log-loss per stage (:mod:`metarec.warmup.metrics`).

Deliberately *not* inputs (CVAR uses them; they leak test-period information): the item's
whole-log rating ``count`` and a global-min/max timestamp feature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from metarec.config import Rule, ValidatedConfig, build_config, setting
from metarec.data.base import InteractionData
from metarec.errors import UserError
from metarec.runtime import numpy_generator
from metarec.schema import FeatureSchema
from metarec.tasks import FeatureTable

#: Stage names in evaluation order.
STAGES: tuple[str, ...] = ("cold", "a", "b", "c")
PROTOCOL_NAME = "item-warmup"


class WarmupProtocolError(UserError, ValueError):
    """The protocol cannot be applied to this data with these settings (message says what to change)."""


@dataclass(frozen=True)
class WarmupConfig(ValidatedConfig):
    """Settings of the item warm-up protocol; the defaults are CVAR's ML-1M split."""

    #: A rating >= this is a positive (click) label.
    positive_rating: float = 4.0
    #: Items with more ratings than this are old (pre-training data); CVAR: 200.
    old_min_count: int = setting(200, ge=1)
    #: Ratings per warm-up batch and item (CVAR: 20); new items need n_stages * stage_size ratings.
    stage_size: int = setting(20, ge=1)
    #: Warm-up stages (a, b, c).
    n_stages: int = setting(3, ge=1, le=3)
    #: Order of each new item's ratings: ``time``, ``random`` (seeded), or ``auto`` (time when the
    #: data has a time column, else random).
    order: Literal["auto", "time", "random"] = "auto"

    rules = (Rule("n_stages * stage_size <= old_min_count",
                  lambda c: c.n_stages * c.stage_size <= c.old_min_count, ("stage_size", "old_min_count")),)


#: Dataset presets (``load_warmup_split`` applies them under the user's overrides).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "ml-1m": {},  # CVAR's split: 200 / 20 x 3
    # Yelp has median 4 ratings per business: CVAR's thresholds leave 73 old items. 50 / 5 x 3
    # keeps 905 old items (95,442 rows) and 2,128 new ones (26,124 test rows).
    "yelp": {"old_min_count": 50, "stage_size": 5},
}


@dataclass
class Interactions:
    """Rows of (user row, item row, label); ``rank`` orders them in time (or the seeded order)."""

    user: Tensor  # long [n]
    item: Tensor  # long [n]
    label: Tensor  # float [n] (NaN when hidden from a learner)
    rank: Tensor = field(default=None)  # long [n]

    def __post_init__(self) -> None:
        if self.rank is None:
            self.rank = torch.arange(len(self.user))

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def select(self, index: Tensor) -> "Interactions":
        """The rows at ``index``."""
        return Interactions(self.user[index], self.item[index], self.label[index], self.rank[index])

    def without_labels(self) -> "Interactions":
        """A copy with every label NaN: what a learner gets to predict."""
        return replace(self, label=torch.full_like(self.label, float("nan")))

    def to(self, device: torch.device | str) -> "Interactions":
        """A copy on ``device``."""
        return Interactions(self.user.to(device), self.item.to(device), self.label.to(device), self.rank.to(device))

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator["Interactions"]:
        """Mini-batches, shuffled with ``generator`` (in row order without one)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for s in range(0, n, batch_size):
            yield self.select(order[s:s + batch_size])

    @staticmethod
    def concat(parts: list["Interactions"]) -> "Interactions":
        """Rows of every part, in order."""
        return Interactions(*(torch.cat([getattr(p, f) for p in parts]) for f in ("user", "item", "label", "rank")))


@dataclass
class WarmupSplit:
    """One seed's item warm-up data: feature tables, old rows, warm-up batches, test rows."""

    schema: FeatureSchema
    users: FeatureTable
    items: FeatureTable
    base: Interactions  # old items' rows, in time order
    stages: tuple[Interactions, ...]  # warm-up batches a, b, c (new items only)
    test: Interactions  # new items' remaining rows
    old_items: Tensor
    new_items: Tensor
    info: dict[str, Any]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """``cold`` plus one name per warm-up batch."""
        return STAGES[: 1 + len(self.stages)]


def _tensor(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)


def build_warmup_split(data: InteractionData, config: WarmupConfig | None = None, *, seed: int = 0) -> WarmupSplit:
    """Apply the item warm-up protocol to ``data``; only the random ``order`` depends on ``seed``."""
    cfg = config or WarmupConfig()
    order_rule = cfg.order if cfg.order != "auto" else ("time" if data.has_time else "random")
    if order_rule == "time" and not data.has_time:
        raise WarmupProtocolError(f"{data.name}: order = 'time' but the data has no time column; use order = 'random'")
    n_items = len(data.items)
    counts = np.bincount(data.item, minlength=n_items)
    need = cfg.n_stages * cfg.stage_size
    old = counts > cfg.old_min_count
    new = (counts >= need) & (counts <= cfg.old_min_count)
    if not old.any() or not new.any():
        raise WarmupProtocolError(
            f"{data.name}: {int(old.sum())} old items (> {cfg.old_min_count} ratings) and {int(new.sum())} new items "
            f"({need}..{cfg.old_min_count} ratings): both are needed; change old_min_count or stage_size"
        )
    # global time order (ties: file order); for random order a seeded permutation instead
    if order_rule == "time":
        glob = np.lexsort((data.order, data.time))
    else:
        glob = numpy_generator(seed, "warmup-order").permutation(data.n_ratings)
    rank = np.empty(data.n_ratings, dtype=np.int64)
    rank[glob] = np.arange(data.n_ratings)
    label = (data.rating >= cfg.positive_rating).astype(np.float32)

    def rows(idx: np.ndarray) -> Interactions:
        idx = idx[np.argsort(rank[idx], kind="stable")]  # each table in time (or seeded) order
        return Interactions(_tensor(data.user[idx], torch.long), _tensor(data.item[idx], torch.long),
                            _tensor(label[idx], torch.float32), _tensor(rank[idx], torch.long))

    base_idx = np.flatnonzero(old[data.item])
    new_idx = np.flatnonzero(new[data.item])
    # position of each new-item row within its item's ordered rows
    by_item = new_idx[np.lexsort((rank[new_idx], data.item[new_idx]))]
    items_sorted = data.item[by_item]
    starts = np.r_[0, np.flatnonzero(np.diff(items_sorted)) + 1]
    pos = np.arange(len(by_item)) - np.repeat(starts, np.diff(np.r_[starts, len(by_item)]))
    stages = tuple(rows(by_item[(pos >= s * cfg.stage_size) & (pos < (s + 1) * cfg.stage_size)])
                   for s in range(cfg.n_stages))
    test = rows(by_item[pos >= need])
    if len(test) == 0:
        raise WarmupProtocolError(f"{data.name}: no new item has more than {need} ratings, so no test rows are left")
    base = rows(base_idx)
    info: dict[str, Any] = {
        "protocol_name": PROTOCOL_NAME,
        "dataset": data.name,
        "seed": seed,
        "protocol": asdict(cfg),
        "order_rule": order_rule,
        "order_note": ("each new item's ratings by time (ties: file order)" if order_rule == "time"
                       else "a seeded random order (the data has no time): the seed decides the warm-up batches"),
        "label_rule": f"rating >= {cfg.positive_rating:g} -> 1, else 0",
        "item_count_note": "old/new status from whole-log rating counts (CVAR's rule: it sees the future)",
        "old_items": int(old.sum()),
        "new_items": int(new.sum()),
        "items_dropped": int(((counts > 0) & ~old & ~new).sum()),
        "rows_base": len(base),
        "rows_per_stage": [len(s) for s in stages],
        "rows_test": len(test),
        "positive_rate_base": float(base.label.mean()),
        "positive_rate_test": float(test.label.mean()),
        "checksum": data.checksum,
        "canonical": data.canonical,
        "load_drops": dict(data.drops),
        "data_notes": list(data.notes),
    }
    return WarmupSplit(
        schema=data.schema, users=data.users, items=data.items, base=base, stages=stages, test=test,
        old_items=_tensor(np.flatnonzero(old), torch.long), new_items=_tensor(np.flatnonzero(new), torch.long),
        info=info,
    )


def warmup_config_for(dataset: str, overrides: dict[str, Any] | None = None) -> WarmupConfig:
    """Protocol settings: defaults < the dataset's preset < ``overrides`` (``--set protocol.KEY=V``)."""
    return build_config(WarmupConfig, DATASET_PRESETS.get(dataset, {}), overrides or {}, where="item-warmup protocol")


__all__ = [
    "DATASET_PRESETS", "Interactions", "PROTOCOL_NAME", "STAGES", "WarmupConfig", "WarmupProtocolError",
    "WarmupSplit", "build_warmup_split", "warmup_config_for",
]
