"""Your own data: ratings plus user and item feature tables, described by a TOML schema file.

This module is also the machinery every built-in dataset goes through: a loader reads its files
into :class:`~metarec.data.readers.RawTable` objects and hands them, with a
:class:`DatasetSpec`, to :func:`assemble`, which cleans and encodes the features, maps ratings
to table rows, applies the declared policies for bad records and counts every drop. MovieLens
and Book-Crossing differ from your own data only in how their files are read.

A schema file (paths are relative to it)::

    name = "my-shop"
    rating_min = 1
    rating_max = 5

    [ratings]
    path = "ratings.csv"          # .csv/.tsv or .parquet (pyarrow)
    user = "user_id"
    item = "item_id"
    rating = "stars"
    time = "timestamp"            # optional; without it the file order is the time
    duplicates = "error"          # or "first" / "last" (kept by time, then file order)

    [users]
    path = "users.csv"
    id = "user_id"
    features = [
      { name = "age_group", kind = "categorical" },
      { name = "income", kind = "numeric", on_missing = "mean" },
    ]

    [items]
    path = "items.csv"
    id = "item_id"
    features = [
      { name = "genres", kind = "multi_categorical", separator = "|" },
      { name = "brand", kind = "categorical", on_missing = "category" },
    ]

    [protocol]                     # this dataset's protocol defaults (optional)
    user_state_rule = "time_quantile"
    item_cold_max_ratings = 10
"""

from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch

from metarec.config import ConfigError, Rule, ValidatedConfig, build_config, load_toml, setting
from metarec.data.base import InteractionData
from metarec.data.readers import DataFormatError, RawTable, parse_numbers, read_table, show
from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable

#: Bumped whenever assembling the same files could give different tasks (part of cache keys).
ASSEMBLY_VERSION = 1

MISSING_CATEGORY = "<missing>"
UNKNOWN_CATEGORY = "<unknown>"
_ANNOTATION = re.compile(r"\s*\([^)]*\)")


#: The ``on_missing`` choices that make sense for each feature kind.
_ON_MISSING = {
    "categorical": ("error", "drop", "category"),
    "multi_categorical": ("error", "drop", "category", "empty"),
    "numeric": ("error", "drop", "mean"),
}


@dataclass(frozen=True)
class FeatureSpec(ValidatedConfig):
    """How to turn one source column into a :class:`~metarec.schema.Feature`.

    Cleaning, in order: strip whitespace; ``html_unescape``; ``lowercase``; ``strip_annotations``
    (drop parenthesised text such as "(co-director)"); ``value_map`` (e.g. ``"N/A" -> "nan"``).
    Multi-valued features are split on ``separator`` first and each value is cleaned; repeated
    values are kept once. A value in ``missing_values`` (after cleaning) is missing.
    """

    name: str
    kind: Literal["categorical", "multi_categorical", "numeric"]
    #: Source column (default: ``name``).
    column: str | None = None
    separator: str | None = None
    #: A fixed vocabulary; ``None`` builds it from the data (after dropping and pruning).
    vocabulary: tuple[str, ...] | None = None
    #: A file with one vocabulary value per line (UTF-8), relative to the schema file.
    vocabulary_file: str | None = None
    #: Order of a vocabulary built from data: ``sorted`` or ``first_seen`` (table order).
    vocabulary_order: Literal["sorted", "first_seen"] = "sorted"
    #: Longest value list of a multi-valued feature (``None``: the longest in the data); longer is an error.
    max_values: int | None = setting(None, ge=1)
    missing_values: tuple[str, ...] = ("",)
    #: What a missing value does: ``error``; ``drop`` the user/item (counted; its ratings are
    #: dropped too, counted); ``category`` (a ``<missing>`` value); ``empty`` (multi-valued: no
    #: values); ``mean`` (numeric: the mean of the other rows).
    on_missing: Literal["error", "drop", "category", "empty", "mean"] = "error"
    #: A value outside a fixed vocabulary: ``error``, ``drop`` the row (counted), or ``category`` (``<unknown>``).
    on_unknown: Literal["error", "drop", "category"] = "error"
    value_map: Mapping[str, str] = field(default_factory=dict)
    strip_annotations: bool = False
    html_unescape: bool = False
    lowercase: bool = False

    rules = (
        Rule("a separator for a multi_categorical feature",
             lambda c: c.kind != "multi_categorical" or bool(c.separator), ("name", "kind", "separator")),
        Rule("on_missing to be one of " + "; ".join(f"{k}: {', '.join(v)}" for k, v in _ON_MISSING.items()),
             lambda c: c.on_missing in _ON_MISSING[c.kind], ("name", "kind", "on_missing")),
        Rule("vocabulary or vocabulary_file, not both",
             lambda c: c.vocabulary is None or c.vocabulary_file is None, ("name",)),
    )

    def __post_init__(self) -> None:
        # TOML may give numbers as vocabulary values and a list of missing values: normalise first.
        if self.vocabulary is not None and not isinstance(self.vocabulary, str):
            object.__setattr__(self, "vocabulary", tuple(str(v) for v in self.vocabulary))
        if isinstance(self.value_map, Mapping):
            object.__setattr__(self, "value_map", dict(self.value_map))
        super().__post_init__()

    @property
    def source(self) -> str:
        """The column the feature is read from (its own name unless ``column`` says otherwise)."""
        return self.column or self.name


