"""Book-Crossing (Ziegler et al. 2004) from the original BX-CSV-Dump, cleaned as in MAMO's appendix A.1.2.

Files: ``BX-Book-Ratings.csv``, ``BX-Users.csv``, ``BX-Books.csv`` -- ``;``-separated, every
field quoted (except ``NULL`` ages), ISO-8859-1, a header line; one user record contains a line
break inside its quoted location; three book titles end in a backslash right before the
closing quote (see :func:`metarec.data.readers.read_quoted_csv`, which reads them correctly).

Features (MAMO): user = age (categorical over the 106 values 5..110), country; item = year of
publication, author, publisher (all categorical, vocabularies from the cleaned data).

Cleaning rules (the paper fixes the first four; the others are our documented choices, each
counted in ``InteractionData.drops``):

* ratings: explicit ratings 1-10 only; the implicit ``0`` ratings are dropped
  (``ratings_implicit_0``). A rating that is not an integer in 0..10 is an error naming its line.
* users: age an integer in [5, 110] (``NULL`` -> ``users_age_missing``, otherwise
  ``users_age_out_of_range``; a non-numeric age is an error); a country is required.
* **country** = the last comma-separated component of Location, HTML entities decoded,
  lower-cased, whitespace collapsed, surrounding punctuation/quotes removed; a value without any
  letter, or one of ``n/a``, ``na``, ``none``, ``null``, ``unknown``, ``-``, is missing
  (``users_country_missing``). Spelling variants ("españa" vs "spain") are NOT merged.
* books: year of publication an integer in [1500, 2010]; ``0`` means unknown
  (``books_year_zero``), other years outside the range, including future years, are
  ``books_year_out_of_range``, non-numbers ``books_year_not_a_number``; author and publisher
  required (HTML entities decoded, whitespace collapsed, case kept; empty -> dropped, counted).
* **ISBN** (in both files) = upper-cased, every character other than 0-9 and X removed
  ("0-345-45104-x" -> "034545104X"); an ISBN left empty is ``*_isbn_invalid``. Two book
  records with the same normalised ISBN: the first in file order is kept
  (``books_duplicate_isbn``).
* ratings of users / books that are absent from their file or were dropped by the rules above
  are dropped (``ratings_user_*``, ``ratings_book_*``): the paper drops records "whose user or
  item lacks a profile".
* **duplicates**: the same (user, normalised ISBN) rated twice keeps the first rating in file
  order (``ratings_duplicate``; configurable).
* **time**: the file has none; the position in ``BX-Book-Ratings.csv`` is the pseudo-time
  (paper: "we assume the data stored in the public dataset are based on the review time").
* **user order** for the warm/cold rule: the user table is ordered by numeric User-ID, and the
  protocol's ``id_order`` rule marks the first 90 % of the kept users in that order warm.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from metarec.config import Rule, ValidatedConfig, setting
from metarec.data.base import InteractionData
from metarec.data.custom import DatasetSpec, FeatureSpec, RatingsSpec, TableSpec, assemble
from metarec.data.readers import RawTable, read_quoted_csv

RATINGS_FILE = "BX-Book-Ratings.csv"
USERS_FILE = "BX-Users.csv"
BOOKS_FILE = "BX-Books.csv"
RATINGS_HEADER = ("User-ID", "ISBN", "Book-Rating")
USERS_HEADER = ("User-ID", "Location", "Age")
BOOKS_HEADER = ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher")

MISSING_COUNTRY = frozenset({"n/a", "na", "none", "null", "unknown", "-"})
_PUNCT = " \t\r\n\"'.,;:!?*-_/\\()[]{}<>|`~"
_ISBN_JUNK = re.compile(r"[^0-9X]")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class BookCrossingOptions(ValidatedConfig):
    """Cleaning choices; the defaults are the paper's (appendix A.1.2) plus the documented rules above."""

    age_min: int = setting(5, ge=0)
    age_max: int = setting(110, ge=0)
    year_min: int = setting(1500, ge=0)
    year_max: int = setting(2010, ge=0)
    #: Repeated (user, ISBN) pairs: keep the first/last in file order, or fail.
    duplicates: Literal["first", "last", "error"] = "first"

    rules = (
        Rule("age_min <= age_max", lambda c: c.age_min <= c.age_max, ("age_min", "age_max")),
        Rule("year_min <= year_max", lambda c: c.year_min <= c.year_max, ("year_min", "year_max")),
    )


