"""The item catalogue a model recommends from, and how a new user's raw profile is encoded.

The catalogue keeps each item's id, encoded features, title (when the dataset has one), and its
warm/cold state under the protocol's rule (warm iff MORE than ``item_cold_max_ratings`` ratings
among the fitted users' protocol ratings).

A user's profile arrives as raw values (``{"gender": "F", "age": "25"}``) and is encoded with
the schema's vocabularies. A value that is missing or not in the vocabulary never fails: it
follows :class:`UserFeaturePolicy` and is reported back with the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable

#: Vocabulary entries that custom datasets use for a missing / an out-of-vocabulary value
#: (:mod:`metarec.data.custom`, ``on_missing = "category"`` / ``on_unknown = "category"``).
MISSING_VALUE = "<missing>"
UNKNOWN_VALUE = "<unknown>"
ITEM_STATES = ("warm", "cold")


@dataclass
class Catalogue:
    """Items a model can score: ids, encoded features (a :class:`FeatureTable`), state, titles."""

    items: FeatureTable
    cold: np.ndarray  # bool [n]
    n_ratings: np.ndarray  # int64 [n]
    titles: list[str] | None = None
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.cold = np.asarray(self.cold, dtype=bool)
        self.n_ratings = np.asarray(self.n_ratings, dtype=np.int64)
        n = len(self.items)
        if self.cold.shape != (n,) or self.n_ratings.shape != (n,):
            raise ValueError(f"catalogue of {n} items needs {n} cold flags and rating counts")
        if self.titles is not None and len(self.titles) != n:
            raise ValueError(f"catalogue of {n} items has {len(self.titles)} titles")
        self._row = {str(i): k for k, i in enumerate(self.items.ids)}
        if len(self._row) != n:
            raise ValueError("catalogue item ids are not unique")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> np.ndarray:
        """Item ids as strings, in catalogue order."""
        return self.items.ids

    def row(self, item_id: Any) -> int | None:
        """The catalogue row of ``item_id`` (any type; compared as a string), or None."""
        return self._row.get(str(item_id))

    def state(self, row: int) -> str:
        """``warm`` or ``cold``."""
        return "cold" if self.cold[row] else "warm"

    def title(self, row: int) -> str | None:
        """The item's title, when the catalogue has titles."""
        return None if self.titles is None else self.titles[row]

    def rows_in_state(self, state: str | None) -> np.ndarray:
        """Rows of every item, or of the warm or the cold ones."""
        if state is None:
            return np.arange(len(self))
        if state not in ITEM_STATES:
            raise ValueError(f"item_state must be one of {', '.join(ITEM_STATES)} (or None for all), got {state!r}")
        return np.flatnonzero(self.cold if state == "cold" else ~self.cold)

    # ------------------------------------------------------------------ (de)serialisation
    def to_json(self) -> dict[str, Any]:
        """The JSON part: ids, titles, states, counts (feature columns go to safetensors)."""
        return {
            "ids": [str(i) for i in self.items.ids],
            "titles": self.titles,
            "state": ["cold" if c else "warm" for c in self.cold],
            "n_ratings": [int(n) for n in self.n_ratings],
            "counts": {"items": len(self), "warm": int((~self.cold).sum()), "cold": int(self.cold.sum())},
        }

    def tensors(self) -> dict[str, Tensor]:
        """The encoded feature columns, by feature name."""
        return {name: col.contiguous() for name, col in self.items.columns.items()}

    @classmethod
    def from_parts(cls, schema: FeatureSchema, meta: Mapping[str, Any], columns: Mapping[str, Tensor]) -> "Catalogue":
        """Rebuild from :meth:`to_json` and :meth:`tensors` (validated by :class:`FeatureTable`)."""
        ids = np.asarray(meta["ids"], dtype=object)
        table = FeatureTable(schema.item_features, {f.name: columns[f.name] for f in schema.item_features}, ids)
        return cls(table, np.asarray([s == "cold" for s in meta["state"]]), np.asarray(meta["n_ratings"]), meta.get("titles"))


# ---------------------------------------------------------------------------- user profiles


@dataclass(frozen=True)
class UserFeaturePolicy:
    """What a missing or unseen value of one user feature becomes (decided at fit time).

    ``fallback`` is a vocabulary entry for categorical features (the ``<missing>``/``<unknown>``
    category when the training data had one, else the most frequent value among the fitted
    users), the training mean for numeric ones (0 after standardisation), nothing for
    multi-valued ones (unknown entries of a set are dropped).
    """

    name: str
    missing: str | None  # vocabulary entry (categorical) or None
    unseen: str | None
    rule: str  # human-readable description, reported with predictions

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "missing": self.missing, "unseen": self.unseen, "rule": self.rule}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UserFeaturePolicy":
        """Inverse of :meth:`to_dict`."""
        return cls(d["name"], d.get("missing"), d.get("unseen"), d["rule"])


