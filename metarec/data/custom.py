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
from dataclasses import dataclass, field, replace
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
ASSEMBLY_VERSION = 2

MISSING_CATEGORY = "<missing>"
UNKNOWN_CATEGORY = "<unknown>"
#: The one feature of a side declared without features: every row has the same value, so a
#: method's embedding of it is a learned default vector (or bias) shared by all users/items.
CONSTANT_FEATURE = "_constant"
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
    #: The value a missing entry becomes under ``on_missing = "category"``.
    missing_category: str = MISSING_CATEGORY
    #: Multi-valued from 0/1 flag columns: the columns (of the table) whose value ``1`` means
    #: "has this value"; the values are the column names, or ``flag_labels`` when given.
    flags: tuple[str, ...] | None = None
    flag_labels: tuple[str, ...] | None = None
    #: A relational file with one ``(id, value)`` row per value (many public releases): the
    #: values of this feature come from ``file``'s ``column``, joined on its ``id`` column.
    file: "FileSpec | None" = None
    #: Derive the value: ``year`` (of a date; ``date_format`` is a ``strptime`` format such as
    #: ``"%d-%b-%Y"``, without it ISO dates), or ``count`` (number of rows of this id in ``file``
    #: or number of values of ``column``; a number, bucketed by ``bins`` unless kind is numeric).
    derive: Literal["year", "count"] | None = None
    date_format: str | None = None
    #: Bucket a number into a categorical value: ascending edges ``[e1, e2, ...]`` make the
    #: values ``<e1``, ``[e1,e2)``, ..., ``>=ek``.
    bins: tuple[float, ...] | None = None

    rules = (
        Rule("a separator for a multi_categorical feature (or flags = [...] columns, or a relational file)",
             lambda c: (c.kind != "multi_categorical" or bool(c.separator) or c.flags is not None
                        or (c.file is not None and c.derive is None)), ("name", "kind", "separator")),
        Rule("on_missing to be one of " + "; ".join(f"{k}: {', '.join(v)}" for k, v in _ON_MISSING.items()),
             lambda c: c.on_missing in _ON_MISSING[c.kind], ("name", "kind", "on_missing")),
        Rule("vocabulary or vocabulary_file, not both",
             lambda c: c.vocabulary is None or c.vocabulary_file is None, ("name",)),
    )

    def __post_init__(self) -> None:
        implicit = self.flags is not None or (self.file is not None and self.derive is None)
        if self.kind == "multi_categorical" and not self.separator and not implicit:
            raise ValueError(
                f"multi_categorical feature {self.name!r} needs a separator (or flags = [...] columns, or a relational file)"
            )
        if self.flags is not None:
            if self.kind != "multi_categorical" or not self.flags:
                raise ValueError(f"feature {self.name!r}: flags need kind = \"multi_categorical\" and at least one column")
            if self.flag_labels is not None and len(self.flag_labels) != len(self.flags):
                raise ValueError(f"feature {self.name!r}: flag_labels has {len(self.flag_labels)} labels for {len(self.flags)} flags")
            object.__setattr__(self, "flags", tuple(self.flags))
        if self.bins is not None:
            b = [float(x) for x in self.bins]
            if not b or any(x >= y for x, y in zip(b, b[1:])):
                raise ValueError(f"feature {self.name!r}: bins must be a non-empty ascending list of numbers, got {list(self.bins)}")
            if self.kind != "categorical":
                raise ValueError(f"feature {self.name!r}: bins make a categorical feature; set kind = \"categorical\"")
            object.__setattr__(self, "bins", tuple(b))
        if self.derive == "count" and self.kind == "multi_categorical":
            raise ValueError(f"feature {self.name!r}: derive = \"count\" gives a number; use kind numeric or categorical with bins")
        if self.date_format is not None and self.derive != "year":
            raise ValueError(f"feature {self.name!r}: date_format is used with derive = \"year\" only")
        object.__setattr__(self, "missing_values", tuple(self.missing_values))
        object.__setattr__(self, "value_map", dict(self.value_map))
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
class FileSpec(ValidatedConfig):
    """A relational feature file: one row per (id, value); ``id`` and ``column`` name its columns."""

    path: str
    id: str = "id"
    column: str = "value"
    format: Literal["csv", "tsv", "dat", "parquet"] | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    header: bool = True
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec(ValidatedConfig):
    """A user or item table: where it is, its id column, its features."""

    id: str = "id"
    #: May be empty: the side then gets the constant feature :data:`CONSTANT_FEATURE` (see
    #: :func:`assemble`), which every method embeds as one learned default vector/bias.
    features: tuple[FeatureSpec, ...] = ()
    #: ``None``: no table, the ids are those of the ratings file (no features).
    path: str | None = None
    format: Literal["csv", "tsv", "dat", "parquet"] | None = None
    #: ``None``: ``,`` for csv, tab for tsv; ``dat`` needs one (any length, e.g. ``::``).
    delimiter: str | None = None
    encoding: str = "utf-8"
    #: ``False``: the first line is data; name the columns with ``names`` (else "0", "1", ...).
    header: bool = True
    names: tuple[str, ...] | None = None
    #: Keep only the rows that have ratings (after cleaning), so vocabularies built from the
    #: data hold no never-rated values. Rows are never reordered.
    prune_unrated: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        super().__post_init__()