@dataclass(frozen=True)
class TableSpec(ValidatedConfig):
    """A user or item table: where it is, its id column, its features."""

    id: str
    features: tuple[FeatureSpec, ...]
    path: str | None = None
    format: Literal["csv", "tsv", "parquet"] | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    #: Keep only the rows that have ratings (after cleaning), so vocabularies built from the
    #: data hold no never-rated values. Rows are never reordered.
    prune_unrated: bool = True

    rules = (Rule("at least one feature (learners need one)", lambda c: len(c.features) > 0, ("id",)),)


@dataclass(frozen=True)
class RatingsSpec(ValidatedConfig):
    """The ratings file and what to do with its bad records."""

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    #: Time column (numbers, or ISO-8601 date/times); ``None``: the file order is the time.
    time: str | None = None
    path: str | None = None
    format: Literal["csv", "tsv", "parquet"] | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    #: Repeated (user, item) pairs: ``error`` (naming both lines), or keep the ``first``/``last``
    #: by (time, file position), counting the others as dropped.
    duplicates: Literal["error", "first", "last"] = "error"
    #: A rating whose user/item is not in the table: ``error`` or ``drop`` (counted).
    unknown_users: Literal["error", "drop"] = "error"
    unknown_items: Literal["error", "drop"] = "error"
    #: A rating outside [rating_min, rating_max]: ``error`` or ``drop`` (counted).
    out_of_range: Literal["error", "drop"] = "error"


