"""Readers for delimited text (and Parquet) that name the file and line of every problem.

Loaders never index raw text by position: every reader here returns a :class:`RawTable` whose
``lines`` column keeps each record's source line, so that later checks (unknown ids, values
out of range, duplicates) can still say where the bad record is. The fast paths are
vectorised; when a fast path sees anything unusual it hands over to a slow, line-by-line path
whose only job is to find and describe the first bad line.
"""

from __future__ import annotations

from metarec.errors import UserError

import csv
import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


class DataFormatError(UserError, ValueError):
    """A data file cannot be read as declared; the message names the file, line and value."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, *, unit: str = "line") -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}, {unit} {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class DataNotFoundError(UserError, FileNotFoundError):
    """Dataset files are missing; the message says which files to put where (or how to download)."""


@dataclass
class RawTable:
    """Columns of one source file before any cleaning, plus each record's source location.

    ``columns`` hold numpy arrays (``int64``/``float64`` for numbers read by a numeric fast path,
    otherwise ``object`` arrays of ``str`` or ``None``); ``lines[k]`` is the 1-based line (or
    row, for Parquet) where record ``k`` starts.
    """

    path: str
    columns: dict[str, np.ndarray]
    lines: np.ndarray
    unit: str = "line"
    notes: list[str] = field(default_factory=list)
    #: The file that defines which ids exist, when not ``path`` (a table joined from two files).
    id_path: str | None = None

    def __post_init__(self) -> None:
        self.lines = np.asarray(self.lines, dtype=np.int64)
        for name, col in self.columns.items():
            if len(col) != len(self.lines):
                raise ValueError(f"{self.path}: column {name!r} has {len(col)} values for {len(self.lines)} records")

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, name: str) -> np.ndarray:
        """The values of column ``name`` (an error naming the file and its columns otherwise)."""
        if name not in self.columns:
            known = ", ".join(self.columns) or "(none)"
            raise DataFormatError(self.path, f"missing column {name!r}; the file has: {known}")
        return self.columns[name]

    def error(self, index: int, message: str) -> DataFormatError:
        """An error about record ``index`` (a row of this table)."""
        return DataFormatError(self.path, message, int(self.lines[index]), unit=self.unit)

    def take(self, keep: np.ndarray) -> "RawTable":
        """The records selected by a boolean mask or an index array."""
        return RawTable(self.path, {k: v[keep] for k, v in self.columns.items()}, self.lines[keep], self.unit,
                        list(self.notes), self.id_path)


# --------------------------------------------------------------------------------------- text


def show(value: object) -> str:
    """``repr`` of a value as a user would write it (numpy scalars as plain numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, with an error that names the file when it cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataFormatError(path, "expected a file, found a directory") from None


def decode(raw: bytes, path: str | Path, encoding: str) -> str:
    """Decode ``raw`` as ``encoding``; a wrong encoding is an error naming the line where it shows."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and b"\x00" in raw[:4096]):
        raise DataFormatError(
            path, f"the file looks UTF-16/UTF-32 encoded (byte-order mark or NUL bytes); expected {encoding}"
        )
    if raw.startswith(b"\xef\xbb\xbf") and encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
        raw = raw[3:]
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(
            path, f"byte {raw[exc.start:exc.start + 1]!r} is not valid {encoding} ({exc.reason}); is the file in another encoding?", line
        ) from None
    except LookupError:
        raise DataFormatError(path, f"unknown encoding {encoding!r}") from None


def text_lines(text: str) -> list[str]:
    """Physical lines without their ``\\n``/``\\r\\n`` ends; a final line end is optional."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


_SEPARATOR_HINTS = {"::": "'::'", ";": "';'", ",": "','", "\t": "a tab"}


def _separator_hint(line: str, expected: str) -> str:
    for sep, label in _SEPARATOR_HINTS.items():
        if sep != expected and sep in line and expected not in line:
            return f" (the line contains {label} but no {_SEPARATOR_HINTS.get(expected, repr(expected))}: wrong separator?)"
    return ""


def read_separated(
    path: str | Path, names: Sequence[str], *, separator: str = "::", encoding: str = "latin-1"
) -> RawTable:
    """A headerless file with ``len(names)`` fields per line split on ``separator`` (MovieLens ``.dat``).

    Every line must have exactly that many fields; blank lines are errors except at the end.
    """
    text = decode(read_bytes(path), path, encoding)
    lines = text_lines(text)
    while lines and not lines[-1].strip():
        lines.pop()
    n = len(names)
    rows: list[list[str]] = []
    for i, line in enumerate(lines, start=1):
        parts = line.split(separator)
        if len(parts) != n:
            what = "blank line" if not line.strip() else f"expected {n} {separator!r}-separated fields, found {len(parts)}"
            hint = _separator_hint(line, separator) if line.strip() else ""
            if len(parts) < n and i == len(lines) and line.strip():
                hint += " (the file may be truncated)"
            raise DataFormatError(path, f"{what}{hint}: {line[:80]!r}", i)
        rows.append(parts)
    cols = {name: np.empty(len(rows), dtype=object) for name in names}
    for j, name in enumerate(names):
        cols[name][:] = [r[j] for r in rows]
    return RawTable(str(path), cols, np.arange(1, len(rows) + 1))


def read_separated_ints(
    path: str | Path, names: Sequence[str], *, separator: str = "::", encoding: str = "latin-1"
) -> RawTable:
    """Like :func:`read_separated` for all-integer files (``ratings.dat``), vectorised.

    The fast path validates the bytes (digits, separator, line ends only; the same number of
    separators on every line) and parses with numpy; if anything is off, a line-by-line pass
    finds the first bad line and reports it.
    """
    raw = read_bytes(path)
    decode(raw[:4096], path, encoding) if len(raw) <= 4096 else _check_head(raw, path, encoding)
    fast = _fast_int_table(raw, len(names), separator.encode(encoding))
    if fast is None:
        return _slow_int_table(path, raw, names, separator, encoding)
    return RawTable(str(path), {name: fast[:, j] for j, name in enumerate(names)}, np.arange(1, len(fast) + 1))


def _check_head(raw: bytes, path: str | Path, encoding: str) -> None:
    # Only the wide-encoding check needs the head; bad bytes later are found by the slow path.
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4096]:
        decode(raw[:4096], path, encoding)


