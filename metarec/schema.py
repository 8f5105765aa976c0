"""Feature schema: what a dataset's user and item features are, independent of any dataset.

Learners build their embeddings from a :class:`FeatureSchema` and never from dataset-specific
code, so a model written for MovieLens runs unchanged on Book-Crossing or on your own data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

FeatureKind = Literal["categorical", "multi_categorical", "numeric"]
FEATURE_KINDS: tuple[str, ...] = ("categorical", "multi_categorical", "numeric")

#: Cold-start scenario labels, in code order: code = 2 * user_is_cold + item_is_cold.
SCENARIOS: tuple[str, ...] = ("W-W", "W-C", "C-W", "C-C")


def scenario_code(user_cold: bool, item_cold: bool) -> int:
    """The integer code of a (user state, item state) pair; see :data:`SCENARIOS`."""
    return 2 * int(bool(user_cold)) + int(bool(item_cold))


@dataclass(frozen=True)
class Feature:
    """One user or item feature.

    * ``categorical``: one value from ``vocabulary`` (stored as an index).
    * ``multi_categorical``: a set of values from ``vocabulary`` (stored as up to
      ``max_values`` indices, padded with -1); ``separator`` splits the raw string.
    * ``numeric``: one real number (stored standardised; ``mean``/``std`` keep the scale).
    """

    name: str
    kind: FeatureKind
    vocabulary: tuple[str, ...] = ()
    separator: str | None = None
    max_values: int = 0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"feature name must be a non-empty string, got {self.name!r}")
        if self.kind not in FEATURE_KINDS:
            raise ValueError(
                f"feature {self.name!r}: kind {self.kind!r} is not one of {', '.join(FEATURE_KINDS)}"
            )
        if self.kind in ("categorical", "multi_categorical") and not self.vocabulary:
            raise ValueError(f"{self.kind} feature {self.name!r} needs a non-empty vocabulary")
        if self.kind == "multi_categorical" and self.max_values < 1:
            raise ValueError(
                f"multi_categorical feature {self.name!r} needs max_values >= 1, got {self.max_values}"
            )
        if self.kind == "numeric" and not self.std > 0:
            raise ValueError(f"numeric feature {self.name!r} needs std > 0, got {self.std}")
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))

    @property
    def cardinality(self) -> int:
        """Number of distinct values (0 for numeric features)."""
        return len(self.vocabulary)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for caches and results files)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "vocabulary": list(self.vocabulary),
            "separator": self.separator,
            "max_values": self.max_values,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Feature":
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=d["name"],
            kind=d["kind"],
            vocabulary=tuple(d.get("vocabulary", ())),
            separator=d.get("separator"),
            max_values=int(d.get("max_values", 0)),
            mean=float(d.get("mean", 0.0)),
            std=float(d.get("std", 1.0)),
        )


@dataclass(frozen=True)
class FeatureSchema:
    """User features, item features and the rating scale of a dataset."""

    user_features: tuple[Feature, ...]
    item_features: tuple[Feature, ...]
    rating_min: float = 1.0
    rating_max: float = 5.0
    name: str = "dataset"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_features", tuple(self.user_features))
        object.__setattr__(self, "item_features", tuple(self.item_features))
        for side, feats in (("user", self.user_features), ("item", self.item_features)):
            names = [f.name for f in feats]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"duplicate {side} feature names: {', '.join(dupes)}")
        if not self.rating_max > self.rating_min:
            raise ValueError(
                f"rating_max ({self.rating_max}) must be greater than rating_min ({self.rating_min})"
            )

    def user_feature(self, name: str) -> Feature:
        """The user feature called ``name`` (KeyError listing the known ones otherwise)."""
        return _find(self.user_features, name, "user")

    def item_feature(self, name: str) -> Feature:
        """The item feature called ``name`` (KeyError listing the known ones otherwise)."""
        return _find(self.item_features, name, "item")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for caches and results files)."""
        return {
            "name": self.name,
            "rating_min": self.rating_min,
            "rating_max": self.rating_max,
            "user_features": [f.to_dict() for f in self.user_features],
            "item_features": [f.to_dict() for f in self.item_features],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSchema":
        """Inverse of :meth:`to_dict`."""
        return cls(
            user_features=tuple(Feature.from_dict(f) for f in d["user_features"]),
            item_features=tuple(Feature.from_dict(f) for f in d["item_features"]),
            rating_min=float(d["rating_min"]),
            rating_max=float(d["rating_max"]),
            name=d.get("name", "dataset"),
            extra=dict(d.get("extra", {})),
        )


def _find(features: tuple[Feature, ...], name: str, side: str) -> Feature:
    for f in features:
        if f.name == name:
            return f
    known = ", ".join(f.name for f in features) or "(none)"
    raise KeyError(f"no {side} feature named {name!r}; known: {known}")