@dataclass(frozen=True)
class DatasetSpec:
    """Everything :func:`assemble` needs to know about a dataset besides its raw tables."""

    name: str
    ratings: RatingsSpec
    users: TableSpec
    items: TableSpec
    rating_min: float = 1.0
    rating_max: float = 5.0
    #: This dataset's protocol defaults (keys of :class:`~metarec.data.protocol.ProtocolConfig`).
    protocol: Mapping[str, Any] = field(default_factory=dict)
    #: Directory that relative paths (tables, vocabulary files) are resolved against.
    base_dir: str = "."

    def resolve(self, path: str) -> Path:
        """A path from the schema file, relative paths taken from the schema file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


# ------------------------------------------------------------------------------ the TOML file


def load_schema_file(path: str | Path) -> DatasetSpec:
    """Read a dataset schema TOML file (see the module docstring); errors name the key at fault."""
    path = Path(path)
    raw = load_toml(path)
    where = str(path)
    known = {"name", "rating_min", "rating_max", "ratings", "users", "items", "protocol"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for section in ("ratings", "users", "items"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{where}: missing [{section}] table")
        if "path" not in raw[section]:
            raise ConfigError(f"{where}: [{section}] needs a path")
    ratings = build_config(RatingsSpec, raw["ratings"], where=f"{where} [ratings]")
    tables = {}
    for side in ("users", "items"):
        sec = dict(raw[side])
        feats = sec.pop("features", None)
        if not isinstance(feats, list) or not feats:
            raise ConfigError(f"{where}: [{side}] needs a non-empty features list")
        specs = []
        for k, f in enumerate(feats):
            if not isinstance(f, dict) or "name" not in f or "kind" not in f:
                raise ConfigError(f"{where}: {side}.features[{k}] needs at least name and kind")
            specs.append(build_config(FeatureSpec, f, where=f"{where} {side}.features[{k}] ({f.get('name')})"))
        tables[side] = build_config(TableSpec, {**sec, "features": tuple(specs)}, where=f"{where} [{side}]")
    protocol = raw.get("protocol", {})
    if not isinstance(protocol, dict):
        raise ConfigError(f"{where}: [protocol] must be a table")
    _check_protocol_keys(protocol, where)
    try:
        return DatasetSpec(
            name=str(raw.get("name", path.stem)),
            ratings=ratings,
            users=tables["users"],
            items=tables["items"],
            rating_min=float(raw.get("rating_min", 1.0)),
            rating_max=float(raw.get("rating_max", 5.0)),
            protocol=protocol,
            base_dir=str(path.parent),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_protocol_keys(protocol: Mapping[str, Any], where: str) -> None:
    from metarec.data.protocol import dataset_default_keys

    valid = dataset_default_keys()
    bad = sorted(set(protocol) - set(valid))
    if bad:
        raise ConfigError(
            f"{where} [protocol]: key(s) {', '.join(bad)} cannot be set by a dataset; valid here: {', '.join(valid)} "
            "(give the other protocol settings when you run, e.g. `metarec bench --protocol ...`)"
        )
    rule = protocol.get("user_state_rule")
    if rule is not None and rule not in ("time_quantile", "id_order"):
        raise ConfigError(f"{where} [protocol]: user_state_rule must be time_quantile or id_order, got {rule!r}")
    cold = protocol.get("item_cold_max_ratings")
    if cold is not None and (not isinstance(cold, int) or isinstance(cold, bool) or cold < 0):
        raise ConfigError(f"{where} [protocol]: item_cold_max_ratings must be a non-negative integer, got {cold!r}")


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def combined_checksum(digests: Mapping[str, str]) -> str:
    """One checksum for a set of files: sha256 over ``name:digest`` lines in name order."""
    text = "\n".join(f"{k}:{v}" for k, v in sorted(digests.items()))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def spec_files(spec: DatasetSpec) -> dict[str, Path]:
    """The data files a custom spec reads (ratings, users, items, vocabulary files)."""
    out = {}
    for key, p in (("ratings", spec.ratings.path), ("users", spec.users.path), ("items", spec.items.path)):
        if p is None:
            raise ConfigError(f"dataset {spec.name!r}: {key} has no path")
        out[key] = spec.resolve(p)
    for side, table in (("users", spec.users), ("items", spec.items)):
        for f in table.features:
            if f.vocabulary_file:
                out[f"{side}.{f.name}.vocabulary"] = spec.resolve(f.vocabulary_file)
    return out


def load_custom(config_path: str | Path) -> InteractionData:
    """Load your own data as described by the schema file at ``config_path``."""
    spec = load_schema_file(config_path)
    files = spec_files(spec)
    for key, p in files.items():
        if not p.exists():
            raise DataFormatError(config_path, f"{key} file not found: {p}")
    r, u, i = spec.ratings, spec.users, spec.items
    rating_cols = [r.user, r.item, r.rating] + ([r.time] if r.time else [])
    ratings = read_table(files["ratings"], format=r.format, delimiter=r.delimiter, encoding=r.encoding, columns=rating_cols)
    users = read_table(files["users"], format=u.format, delimiter=u.delimiter, encoding=u.encoding, columns=_table_columns(u))
    items = read_table(files["items"], format=i.format, delimiter=i.delimiter, encoding=i.encoding, columns=_table_columns(i))
    digests = {key: file_digest(p, "sha256") for key, p in files.items()}
    digests["schema"] = file_digest(config_path, "sha256")
    return assemble(
        spec,
        ratings,
        users,
        items,
        checksum=combined_checksum(digests),
        canonical=None,
        source_files={key: str(p) for key, p in files.items()},
        notes=[f"custom dataset from {config_path}"],
    )


def _table_columns(table: TableSpec) -> list[str]:
    cols = [table.id]
    for f in table.features:
        if f.source not in cols:
            cols.append(f.source)
    return cols


# ------------------------------------------------------------------------------- assembling


def assemble(
    spec: DatasetSpec,
    ratings: RawTable,
    users: RawTable,
    items: RawTable,
    *,
    drops: Mapping[str, int] | None = None,
    checksum: str = "",
    canonical: bool | None = None,
    source_files: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
    extras: Mapping[str, Any] | None = None,
    time: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> InteractionData:
    """Clean, check and encode raw tables into an :class:`InteractionData`.

    ``ratings`` must have the columns named in ``spec.ratings`` (``time`` may instead be passed
    as an array, and ``order`` -- each record's position in its source file, the tie-breaker for
    equal times -- too, when the loader removed records before); ``drops`` are counts the loader
    already made (they are merged). Every record
    that is removed is counted under a reason; nothing is removed silently.
    """
    counts: Counter[str] = Counter(drops or {})
    rs = spec.ratings
    n_raw = len(ratings)
    # file position: the stable tie-breaker for equal times
    order = np.arange(n_raw, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    if len(order) != n_raw:
        raise ValueError(f"order has {len(order)} values for {n_raw} ratings")

    u_prep = _prepare_table(spec, spec.users, users, "user", counts)
    i_prep = _prepare_table(spec, spec.items, items, "item", counts)

    # --- ratings -> table rows
    u_row = _lookup(ratings.column(rs.user), u_prep.ids_raw)
    i_row = _lookup(ratings.column(rs.item), i_prep.ids_raw)
    keep = np.ones(n_raw, dtype=bool)
    for side, rows, prep, policy in (("user", u_row, u_prep, rs.unknown_users), ("item", i_row, i_prep, rs.unknown_items)):
        unknown = rows < 0
        if unknown.any():
            if policy == "error":
                k = int(np.flatnonzero(unknown)[0])
                raise ratings.error(
                    k,
                    f"{side} {show(ratings.column(rs.user if side == 'user' else rs.item)[k])} is not in the {side} table "
                    f"({prep.path}); {int(unknown.sum())} rating(s) have unknown {side}s "
                    f"(set unknown_{side}s = \"drop\" to drop and count them)",
                )
            counts[f"ratings_unknown_{side}"] += int(unknown.sum())
            keep &= ~unknown
        dropped_entity = ~unknown & ~prep.keep[np.maximum(rows, 0)]
        if dropped_entity.any():
            counts[f"ratings_of_dropped_{side}s"] += int((dropped_entity & keep).sum())
            keep &= ~dropped_entity

    # --- rating values
    rating = parse_numbers(ratings, rs.rating)
    bad = ~((rating >= spec.rating_min) & (rating <= spec.rating_max))
    if (bad & keep).any():
        if rs.out_of_range == "error":
            k = int(np.flatnonzero(bad & keep)[0])
            raise ratings.error(
                k,
                f"rating {show(ratings.column(rs.rating)[k])} is outside the declared range "
                f"[{spec.rating_min:g}, {spec.rating_max:g}] ({int((bad & keep).sum())} such ratings)",
            )
        counts["ratings_out_of_range"] += int((bad & keep).sum())
        keep &= ~bad

    # --- time
    if time is None:
        time = _parse_time(ratings, rs.time) if rs.time else order.astype(np.float64)
    time = np.asarray(time, dtype=np.float64)

    # --- duplicates among the kept ratings
    kept = np.flatnonzero(keep)
    if len(kept):
        key = u_row[kept] * max(len(i_prep.ids_raw), 1) + i_row[kept]
        by = np.lexsort((order[kept], time[kept], key))
        sk = key[by]
        same = np.flatnonzero(sk[1:] == sk[:-1])
        if len(same):
            if rs.duplicates == "error":
                a, b = kept[by[same[0]]], kept[by[same[0] + 1]]
                raise ratings.error(
                    int(b),
                    f"duplicate rating of {rs.item} {show(ratings.column(rs.item)[b])} by {rs.user} "
                    f"{show(ratings.column(rs.user)[b])} (first at line {int(ratings.lines[a])}); "
                    f"{len(same)} duplicate(s) in all (set duplicates = \"first\" or \"last\" to keep one)",
                )
            # keep the first (or last) of each run of equal keys, in (time, file position) order
            first_of_run = np.ones(len(sk), dtype=bool)
            first_of_run[1:] = sk[1:] != sk[:-1]
            last_of_run = np.ones(len(sk), dtype=bool)
            last_of_run[:-1] = sk[1:] != sk[:-1]
            chosen = first_of_run if rs.duplicates == "first" else last_of_run
            counts["ratings_duplicate"] += int((~chosen).sum())
            keep[kept[by[~chosen]]] = False
    kept = np.flatnonzero(keep)

    # --- prune tables to the rated rows, then encode
    u_final = u_prep.keep.copy()
    i_final = i_prep.keep.copy()
    for final, rows, tspec, side in ((u_final, u_row, spec.users, "user"), (i_final, i_row, spec.items, "item")):
        if tspec.prune_unrated:
            rated = np.zeros(len(final), dtype=bool)
            rated[rows[kept]] = True
            unrated = final & ~rated
            if unrated.any():
                counts[f"{side}s_without_ratings"] += int(unrated.sum())
            final &= rated
    user_table, user_features, u_new = _encode_table(spec, spec.users, u_prep, u_final, "user")
    item_table, item_features, i_new = _encode_table(spec, spec.items, i_prep, i_final, "item")

    schema = FeatureSchema(
        user_features, item_features, spec.rating_min, spec.rating_max, name=spec.name,
    )
    counts_out = {k: int(v) for k, v in counts.items() if v}
    return InteractionData(
        name=spec.name,
        schema=schema,
        users=user_table,
        items=item_table,
        user=u_new[u_row[kept]],
        item=i_new[i_row[kept]],
        rating=rating[kept].astype(np.float32),
        time=time[kept],
        order=order[kept],
        checksum=checksum,
        canonical=canonical,
        source_files=dict(source_files or {}),
        drops=counts_out,
        protocol_defaults=dict(spec.protocol),
        notes=list(notes or []) + [n for t in (ratings, users, items) for n in t.notes],
        extras=dict(extras or {}),
    )


@dataclass
class _Prepared:
    """A table after cleaning: per feature, per row, the cleaned value(s); rows to keep."""

    path: str
    ids_raw: np.ndarray
    keep: np.ndarray
    values: dict[str, Any]  # name -> object array (categorical / multi: tuples) or float array
    table: RawTable


def _prepare_table(spec: DatasetSpec, tspec: TableSpec, table: RawTable, side: str, counts: Counter) -> _Prepared:
    ids = table.column(tspec.id)
    ids_norm = _normalise_ids(ids)
    # duplicate ids are ambiguous: which row's features would a rating get?
    uniq, first, cnt = np.unique(ids_norm, return_index=True, return_counts=True)
    if (cnt > 1).any():
        dup = uniq[cnt > 1][0]
        rows = np.flatnonzero(ids_norm == dup)
        raise table.error(int(rows[1]), f"{side} id {show(ids[rows[1]])} appears more than once (first at {table.unit} {int(table.lines[rows[0]])})")
    keep = np.ones(len(table), dtype=bool)
    values: dict[str, Any] = {}
    for f in tspec.features:
        col = table.column(f.source)
        vocab = _fixed_vocabulary(spec, f)
        if f.kind == "numeric":
            x = _numeric_column(table, f)
            missing = np.isnan(x)
            values[f.name] = x
        else:
            cleaned, missing, unknown = _clean_column(col, f, vocab)
            values[f.name] = cleaned
            if unknown.any():
                if f.on_unknown == "error":
                    k = int(np.flatnonzero(unknown)[0])
                    bad = [v for v in _as_tuple(cleaned[k]) if v not in set(vocab or ())]
                    shown = ", ".join(map(repr, list(vocab or ())[:8]))
                    raise table.error(
                        k,
                        f"{side} feature {f.name!r}: value {show(bad[0] if bad else col[k])} is not in its vocabulary "
                        f"({len(vocab or ())} values: {shown}{', ...' if len(vocab or ()) > 8 else ''}); "
                        f"{int(unknown.sum())} row(s) affected (set on_unknown to drop or category)",
                    )
                if f.on_unknown == "drop":
                    counts[f"{side}s_unknown_{f.name}"] += int((unknown & keep).sum())
                    keep &= ~unknown
        if missing.any():
            if f.on_missing == "error":
                k = int(np.flatnonzero(missing)[0])
                raise table.error(
                    k,
                    f"{side} feature {f.name!r} is missing (value {show(col[k])}); {int(missing.sum())} row(s) affected "
                    f"(set on_missing to drop, category{', empty' if f.kind == 'multi_categorical' else ''}"
                    f"{', mean' if f.kind == 'numeric' else ''})",
                )
            if f.on_missing == "drop":
                counts[f"{side}s_missing_{f.name}"] += int((missing & keep).sum())
                keep &= ~missing
    return _Prepared(table.id_path or table.path, ids_norm, keep, values, table)


def _normalise_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as int64 when every id is an integer, else as stripped strings (one rule for all files)."""
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    as_str = np.array([("" if v is None else str(v)).strip() for v in ids], dtype=object)
    return as_str