def normalise_country(location: str) -> str:
    """The country of a BX location ("city, state, country"); ``""`` when there is none."""
    last = location.split(",")[-1]
    c = _SPACES.sub(" ", html.unescape(last).lower()).strip(_PUNCT)
    if not any(ch.isalpha() for ch in c) or c in MISSING_COUNTRY:
        return ""
    return c


def normalise_isbn(isbn: str) -> str:
    """Upper-case and keep only 0-9 and X."""
    return _ISBN_JUNK.sub("", isbn.upper())


def _per_distinct(fn, values) -> list:
    """``[fn(v) for v in values]``, computing ``fn`` once per distinct value (columns repeat a lot)."""
    memo: dict = {}
    out = []
    for v in values:
        try:
            out.append(memo[v])
        except KeyError:
            out.append(memo.setdefault(v, fn(v)))
    return out


def _clean_text(v: str | None) -> str:
    return "" if v is None else _SPACES.sub(" ", html.unescape(v)).strip()


def _int_or_none(v: str | None) -> int | None:
    try:
        x = float(str(v).strip())
    except (TypeError, ValueError):
        return None
    return int(x) if x.is_integer() else None


def load_bookcrossing(directory: str | Path, options: BookCrossingOptions | None = None) -> InteractionData:
    """Parse and clean the BX-CSV-Dump files in ``directory`` (checksums are the catalog's job)."""
    opts = options or BookCrossingOptions()
    d = Path(directory)
    drops: dict[str, int] = {}

    def count(reason: str, n: int) -> None:
        if n:
            drops[reason] = drops.get(reason, 0) + int(n)

    # ----- users
    users = read_quoted_csv(d / USERS_FILE, USERS_HEADER)
    uid = _integer_column(users, "User-ID")
    age_raw = users.columns["Age"]
    ages = np.array(_per_distinct(_int_or_none, age_raw), dtype=object)
    null_age = np.array([str(a).strip().upper() in ("NULL", "") for a in age_raw])
    bad_age = np.array([a is None for a in ages]) & ~null_age
    if bad_age.any():
        k = int(np.flatnonzero(bad_age)[0])
        raise users.error(k, f"Age {age_raw[k]!r} is neither an integer nor NULL")
    age = np.array([-1 if a is None else a for a in ages], dtype=np.int64)
    in_range = (age >= opts.age_min) & (age <= opts.age_max)
    country = np.array(_per_distinct(lambda loc: normalise_country(str(loc)), users.columns["Location"]), dtype=object)
    keep_u = np.ones(len(users), dtype=bool)
    count("users_age_missing", null_age.sum())
    keep_u &= ~null_age
    count("users_age_out_of_range", (keep_u & ~in_range).sum())
    keep_u &= in_range
    count("users_country_missing", (keep_u & (country == "")).sum())
    keep_u &= country != ""
    _check_unique(users, uid, "User-ID")
    users.columns.update({"user_id": uid, "age": age.astype(str).astype(object), "country": country})
    all_user_ids = set(uid.tolist())
    users = users.take(np.flatnonzero(keep_u)[np.argsort(uid[keep_u], kind="stable")])  # numeric User-ID order

    # ----- books
    books = read_quoted_csv(d / BOOKS_FILE, BOOKS_HEADER)
    isbn = np.array(_per_distinct(lambda v: normalise_isbn(str(v)), books.columns["ISBN"]), dtype=object)
    years = _per_distinct(_int_or_none, books.columns["Year-Of-Publication"])
    year = np.array([-1 if y is None else y for y in years], dtype=np.int64)
    not_number = np.array([y is None for y in years])
    author = np.array(_per_distinct(_clean_text, books.columns["Book-Author"]), dtype=object)
    publisher = np.array(_per_distinct(_clean_text, books.columns["Publisher"]), dtype=object)
    keep_b = np.ones(len(books), dtype=bool)
    count("books_isbn_invalid", (isbn == "").sum())
    keep_b &= isbn != ""
    count("books_year_not_a_number", (keep_b & not_number).sum())
    keep_b &= ~not_number
    count("books_year_zero", (keep_b & (year == 0)).sum())
    keep_b &= year != 0
    in_years = (year >= opts.year_min) & (year <= opts.year_max)
    count("books_year_out_of_range", (keep_b & ~in_years).sum())
    keep_b &= in_years
    count("books_author_missing", (keep_b & (author == "")).sum())
    keep_b &= author != ""
    count("books_publisher_missing", (keep_b & (publisher == "")).sum())
    keep_b &= publisher != ""
    # duplicate normalised ISBNs (any record, kept or not, claims the ISBN: the first wins)
    _, first_idx = np.unique(isbn.astype(str), return_index=True)
    is_first = np.zeros(len(books), dtype=bool)
    is_first[first_idx] = True
    dup_b = ~is_first & (isbn != "")
    count("books_duplicate_isbn", (keep_b & dup_b).sum())
    keep_b &= ~dup_b
    books.columns.update({"isbn": isbn, "year": year.astype(str).astype(object), "author": author, "publisher": publisher})
    all_isbns = set(isbn[is_first].tolist())
    books = books.take(np.flatnonzero(keep_b))

    # ----- ratings
    ratings = read_quoted_csv(d / RATINGS_FILE, RATINGS_HEADER)
    r_uid = _integer_column(ratings, "User-ID")
    r_isbn = np.array(_per_distinct(lambda v: normalise_isbn(str(v)), ratings.columns["ISBN"]), dtype=object)
    r_val = _integer_column(ratings, "Book-Rating")
    bad = (r_val < 0) | (r_val > 10)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ratings.error(k, f"Book-Rating {ratings.columns['Book-Rating'][k]!r} is outside 0..10 ({int(bad.sum())} such ratings)")
    keep_r = np.ones(len(ratings), dtype=bool)
    count("ratings_implicit_0", (r_val == 0).sum())
    keep_r &= r_val != 0
    kept_users = set(users.columns["user_id"].tolist())
    kept_books = set(books.columns["isbn"].tolist())
    known_u = np.array([u in kept_users for u in r_uid.tolist()])
    in_file_u = np.array([u in all_user_ids for u in r_uid.tolist()])
    count("ratings_user_not_in_users_file", (keep_r & ~in_file_u).sum())
    count("ratings_user_dropped_by_cleaning", (keep_r & in_file_u & ~known_u).sum())
    keep_r &= known_u
    count("ratings_isbn_invalid", (keep_r & (r_isbn == "")).sum())
    keep_r &= r_isbn != ""
    known_b = np.array([b in kept_books for b in r_isbn.tolist()])
    in_file_b = np.array([b in all_isbns for b in r_isbn.tolist()])
    count("ratings_book_not_in_books_file", (keep_r & ~in_file_b).sum())
    count("ratings_book_dropped_by_cleaning", (keep_r & in_file_b & ~known_b).sum())
    keep_r &= known_b
    ratings.columns.update({"user_id": r_uid, "isbn": r_isbn, "rating": r_val})
    position = np.arange(len(ratings), dtype=np.float64)  # pseudo-time: file position
    ratings = ratings.take(np.flatnonzero(keep_r))
    time = position[keep_r]

    spec = DatasetSpec(
        name="book-crossing",
        ratings=RatingsSpec(user="user_id", item="isbn", rating="rating", time=None, duplicates=opts.duplicates),
        users=TableSpec(id="user_id", features=(
            FeatureSpec("age", "categorical", vocabulary=tuple(str(a) for a in range(opts.age_min, opts.age_max + 1))),
            FeatureSpec("country", "categorical"),
        )),
        items=TableSpec(id="isbn", features=(
            FeatureSpec("year", "categorical"),
            FeatureSpec("author", "categorical"),
            FeatureSpec("publisher", "categorical"),
        )),
        rating_min=1.0,
        rating_max=10.0,
        protocol={"user_state_rule": "id_order", "item_cold_max_ratings": 5},
        base_dir=str(d),
    )
    notes = ["book-crossing: no timestamps; the position in BX-Book-Ratings.csv is the pseudo-time"]
    data = assemble(spec, ratings, users, books, drops=drops, notes=notes, time=time, order=time.astype(np.int64))
    return data


def _integer_column(table: RawTable, name: str) -> np.ndarray:
    col = table.columns[name]
    values = _per_distinct(_int_or_none, col)
    if any(x is None for x in values):
        k = next(j for j, x in enumerate(values) if x is None)
        raise table.error(k, f"{name} {col[k]!r} is not an integer")
    return np.array(values, dtype=np.int64)


def _check_unique(table: RawTable, ids: np.ndarray, name: str) -> None:
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(ids == dup)
        raise table.error(int(rows[1]), f"{name} {dup} appears more than once (first at line {int(table.lines[rows[0]])})")


__all__ = ["BookCrossingOptions", "load_bookcrossing", "normalise_country", "normalise_isbn"]