@dataclass(frozen=True)
class RatingsSpec(ValidatedConfig):
    """The ratings file and what to do with its bad records."""

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    #: Time column (numbers, or ISO-8601 date/times); ``None``: the file order is the time.
    time: str | None = None
    #: ``strptime`` format of a time column written as text (e.g. ``"%d-%b-%Y %H:%M"``).
    time_format: str | None = None
    path: str | None = None
    format: Literal["csv", "tsv", "dat", "parquet"] | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    header: bool = True
    names: tuple[str, ...] | None = None
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
    if not isinstance(raw.get("ratings"), dict):
        raise ConfigError(f"{where}: missing [ratings] table")
    if "path" not in raw["ratings"]:
        raise ConfigError(f"{where}: [ratings] needs a path")
    ratings = build_config(RatingsSpec, raw["ratings"], where=f"{where} [ratings]")
    _check_names(ratings, f"{where} [ratings]")
    tables = {}
    for side in ("users", "items"):
        sec = raw.get(side)
        if sec is None:  # no table: ids from the ratings file, no features
            tables[side] = TableSpec(id="id", features=(), path=None)
            continue
        if not isinstance(sec, dict):
            raise ConfigError(f"{where}: [{side}] must be a table")
        sec = dict(sec)
        feats = sec.pop("features", [])
        if not isinstance(feats, list):
            raise ConfigError(f"{where}: [{side}] features must be a list of tables")
        if "path" not in sec and feats and any(not (isinstance(f, dict) and "file" in f) for f in feats):
            raise ConfigError(f"{where}: [{side}] needs a path (features read from its columns); only relational "
                              "features (file = {{...}}) work without one")
        specs = []
        for k, f in enumerate(feats):
            fwhere = f"{where} {side}.features[{k}] ({f.get('name') if isinstance(f, dict) else f})"
            if not isinstance(f, dict) or "name" not in f or "kind" not in f:
                raise ConfigError(f"{where}: {side}.features[{k}] needs at least name and kind")
            f = dict(f)
            if "file" in f:
                if not isinstance(f["file"], dict) or "path" not in f["file"]:
                    raise ConfigError(f"{fwhere}: file must be a table with at least a path, e.g. "
                                      "file = {{ path = \"x.dat\", header = false, names = [\"id\", \"value\"] }}")
                f["file"] = build_config(FileSpec, f["file"], where=f"{fwhere} file")
                _check_names(f["file"], f"{fwhere} file")
            specs.append(build_config(FeatureSpec, f, where=fwhere))
        if "path" not in sec and "id" not in sec:
            sec["id"] = "id"
        tables[side] = build_config(TableSpec, {**sec, "features": tuple(specs)}, where=f"{where} [{side}]")
        _check_names(tables[side], f"{where} [{side}]")
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
    if rule is not None and rule not in ("time_quantile", "id_order", "random"):
        raise ConfigError(f"{where} [protocol]: user_state_rule must be time_quantile, id_order or random, got {rule!r}")
    order = protocol.get("rating_order")
    if order is not None and order not in ("time", "random"):
        raise ConfigError(f"{where} [protocol]: rating_order must be time or random, got {order!r}")
    cold = protocol.get("item_cold_max_ratings")
    if cold is not None and (not isinstance(cold, int) or isinstance(cold, bool) or cold < 0):
        raise ConfigError(f"{where} [protocol]: item_cold_max_ratings must be a non-negative integer, got {cold!r}")


