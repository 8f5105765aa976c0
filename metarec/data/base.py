"""The loaded form of a dataset, shared by every loader: feature tables plus a ratings log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metarec.schema import FeatureSchema
from metarec.tasks import FeatureTable


@dataclass
class InteractionData:
    """A dataset after parsing and cleaning, before any protocol is applied.

    ``user``/``item`` are row numbers into ``users``/``items``; ``time`` is the timestamp (or a
    pseudo-time such as the file position when the data has none); ``order`` is each rating's
    position in its source file and breaks ties in ``time`` (a stable, documented rule).
    ``protocol_defaults`` holds the dataset's own protocol settings (for example Book-Crossing
    decides warm users by user-id order, MovieLens by time), which a
    :class:`~metarec.data.protocol.ProtocolConfig` can override.
    """

    name: str
    schema: FeatureSchema
    users: FeatureTable
    items: FeatureTable
    user: np.ndarray  # int64 [R]
    item: np.ndarray  # int64 [R]
    rating: np.ndarray  # float32 [R]
    time: np.ndarray  # float64 [R]
    order: np.ndarray  # int64 [R]
    checksum: str = ""
    canonical: bool | None = None
    source_files: dict[str, str] = field(default_factory=dict)
    #: Documented drops made while loading, ``reason -> count``, reported in run summaries.
    drops: dict[str, int] = field(default_factory=dict)
    protocol_defaults: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Whether ``time`` holds real rating times; ``False`` when it is only the file position (no
    #: time column), which the ``time_quantile`` user-state rule refuses.
    has_time: bool = True
    #: Anything else a loader knows (the synthetic generator puts its planted truth here).
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rating)
        for name in ("user", "item", "time", "order"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ratings log column {name!r} has {len(getattr(self, name))} rows, expected {n}")
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.rating = np.asarray(self.rating, dtype=np.float32)
        self.time = np.asarray(self.time, dtype=np.float64)
        self.order = np.asarray(self.order, dtype=np.int64)
        if n and (self.user.min() < 0 or self.user.max() >= len(self.users)):
            raise ValueError("ratings refer to user rows outside the user table")
        if n and (self.item.min() < 0 or self.item.max() >= len(self.items)):
            raise ValueError("ratings refer to item rows outside the item table")

    @property
    def n_ratings(self) -> int:
        """Number of ratings in the log."""
        return len(self.rating)

    def describe(self) -> dict[str, Any]:
        """Sizes, checksum, canonical flag and load drops, for summaries."""
        return {
            "name": self.name,
            "users": len(self.users),
            "items": len(self.items),
            "ratings": self.n_ratings,
            "checksum": self.checksum,
            "canonical": self.canonical,
            "drops": dict(self.drops),
        }