def _fast_int_table(raw: bytes, n_fields: int, sep: bytes) -> np.ndarray | None:
    if not raw:
        return np.zeros((0, n_fields), dtype=np.int64)
    if len(sep) == 0 or len(set(sep)) != 1:
        return None
    body = raw if raw.endswith(b"\n") else raw + b"\n"
    buf = np.frombuffer(body, dtype=np.uint8)
    allowed = np.zeros(256, dtype=bool)
    allowed[list(b"0123456789\r\n")] = True
    allowed[sep[0]] = True
    if not allowed[buf].all():
        return None
    newline = np.flatnonzero(buf == 10)
    # separator bytes per line (bincount over line numbers: no file-sized temporaries)
    per_line = np.bincount(np.searchsorted(newline, np.flatnonzero(buf == sep[0])), minlength=len(newline))
    if not (per_line == len(sep) * (n_fields - 1)).all():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            values = np.fromstring(body.replace(sep, b" "), dtype=np.int64, sep=" ")  # noqa: NPY201
        except (ValueError, DeprecationWarning):
            return None
    if values.size != len(newline) * n_fields:
        return None
    return values.reshape(len(newline), n_fields)


def _slow_int_table(path: str | Path, raw: bytes, names: Sequence[str], separator: str, encoding: str) -> RawTable:
    table = read_separated(path, names, separator=separator, encoding=encoding)
    out = {}
    for name in names:
        col = table.columns[name]
        try:
            out[name] = np.array([int(v) for v in col], dtype=np.int64)
        except (ValueError, OverflowError):
            for k, v in enumerate(col):
                try:
                    if not -(2**63) <= int(v) < 2**63:
                        raise table.error(k, f"field {name!r} is too large for a 64-bit integer: {v!r}")
                except ValueError:
                    raise table.error(k, f"field {name!r} is not an integer: {v!r}") from None
            raise  # pragma: no cover - unreachable
    return RawTable(table.path, out, table.lines)


#: Plausible Unix timestamps of a rating (seconds): 1990-01-01 up to a day after now.
TIMESTAMP_MIN = 631152000


def check_timestamps(table: RawTable, name: str, *, digits: int | None = None) -> None:
    """Every value of integer column ``name`` is a plausible Unix time in seconds.

    A timestamp cut short, one with extra digits (or saturated to the int64 maximum) and a
    negative one are errors naming the file and line. ``digits``: the exact number of digits
    the release writes (ML-1M: 9), checked on top of the range.
    """
    import time

    col = np.asarray(table.columns[name])
    hi = int(time.time()) + 86400
    bad = np.flatnonzero((col < TIMESTAMP_MIN) | (col > hi))
    if bad.size:
        k = int(bad[0])
        if abs(int(col[k])) >= 2**63 - 1:  # the fast parser saturates a number too long for int64
            raise table.error(k, f"{name} has more digits than a 64-bit integer holds (a Unix time in seconds has "
                                 "9-10 digits); is the value garbled?")
        raise table.error(k, f"{name} {int(col[k])} is not a plausible Unix time in seconds (allowed "
                             f"{TIMESTAMP_MIN} = 1990-01-01 .. {hi} = now); is the value cut short or garbled?")