def _check_names(spec: Any, where: str) -> None:
    """``names`` is for headerless files; their column references must be among them."""
    names = getattr(spec, "names", None)
    if names is None:
        return
    if getattr(spec, "format", None) == "parquet":
        raise ConfigError(f"{where}: names apply to text files, not parquet")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: names lists a column twice: {list(names)}")
    if isinstance(spec, RatingsSpec):
        refs = [("user", spec.user), ("item", spec.item), ("rating", spec.rating), ("time", spec.time)]
    elif isinstance(spec, FileSpec):
        refs = [("id", spec.id), ("column", spec.column)]
    else:
        refs = [("id", spec.id)] + [(f"features {f.name!r}", c) for f in spec.features if f.file is None
                                    for c in (f.flags or (f.source,))]
    for key, col in refs:
        if col is not None and col not in names:
            raise ConfigError(f"{where}: {key} column {col!r} is not in names {list(names)}")


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
    if spec.ratings.path is None:
        raise ConfigError(f"dataset {spec.name!r}: ratings has no path")
    out = {"ratings": spec.resolve(spec.ratings.path)}
    for key, p in (("users", spec.users.path), ("items", spec.items.path)):
        if p is not None:
            out[key] = spec.resolve(p)
    for side, table in (("users", spec.users), ("items", spec.items)):
        for f in table.features:
            if f.vocabulary_file:
                out[f"{side}.{f.name}.vocabulary"] = spec.resolve(f.vocabulary_file)
            if f.file is not None:
                out[f"{side}.{f.name}.file"] = spec.resolve(f.file.path)
    return out


def load_custom(config_path: str | Path) -> InteractionData:
    """Load your own data as described by the schema file at ``config_path``."""
    spec = load_schema_file(config_path)
    files = spec_files(spec)
    for key, p in files.items():
        if not p.exists():
            raise DataFormatError(config_path, f"{key} file not found: {p}")
    digests = {key: file_digest(p, "sha256") for key, p in files.items()}
    digests["schema"] = file_digest(config_path, "sha256")
    ratings, users, items = read_spec_tables(spec, files)
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


def read_spec_tables(spec: DatasetSpec, files: Mapping[str, Path] | None = None) -> tuple[RawTable, RawTable, RawTable]:
    """Read the ratings file and the user/item tables a spec names, with relational and flag features joined in.

    A side without a table gets one made of the ratings file's ids (in order of first
    appearance); every feature ends up as one column of its table (see :func:`_derive_columns`).
    """
    files = dict(files or spec_files(spec))
    r = spec.ratings
    rating_cols = [r.user, r.item, r.rating] + ([r.time] if r.time else [])
    ratings = read_table(files["ratings"], format=r.format, delimiter=r.delimiter, encoding=r.encoding,
                         columns=rating_cols, header=r.header, names=r.names)
    if len(ratings) == 0:
        raise DataFormatError(files["ratings"], "the ratings file has no data rows"
                              + (" (only a header line)" if r.header else "") + "; nothing to load")
    tables = []
    for side, tspec, id_col in (("users", spec.users, r.user), ("items", spec.items, r.item)):
        if tspec.path is None:
            ids = ratings.column(id_col)
            _, first = np.unique(_normalise_ids(ids).astype(str), return_index=True)
            first = np.sort(first)
            table = RawTable(ratings.path, {tspec.id: ids[first]}, ratings.lines[first])
        else:
            table = read_table(files[side], format=tspec.format, delimiter=tspec.delimiter, encoding=tspec.encoding,
                               columns=_table_columns(tspec), header=tspec.header, names=tspec.names)
            if len(table) == 0:
                raise DataFormatError(files[side], f"the {side} file has no data rows"
                                      + (" (only a header line)" if tspec.header else "")
                                      + f"; give its rows or remove [{side}] to take the ids from the ratings file")
        tables.append(_derive_columns(spec, tspec, table, side))
    return ratings, tables[0], tables[1]