def _lookup(values: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """Row of each value in ``table_ids`` (-1 if absent); ints and strings are compared as text."""
    v = _normalise_ids(values)
    t = table_ids
    if (v.dtype.kind in "iu") != (t.dtype.kind in "iu"):
        v = np.array([str(x) for x in v], dtype=object)
        t = np.array([str(x) for x in t], dtype=object)
    if len(t) == 0:
        return np.full(len(v), -1, dtype=np.int64)
    if v.dtype == object:
        v, t = v.astype(str), t.astype(str)
    sorter = np.argsort(t, kind="stable")
    pos = np.searchsorted(t, v, sorter=sorter)
    pos = np.minimum(pos, len(t) - 1)
    rows = sorter[pos]
    return np.where(t[rows] == v, rows, -1).astype(np.int64)


def _fixed_vocabulary(spec: DatasetSpec, f: FeatureSpec) -> tuple[str, ...] | None:
    if f.vocabulary is not None:
        return f.vocabulary
    if f.vocabulary_file is None:
        return None
    from metarec.data.readers import decode, read_bytes, text_lines

    path = spec.resolve(f.vocabulary_file)
    words = [w.strip() for w in text_lines(decode(read_bytes(path), path, "utf-8"))]
    words = [w for w in words if w]
    dup = [w for w, c in Counter(words).items() if c > 1]
    if dup:
        raise DataFormatError(path, f"vocabulary of feature {f.name!r} lists {dup[0]!r} more than once")
    return tuple(words)


def _clean_value(v: str, f: FeatureSpec) -> str:
    v = v.strip()
    if f.html_unescape:
        v = html.unescape(v).strip()
    if f.lowercase:
        v = v.lower()
    if f.strip_annotations:
        v = _ANNOTATION.sub("", v).strip()
    return f.value_map.get(v, v)


def _clean_column(col: np.ndarray, f: FeatureSpec, vocab: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cleaned values (str, or tuple of str for multi), missing mask, unknown mask (fixed vocabulary only).

    Cleaning runs once per distinct raw value, which keeps large tables fast.
    """
    raw = np.array(["\x00<None>" if v is None else str(v) for v in col], dtype=object)
    uniq, inverse = np.unique(raw.astype(str), return_inverse=True) if len(raw) else (np.array([], dtype=str), np.array([], dtype=np.int64))
    missing_set = set(f.missing_values)
    vocab_set = set(vocab) if vocab is not None else None
    u_clean = np.empty(len(uniq), dtype=object)
    u_missing = np.zeros(len(uniq), dtype=bool)
    u_unknown = np.zeros(len(uniq), dtype=bool)
    for j, r in enumerate(uniq):
        if r == "\x00<None>":
            u_clean[j] = () if f.kind == "multi_categorical" else None
            u_missing[j] = True
            continue
        if f.kind == "multi_categorical":
            vals = []
            for part in r.split(f.separator):
                c = _clean_value(part, f)
                if c not in missing_set and c not in vals:
                    vals.append(c)
            u_clean[j] = tuple(vals)
            u_missing[j] = not vals
            u_unknown[j] = vocab_set is not None and any(v not in vocab_set for v in vals)
        else:
            c = _clean_value(r, f)
            u_clean[j] = c
            u_missing[j] = c in missing_set
            u_unknown[j] = vocab_set is not None and not u_missing[j] and c not in vocab_set
    return u_clean[inverse], u_missing[inverse], u_unknown[inverse]


def _as_tuple(v: Any) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _numeric_column(table: RawTable, f: FeatureSpec) -> np.ndarray:
    col = table.column(f.source)
    if col.dtype != object:
        return col.astype(np.float64)
    missing = set(f.missing_values)
    out = np.empty(len(col), dtype=np.float64)
    for k, v in enumerate(col):
        if v is None or (isinstance(v, str) and v.strip() in missing):
            out[k] = np.nan
            continue
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise table.error(k, f"feature {f.name!r}: {v!r} is not a number") from None
    return out


def _parse_time(table: RawTable, name: str) -> np.ndarray:
    """Numbers as they are; ISO-8601 strings as seconds since the epoch (UTC)."""
    col = table.column(name)
    if col.dtype != object:
        return col.astype(np.float64)
    try:
        return np.array([float(v) for v in col], dtype=np.float64)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(col), dtype=np.float64)
    for k, v in enumerate(col):
        try:
            out[k] = float(v)
            continue
        except (TypeError, ValueError):
            pass
        try:
            out[k] = np.datetime64(str(v).strip().replace(" ", "T").rstrip("Z"), "s").astype(np.int64)
        except ValueError:
            raise table.error(k, f"time column {name!r}: {v!r} is neither a number nor an ISO-8601 date/time") from None
    return out


def _encode_table(
    spec: DatasetSpec, tspec: TableSpec, prep: _Prepared, final: np.ndarray, side: str
) -> tuple[FeatureTable, tuple[Feature, ...], np.ndarray]:
    """Build vocabularies (from the final rows) and the :class:`FeatureTable`; returns old-row -> new-row."""
    rows = np.flatnonzero(final)
    new_index = np.full(len(final), -1, dtype=np.int64)
    new_index[rows] = np.arange(len(rows))
    features: list[Feature] = []
    columns: dict[str, torch.Tensor] = {}
    for f in tspec.features:
        vals = prep.values[f.name][rows]
        if f.kind == "numeric":
            x = vals.astype(np.float64)
            nan = np.isnan(x)
            mean = float(np.nanmean(x)) if (~nan).any() else 0.0
            x = np.where(nan, mean, x)  # only reachable with on_missing="mean"
            std = float(x.std()) if len(x) else 1.0
            std = std if std > 0 else 1.0
            features.append(Feature(f.name, "numeric", mean=mean, std=std))
            columns[f.name] = torch.as_tensor((x - mean) / std, dtype=torch.float32)
            continue
        fixed = _fixed_vocabulary(spec, f)
        seen: list[str] = []
        if fixed is None:
            seen_set: set[str] = set()
            for v in vals:
                for t in _as_tuple(v):
                    if t is not None and t not in seen_set and t not in f.missing_values:
                        seen_set.add(t)
                        seen.append(t)
            vocab = list(seen if f.vocabulary_order == "first_seen" else sorted(seen))
        else:
            vocab = list(fixed)
        index = {v: k for k, v in enumerate(vocab)}
        missing_set = set(f.missing_values)

        def code(v: str | None) -> int:
            if v is None or v in missing_set:
                if f.on_missing != "category":
                    return -1
                if MISSING_CATEGORY not in index:
                    index[MISSING_CATEGORY] = len(vocab)
                    vocab.append(MISSING_CATEGORY)
                return index[MISSING_CATEGORY]
            if v not in index:  # only a fixed vocabulary can miss a value; on_unknown="category"
                if UNKNOWN_CATEGORY not in index:
                    index[UNKNOWN_CATEGORY] = len(vocab)
                    vocab.append(UNKNOWN_CATEGORY)
                return index[UNKNOWN_CATEGORY]
            return index[v]

        if f.kind == "categorical":
            col = np.array([code(v) for v in vals], dtype=np.int64)
            if (col < 0).any():  # pragma: no cover - excluded by the missing policy
                raise AssertionError(f"{side} feature {f.name!r}: unencoded value")
            features.append(Feature(f.name, "categorical", tuple(vocab)))
            columns[f.name] = torch.as_tensor(col, dtype=torch.long)
        else:
            lists = []
            for v in vals:
                if not v and f.on_missing == "category":
                    lists.append([code(None)])
                else:
                    lists.append([code(t) for t in v])
            longest = max((len(x) for x in lists), default=1)
            width = f.max_values or max(longest, 1)
            if longest > width:
                k = next(j for j, x in enumerate(lists) if len(x) > width)
                raise prep.table.error(int(rows[k]), f"{side} feature {f.name!r} has {len(lists[k])} values, more than max_values={width}")
            mat = np.full((len(lists), width), -1, dtype=np.int64)
            for j, x in enumerate(lists):
                mat[j, : len(x)] = x
            if not vocab:
                vocab = [MISSING_CATEGORY]  # every row empty: keep the feature well-formed
            features.append(Feature(f.name, "multi_categorical", tuple(vocab), separator=f.separator, max_values=width))
            columns[f.name] = torch.as_tensor(mat, dtype=torch.long)
    ids = np.array([str(x) for x in prep.ids_raw[rows]], dtype=str)
    if len(ids) == 0:
        ids = np.array([], dtype=str)
    return FeatureTable(tuple(features), columns, ids), tuple(features), new_index


__all__ = [
    "ASSEMBLY_VERSION",
    "DatasetSpec",
    "FeatureSpec",
    "RatingsSpec",
    "TableSpec",
    "assemble",
    "combined_checksum",
    "file_digest",
    "load_custom",
    "load_schema_file",
]