def derive_policies(schema: FeatureSchema, users: FeatureTable, rows: np.ndarray) -> list[UserFeaturePolicy]:
    """The policy of every user feature, from the fitted users ``rows`` of ``users``."""
    out = []
    for f in schema.user_features:
        if f.kind == "categorical":
            vocab = set(f.vocabulary)
            col = users.columns[f.name][torch.as_tensor(rows, dtype=torch.long)]
            mode = f.vocabulary[int(torch.bincount(col, minlength=f.cardinality).argmax())] if len(col) else f.vocabulary[0]
            missing = MISSING_VALUE if MISSING_VALUE in vocab else mode
            unseen = UNKNOWN_VALUE if UNKNOWN_VALUE in vocab else missing
            rule = (f"missing -> {missing!r}" + (" (the training data's missing category)" if missing == MISSING_VALUE
                                                 else " (the most frequent value among the fitted users)")
                    + f"; unseen -> {unseen!r}")
            out.append(UserFeaturePolicy(f.name, missing, unseen, rule))
        elif f.kind == "multi_categorical":
            out.append(UserFeaturePolicy(f.name, None, None, "missing -> no values; unseen values are dropped"))
        else:
            out.append(UserFeaturePolicy(f.name, None, None, f"missing or not a number -> the training mean ({f.mean:g})"))
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "") or (isinstance(value, float) and np.isnan(value))


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def encode_user(
    schema: FeatureSchema, policies: Mapping[str, UserFeaturePolicy], user: Mapping[str, Any] | None
) -> tuple[dict[str, Tensor], list[str]]:
    """One user's feature tensors (as one row of a user :class:`FeatureTable`) and the notes on
    every value that followed the policy (missing, unseen, unknown keys)."""
    user = dict(user or {})
    notes: list[str] = []
    out: dict[str, Tensor] = {}
    for f in schema.user_features:
        value = user.pop(f.name, None)
        out[f.name] = _encode_one(f, policies[f.name], value, notes)
    for key in sorted(user):
        known = ", ".join(f.name for f in schema.user_features) or "(none)"
        notes.append(f"user feature {key!r} is not in the model's schema and was ignored (known: {known})")
    return out, notes


def _encode_one(f: Feature, policy: UserFeaturePolicy, value: Any, notes: list[str]) -> Tensor:
    if f.kind == "categorical":
        index = {v: k for k, v in enumerate(f.vocabulary)}
        if _missing(value):
            notes.append(f"user feature {f.name!r} is missing: used {policy.missing!r} ({policy.rule})")
            return torch.tensor(index[policy.missing], dtype=torch.long)
        text = _as_text(value)
        if text not in index:
            notes.append(f"user feature {f.name!r}: value {text!r} is not in the vocabulary: used {policy.unseen!r} ({policy.rule})")
            return torch.tensor(index[policy.unseen], dtype=torch.long)
        return torch.tensor(index[text], dtype=torch.long)
    if f.kind == "multi_categorical":
        index = {v: k for k, v in enumerate(f.vocabulary)}
        if _missing(value):
            notes.append(f"user feature {f.name!r} is missing: no values")
            values: list[str] = []
        elif isinstance(value, (list, tuple)):
            values = [_as_text(v) for v in value]
        else:
            values = [v.strip() for v in str(value).split(f.separator or ",") if v.strip()]
        known = [index[v] for v in dict.fromkeys(values) if v in index]
        dropped = [v for v in values if v not in index]
        if dropped:
            notes.append(f"user feature {f.name!r}: value(s) {', '.join(map(repr, dropped))} not in the vocabulary were dropped")
        if len(known) > f.max_values:
            notes.append(f"user feature {f.name!r}: {len(known)} values, the model reads the first {f.max_values}")
            known = known[: f.max_values]
        row = torch.full((f.max_values,), -1, dtype=torch.long)
        row[: len(known)] = torch.as_tensor(known, dtype=torch.long)
        return row
    # numeric: stored standardised
    try:
        x = float(value) if not _missing(value) else float("nan")
    except (TypeError, ValueError):
        x = float("nan")
    if not np.isfinite(x):
        notes.append(f"user feature {f.name!r}: {value!r} is missing or not a number: used the training mean {f.mean:g}")
        return torch.tensor(0.0)
    return torch.tensor((x - f.mean) / f.std, dtype=torch.float32)


def decode_user(schema: FeatureSchema, users: FeatureTable, row: int) -> dict[str, Any]:
    """The raw profile of row ``row`` of an encoded user table (inverse of :func:`encode_user`)."""
    out: dict[str, Any] = {}
    for f in schema.user_features:
        v = users.columns[f.name][row]
        if f.kind == "categorical":
            out[f.name] = f.vocabulary[int(v)]
        elif f.kind == "multi_categorical":
            out[f.name] = [f.vocabulary[int(i)] for i in v.tolist() if i >= 0]
        else:
            out[f.name] = float(v) * f.std + f.mean
    return out


def stack_rows(rows: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Per-user feature rows stacked into ``[B, ...]`` tensors."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}


__all__ = [
    "Catalogue",
    "ITEM_STATES",
    "UserFeaturePolicy",
    "decode_user",
    "derive_policies",
    "encode_user",
    "stack_rows",
]