def _table_columns(table: TableSpec) -> list[str]:
    cols = [table.id]
    for f in table.features:
        if f.file is not None:
            continue
        for c in f.flags or (f.source,):
            if c not in cols:
                cols.append(c)
    return cols


#: Joins the values of a multi-valued feature built by :func:`_derive_columns` (never in real text).
_JOIN = "\x1f"


def derived_source(f: FeatureSpec) -> str:
    """The table column that holds feature ``f`` after :func:`_derive_columns`."""
    return f"\x00{f.name}" if (f.flags or f.file is not None or f.derive or f.bins) else f.source


def _derive_columns(spec: DatasetSpec, tspec: TableSpec, table: RawTable, side: str) -> RawTable:
    """Add one column per feature that is not a plain column: flags, relational files, year, count, bins."""
    ids = _normalise_ids(table.column(tspec.id))
    for f in tspec.features:
        if derived_source(f) == f.source:
            continue
        if f.flags is not None:
            labels = f.flag_labels or f.flags
            flag_cols = []
            for c in f.flags:
                col = table.column(c)
                flags = np.array([str(v).strip() for v in col], dtype=object)
                bad = ~np.isin(flags, ["0", "1"])
                if bad.any():
                    k = int(np.flatnonzero(bad)[0])
                    raise table.error(k, f"{side} feature {f.name!r}: flag column {c!r} holds {show(col[k])}, expected 0 or 1")
                flag_cols.append(flags == "1")
            on = np.stack(flag_cols, axis=1) if flag_cols else np.zeros((len(table), 0), bool)
            values = np.array([_JOIN.join(lab for lab, x in zip(labels, row) if x) for row in on], dtype=object)
        elif f.file is not None:
            fs = f.file
            path = spec.resolve(fs.path)
            rel = read_table(path, format=fs.format, delimiter=fs.delimiter, encoding=fs.encoding,
                             columns=[fs.id, fs.column], header=fs.header, names=fs.names)
            rel_ids = rel.column(fs.id)
            rows = _lookup(rel_ids, ids)
            per: dict[int, list[str]] = {}
            for k, (row, v) in enumerate(zip(rows, rel.column(fs.column))):
                if row >= 0:
                    per.setdefault(int(row), []).append(str(v).strip())
            n_orphan = int((rows < 0).sum())
            if n_orphan:
                table.notes.append(f"{path}: {n_orphan} row(s) of ids absent from the {side} table ignored (feature {f.name!r})")
            if f.derive == "count":
                values = np.array([str(len(set(per.get(k, ())))) for k in range(len(table))], dtype=object)
            elif f.kind != "multi_categorical":
                many = next((k for k, v in per.items() if len(set(v)) > 1), None)
                if many is not None:
                    raise DataFormatError(path, f"{side} {show(ids[many])} has {len(set(per[many]))} values of the {f.kind} "
                                                f"feature {f.name!r}; declare it multi_categorical")
                values = np.array([per[k][0] if k in per else "" for k in range(len(table))], dtype=object)
            else:
                values = np.array([_JOIN.join(per.get(k, ())) for k in range(len(table))], dtype=object)
        else:
            col = table.column(f.source)
            if f.derive == "year":
                values = np.array([_year(table, k, v, f) for k, v in enumerate(col)], dtype=object)
            elif f.derive == "count":
                if not f.separator:
                    raise DataFormatError(table.path, f"{side} feature {f.name!r}: derive = \"count\" on a column needs a separator")
                values = np.array([str(len({p.strip() for p in str(v).split(f.separator) if p.strip()})) for v in col], dtype=object)
            else:
                values = np.asarray(col, dtype=object)
        if f.bins is not None:
            values = np.array([_bucket(table, k, v, f, side) for k, v in enumerate(values)], dtype=object)
        table.columns[derived_source(f)] = values
    return table