def check_not_empty(table: RawTable, what: str) -> None:
    """A required file with no records is an error naming it (not a crash further on)."""
    if len(next(iter(table.columns.values()), [])) == 0:
        raise DataFormatError(table.path, f"the file holds no records; {what}")


# ------------------------------------------------------------------------- quoted ;-CSV (BX)

# A quoted field ends at a quote followed by the separator or the end of the record; any other
# quote inside it is literal. This is how the BX-CSV-Dump is really written: titles contain
# backslash-escaped quotes, and three records end a title with a backslash right before the
# closing quote, which makes escape-aware parsers shift every later column.
_QUOTED_FIELD = re.compile(r'"((?:[^"]|"(?!;|$))*)"(?=;|$)', re.DOTALL)


def split_quoted_record(record: str) -> list[str | None] | None:
    """Fields of one ``;``-separated record with optional ``"`` quoting; ``None`` if a quote is unclosed.

    Unquoted fields are returned as-is (``NULL`` stays the string ``"NULL"``).
    """
    # Fast paths: every field quoted and no quote other than the delimiting ones (optionally
    # followed by an unquoted NULL, as the BX users' missing ages are written).
    if record.startswith('"') and record.endswith('"') and '"' not in record[1:-1].replace('";"', ""):
        return record[1:-1].split('";"')
    if record.startswith('"') and record.endswith('";NULL') and '"' not in record[1:-6].replace('";"', ""):
        return record[1:-6].split('";"') + ["NULL"]
    fields: list[str | None] = []
    pos, n = 0, len(record)
    while True:
        if pos < n and record[pos] == '"':
            m = _QUOTED_FIELD.match(record, pos)
            if m is None:
                return None  # an opening quote without its closing one: the record continues
            fields.append(m.group(1))
            pos = m.end()
        else:
            end = record.find(";", pos)
            end = n if end < 0 else end
            fields.append(record[pos:end])
            pos = end
        if pos >= n:
            return fields
        pos += 1  # skip the separator
        if pos == n:
            fields.append("")
            return fields


def read_quoted_csv(
    path: str | Path,
    header: Sequence[str],
    *,
    encoding: str = "latin-1",
    max_continuation_lines: int = 5,
) -> RawTable:
    """A ``;``-separated file with a header line and ``"``-quoted fields (the BX-CSV-Dump format).

    A record whose quoted field is still open at the end of a physical line continues on the
    next line (the dump has one such record); the joined record keeps a ``\\n`` there. The header
    must name exactly the expected columns, in any order. Returns ``object`` columns of ``str``.
    """
    text = decode(read_bytes(path), path, encoding)
    lines = text_lines(text)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError(path, "the file is empty; expected a header line " + ";".join(f'"{h}"' for h in header))
    head = split_quoted_record(lines[0])
    if head is None or len(head) == 1 and ";" not in lines[0]:
        hint = _separator_hint(lines[0], ";")
        raise DataFormatError(path, f"cannot read the header line{hint}: {lines[0][:100]!r}", 1)
    head = [h.strip() for h in head]  # type: ignore[union-attr]
    missing = [h for h in header if h not in head]
    if missing:
        raise DataFormatError(
            path, f"missing column(s) {', '.join(map(repr, missing))} in the header; found {', '.join(map(repr, head))}", 1
        )
    index = [head.index(h) for h in header]
    n = len(head)
    records: list[list[str | None]] = []
    starts: list[int] = []
    i = 1
    while i < len(lines):
        start = i
        record = lines[i]
        fields = split_quoted_record(record)
        while fields is None and i + 1 < len(lines) and i - start < max_continuation_lines:
            i += 1
            record = record + "\n" + lines[i]
            fields = split_quoted_record(record)
        if fields is None:
            raise DataFormatError(path, f"unterminated quoted field: {lines[start][:100]!r}", start + 1)
        if len(fields) != n:
            if not record.strip():
                raise DataFormatError(path, "blank line inside the data", start + 1)
            hint = _separator_hint(record, ";")
            if len(fields) < n and i == len(lines) - 1:
                hint += " (the file may be truncated)"
            raise DataFormatError(path, f"expected {n} ';'-separated fields, found {len(fields)}{hint}: {record[:100]!r}", start + 1)
        records.append(fields)
        starts.append(start + 1)
        i += 1
    cols = {}
    for name, j in zip(header, index):
        col = np.empty(len(records), dtype=object)
        col[:] = [r[j] for r in records]
        cols[name] = col
    return RawTable(str(path), cols, np.asarray(starts, dtype=np.int64))