def _year(table: RawTable, k: int, value: Any, f: FeatureSpec) -> str:
    import datetime as _dt

    v = "" if value is None else str(value).strip()
    if v in f.missing_values:
        return ""
    try:
        if f.date_format:
            return str(_dt.datetime.strptime(v, f.date_format).year)
        return str(_dt.date.fromisoformat(v[:10]).year)
    except ValueError:
        want = f"the format {f.date_format!r}" if f.date_format else "an ISO date (or set date_format)"
        raise table.error(k, f"feature {f.name!r}: {v!r} is not a date in {want}") from None


def _bucket(table: RawTable, k: int, value: Any, f: FeatureSpec, side: str) -> str:
    v = "" if value is None else str(value).strip()
    if v in f.missing_values:
        return ""
    try:
        x = float(v)
    except ValueError:
        raise table.error(k, f"{side} feature {f.name!r}: {v!r} is not a number to bucket by bins") from None
    edges = f.bins or ()
    fmt = lambda e: f"{e:g}"  # noqa: E731
    if x < edges[0]:
        return f"<{fmt(edges[0])}"
    for a, b in zip(edges, edges[1:]):
        if a <= x < b:
            return f"[{fmt(a)},{fmt(b)})"
    return f">={fmt(edges[-1])}"


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

    if n_raw == 0:
        raise DataFormatError(ratings.path, "the ratings file has no data rows; nothing to load")
    for table, tspec, side in ((users, spec.users, "users"), (items, spec.items, "items")):
        if len(table) == 0:
            raise DataFormatError(table.id_path or table.path, f"the {side} table has no data rows (a header only?); "
                                  f"every rating would lose its {side[:-1]}")
        if any(derived_source(f) not in table.columns for f in tspec.features):
            _derive_columns(spec, tspec, table, side)
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
    has_time = time is not None or rs.time is not None
    if time is None:
        time = _parse_time(ratings, rs.time, rs.time_format) if rs.time else order.astype(np.float64)
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
    if len(kept) == 0:
        why = ", ".join(f"{k}: {v}" for k, v in counts.items() if v) or "no reason counted"
        raise DataFormatError(ratings.path, f"all {n_raw} ratings were dropped while cleaning ({why}); check the declared policies")

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
        has_time=has_time,
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
    for f in map(_effective, tspec.features):
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


def _effective(f: FeatureSpec) -> FeatureSpec:
    """``f`` reading its derived column (flags, relational file, year, count, bins), if it has one."""
    src = derived_source(f)
    if src == f.source:
        return f
    multi = f.kind == "multi_categorical"
    return replace(f, column=src, separator=_JOIN if multi else None, flags=None, file=None, derive=None,
                   date_format=None, bins=None, kind="categorical" if f.bins is not None else f.kind)


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


def _parse_time(table: RawTable, name: str, time_format: str | None = None) -> np.ndarray:
    """Numbers as they are; ISO-8601 strings (or ``time_format``, a ``strptime`` format) as seconds since the epoch (UTC)."""
    col = table.column(name)
    if time_format is not None and col.dtype == object:
        import datetime as _dt

        out = np.empty(len(col), dtype=np.float64)
        for k, v in enumerate(col):
            try:
                t = _dt.datetime.strptime(str(v).strip(), time_format)
            except ValueError:
                raise table.error(k, f"time column {name!r}: {v!r} does not match time_format {time_format!r}") from None
            out[k] = t.replace(tzinfo=t.tzinfo or _dt.timezone.utc).timestamp()
        return out
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
    if not tspec.features:
        features.append(Feature(CONSTANT_FEATURE, "categorical", ("all",)))
        columns[CONSTANT_FEATURE] = torch.zeros(len(rows), dtype=torch.long)
    for f in map(_effective, tspec.features):
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
                if f.missing_category not in index:
                    index[f.missing_category] = len(vocab)
                    vocab.append(f.missing_category)
                return index[f.missing_category]
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
                vocab = [f.missing_category]  # every row empty: keep the feature well-formed
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