# --------------------------------------------------------------------- generic CSV / Parquet


def read_csv(path: str | Path, *, delimiter: str = ",", encoding: str = "utf-8", columns: Sequence[str] | None = None) -> RawTable:
    """A CSV file with a header line (Python's csv dialect: ``"`` quoting, embedded line breaks).

    Only ``columns`` are kept (all when ``None``); a missing one is an error listing the header.
    """
    text = decode(read_bytes(path), path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        head = next(reader)
    except StopIteration:
        raise DataFormatError(path, "the file is empty; expected a header line") from None
    except csv.Error as exc:
        raise DataFormatError(path, f"cannot read the header: {exc}", 1) from None
    head = [h.strip() for h in head]
    want = list(head) if columns is None else list(columns)
    missing = [c for c in want if c not in head]
    if missing:
        hint = ""
        if len(head) == 1:
            hint = _separator_hint(head[0], delimiter)
        raise DataFormatError(
            path, f"missing column(s) {', '.join(map(repr, missing))}; the header has {', '.join(map(repr, head))}{hint}", 1
        )
    index = [head.index(c) for c in want]
    n = len(head)
    rows: list[list[str]] = []
    starts: list[int] = []
    prev_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataFormatError(path, f"malformed CSV: {exc}", reader.line_num) from None
        start = prev_end + 1
        prev_end = reader.line_num
        if not row:
            continue  # csv yields [] for blank lines
        if len(row) != n:
            hint = _separator_hint(delimiter.join(row), delimiter) if len(row) == 1 else ""
            raise DataFormatError(path, f"expected {n} fields, found {len(row)}{hint}: {row!r}"[:200], start)
        rows.append(row)
        starts.append(start)
    cols = {}
    for name, j in zip(want, index):
        col = np.empty(len(rows), dtype=object)
        col[:] = [r[j] for r in rows]
        cols[name] = col
    return RawTable(str(path), cols, np.asarray(starts, dtype=np.int64))


def read_parquet(path: str | Path, *, columns: Sequence[str] | None = None) -> RawTable:
    """A Parquet file through pyarrow (an optional dependency: ``pip install metarec[parquet]``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"reading {path} needs pyarrow, which is not installed; install it with "
            "`pip install 'metarec[parquet]'` (or `pip install pyarrow`), or convert the file to CSV"
        ) from None
    if not Path(path).exists():
        raise DataNotFoundError(f"file not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataFormatError(path, f"cannot read as Parquet: {exc}") from None
    names = table.column_names
    want = list(names) if columns is None else list(columns)
    missing = [c for c in want if c not in names]
    if missing:
        raise DataFormatError(path, f"missing column(s) {', '.join(map(repr, missing))}; the file has {', '.join(map(repr, names))}")
    cols = {}
    for c in want:
        values = table.column(c).to_pylist()
        col = np.empty(len(values), dtype=object)
        col[:] = [None if v is None else (v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)) for v in values]
        cols[c] = col
    return RawTable(str(path), cols, np.arange(1, table.num_rows + 1), unit="row")


#: File extensions whose format is known; anything else needs ``format`` (and ``delimiter``).
EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet", ".dat": "dat"}
FORMATS = ("csv", "tsv", "dat", "parquet")


def detect_format(path: str | Path, format: str | None = None) -> str:
    """``format`` if given, else the one the extension names; an unknown extension is an error saying what to set."""
    if format is not None:
        fmt = format.lower()
        if fmt not in FORMATS:
            raise DataFormatError(path, f"unknown format {format!r}; use {', '.join(FORMATS)}")
        return fmt
    ext = Path(path).suffix.lower()
    if ext in EXTENSION_FORMATS:
        return EXTENSION_FORMATS[ext]
    raise DataFormatError(
        path,
        f"cannot tell the format from the extension {ext or '(none)'!r}; set format = \"csv\" (quoted fields), "
        "\"tsv\" or \"dat\" (plain fields split on delimiter, e.g. \"::\" or \"|\"), or \"parquet\", and delimiter",
    )


def read_table(
    path: str | Path,
    *,
    format: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    columns: Sequence[str] | None = None,
    header: bool = True,
    names: Sequence[str] | None = None,
) -> RawTable:
    """A table by ``format`` (or by the file extension: ``.csv``, ``.tsv``/``.tab``, ``.dat``, ``.parquet``).

    ``csv``/``tsv`` use Python's csv dialect (``"`` quoting); ``dat`` splits each line on
    ``delimiter`` literally (any length, no quoting: the MovieLens/HIN ``.dat`` layouts), and needs
    ``delimiter``. ``header = False`` reads every line as data, with columns named by ``names``
    (or ``"0"``, ``"1"``, ... by position when ``names`` is not given).
    """
    fmt = detect_format(path, format)
    if fmt == "parquet":
        return read_parquet(path, columns=columns)
    if fmt == "dat" and not delimiter:
        raise DataFormatError(path, "format 'dat' needs a delimiter (e.g. delimiter = \"::\", \"|\" or \"\\t\")")
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    if fmt in ("csv", "tsv") and len(delim) != 1:
        raise DataFormatError(path, f"format {fmt!r} needs a one-character delimiter, got {delim!r}; use format = \"dat\" for {delim!r}")
    if fmt == "csv" and header and names is None:
        return read_csv(path, delimiter=delim, encoding=encoding, columns=columns)
    return _read_headerless_or_named(path, fmt, delim, encoding, header, names, columns)


def _read_headerless_or_named(
    path: str | Path, fmt: str, delim: str, encoding: str, header: bool, names: Sequence[str] | None,
    columns: Sequence[str] | None,
) -> RawTable:
    text = decode(read_bytes(path), path, encoding)
    if fmt == "dat":
        lines = text_lines(text)
        while lines and not lines[-1].strip():
            lines.pop()
        records = [ln.split(delim) for ln in lines]
        starts = list(range(1, len(records) + 1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim, strict=True)
        records, starts = [], []
        prev_end = 0
        try:
            for row in reader:
                start, prev_end = prev_end + 1, reader.line_num
                if row:
                    records.append(row)
                    starts.append(start)
        except csv.Error as exc:
            raise DataFormatError(path, f"malformed CSV: {exc}", reader.line_num) from None
    head_line = None
    if header:
        if not records:
            raise DataFormatError(path, "the file is empty; expected a header line (set header = false if it has none)")
        head_line = [h.strip() for h in records.pop(0)]
        starts.pop(0)
    if names is None:
        names = head_line if head_line is not None else [str(k) for k in range(len(records[0]) if records else 0)]
    names = [str(n) for n in names]
    n = len(names)
    want = list(names) if columns is None else list(columns)
    missing = [c for c in want if c not in names]
    if missing:
        src = "names" if head_line is None or names is not head_line else "the header"
        hint = _separator_hint(delim.join(head_line or [""]), delim) if head_line and len(head_line) == 1 else ""
        raise DataFormatError(path, f"missing column(s) {', '.join(map(repr, missing))}; {src} has {', '.join(map(repr, names))}{hint}")
    for rec, start in zip(records, starts):
        if len(rec) != n:
            raw = delim.join(rec)
            what = "blank line" if not raw.strip() else f"expected {n} {delim!r}-separated fields, found {len(rec)}"
            hint = _separator_hint(raw, delim) if raw.strip() else ""
            raise DataFormatError(path, f"{what}{hint}: {raw[:80]!r}", start)
    index = [names.index(c) for c in want]
    cols = {}
    for name, j in zip(want, index):
        col = np.empty(len(records), dtype=object)
        col[:] = [r[j] for r in records]
        cols[name] = col
    return RawTable(str(path), cols, np.asarray(starts, dtype=np.int64))


def parse_numbers(table: RawTable, name: str, *, integer: bool = False) -> np.ndarray:
    """Column ``name`` as float64 (or int64) numbers; the first non-number is an error naming its line."""
    col = table.column(name)
    if col.dtype != object:
        return col.astype(np.int64 if integer else np.float64)
    try:
        values = np.array([float(v) if v is not None else np.nan for v in col], dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or np.isnan(values).any() or (integer and not np.all(np.mod(values, 1) == 0)):
        for k, v in enumerate(col):
            try:
                x = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise table.error(k, f"column {name!r}: {v!r} is not a number") from None
            if np.isnan(x):
                raise table.error(k, f"column {name!r}: missing value")
            if integer and not float(x).is_integer():
                raise table.error(k, f"column {name!r}: {v!r} is not an integer")
    return values.astype(np.int64) if integer else values  # type: ignore[union-attr]
