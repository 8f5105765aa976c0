"""MovieLens-1M in its original release format, with the OMDb features MeLU and MAMO use.

Files (all in one folder):

* ``ratings.dat``, ``users.dat``, ``movies.dat`` -- the GroupLens release (``::``-separated,
  ISO-8859-1);
* ``movies_extrainfos.dat`` -- MeLU's OMDb-augmented movie table (UTF-8, 11 fields: id, title,
  year, MPAA rate, released, genre, director, writer, actors, plot, poster);
* ``List_genre.txt``, ``List_director.txt`` -- the genre and director vocabularies of MeLU/MAMO.

Features (MAMO, brief section 1.1 item 6-7): user = gender, age group, occupation (categorical;
the zip code is dropped unless ``zip_code=True``); item = MPAA rate and year (categorical; year
values in order of first appearance in ``movies_extrainfos.dat``), genres and directors
(multi-valued over the two vocabulary files; OMDb's ``N/A`` is the vocabulary's ``nan`` entry;
parenthesised notes such as "(co-director)" are removed), actors optional (off by default).

**Movies without extra info.** ``movies.dat`` lists 3,883 movies; ``movies_extrainfos.dat`` has
3,881: MovieIDs 860 and 1795 are absent. Both are duplicate titles of other ids in ``movies.dat``
(860 "Maybe, Maybe Not (Bewegte Mann, Der)" = 811 "Bewegte Mann, Der"; 1795 "Callejón de los
milagros, El" = 1741 "Midaq Alley (Callejón de los milagros, El)"), and MeLU's files fold them
into those ids. Rule ``missing_extra_info``:

* ``alias`` (default): such a movie takes the OMDb features of the id it duplicates
  (:data:`EXTRA_INFO_ALIASES`); an absent id with no known alias is an error.
* ``fallback``: genres from ``movies.dat`` (Children's -> Family, the OMDb name), year from the
  title, rate ``<missing>``, director ``nan``.
* ``error``: refuse to load.

Either way the movie keeps its own MovieID, its own ratings and its own row in the item table:
features and ratings are joined by id, never by position, so nothing can misalign (MAMO's
reference code drops the features of such items but keeps their ratings, shifting rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from metarec.config import ValidatedConfig
from metarec.data.base import InteractionData
from metarec.data.custom import DatasetSpec, FeatureSpec, RatingsSpec, TableSpec, assemble
from metarec.data.readers import (
    DataFormatError,
    RawTable,
    check_not_empty,
    check_timestamps,
    read_separated,
    read_separated_ints,
)

RATINGS_FILE = "ratings.dat"
USERS_FILE = "users.dat"
MOVIES_FILE = "movies.dat"
EXTRA_FILE = "movies_extrainfos.dat"
GENRE_FILE = "List_genre.txt"
DIRECTOR_FILE = "List_director.txt"
#: Written next to our reconstructed ``ratings.dat``: ratings whose timestamp was imputed.
IMPUTED_FILE = "imputed_timestamps.dat"

#: MovieIDs missing from ``movies_extrainfos.dat`` -> the id of the same film (duplicate title).
EXTRA_INFO_ALIASES: dict[int, int] = {860: 811, 1795: 1741}

GENDERS = ("M", "F")  # MAMO's order: M -> 0, F -> 1
AGE_GROUPS = ("1", "18", "25", "35", "45", "50", "56")
OCCUPATIONS = tuple(str(k) for k in range(21))
RATES = ("PG-13", "UNRATED", "NC-17", "PG", "G", "R")  # MAMO's list_rate order
#: movies.dat genre names that OMDb spells differently (used by the ``fallback`` rule only).
GENRE_TO_OMDB = {"Children's": "Family"}

EXTRA_FIELDS = ("item_id", "title", "year", "rate", "released", "genre", "director", "writer", "actors", "plot", "poster")


@dataclass(frozen=True)
class MovieLensOptions(ValidatedConfig):
    """Loader choices; the defaults reproduce MAMO's feature set."""

    #: Movies of ``movies.dat`` without a row in ``movies_extrainfos.dat``: see the module docstring.
    missing_extra_info: Literal["alias", "fallback", "error"] = "alias"
    #: Add the OMDb actors as a multi-valued item feature (MeLU uses them; MAMO does not).
    actors: bool = False
    #: Add the zip code as a categorical user feature (MeLU uses it; MAMO drops it).
    zip_code: bool = False
    #: Repeated (user, movie) pairs (the release has none): error, or keep the first/last by time.
    duplicates: Literal["error", "first", "last"] = "error"
    #: Ratings of a MovieID absent from movies.dat / a UserID absent from users.dat.
    unknown_items: Literal["error", "drop"] = "error"
    unknown_users: Literal["error", "drop"] = "error"


def load_movielens(directory: str | Path, options: MovieLensOptions | None = None) -> InteractionData:
    """Parse the ML-1M files in ``directory`` (checksums are the catalog's job)."""
    opts = options or MovieLensOptions()
    d = Path(directory)
    ratings = read_separated_ints(d / RATINGS_FILE, ["user_id", "item_id", "rating", "timestamp"])
    hint = "restore the release's file (metarec datasets download ml-1m)"
    check_not_empty(ratings, hint)
    check_timestamps(ratings, "timestamp")
    users = read_separated(d / USERS_FILE, ["user_id", "gender", "age", "occupation", "zip"])
    check_not_empty(users, hint)
    users.columns["user_id"] = _int_ids(users, "user_id")
    movies = read_separated(d / MOVIES_FILE, ["item_id", "title", "genres"])
    check_not_empty(movies, hint)
    movies.columns["item_id"] = _int_ids(movies, "item_id")
    extra = read_separated(d / EXTRA_FILE, list(EXTRA_FIELDS), encoding="utf-8")
    extra.columns["item_id"] = _int_ids(extra, "item_id")
    items, notes, drops, years = _join_items(movies, extra, opts, ratings)

    user_features = [
        FeatureSpec("gender", "categorical", vocabulary=GENDERS),
        FeatureSpec("age", "categorical", vocabulary=AGE_GROUPS),
        FeatureSpec("occupation", "categorical", vocabulary=OCCUPATIONS),
    ]
    if opts.zip_code:
        user_features.append(FeatureSpec("zip", "categorical"))
    annotated = {"N/A": "nan"}  # OMDb's "no value" is the vocabulary files' "nan" entry (pandas NaN)
    item_features = [
        FeatureSpec("rate", "categorical", vocabulary=RATES,
                    on_missing="category" if opts.missing_extra_info == "fallback" else "error"),
        FeatureSpec("year", "categorical", vocabulary=years),
        FeatureSpec("genre", "multi_categorical", separator=", ", vocabulary_file=GENRE_FILE, value_map=annotated),
        FeatureSpec("director", "multi_categorical", separator=", ", vocabulary_file=DIRECTOR_FILE,
                    value_map=annotated, strip_annotations=True),
    ]
    if opts.actors:
        item_features.append(FeatureSpec("actors", "multi_categorical", separator=", ", vocabulary_order="first_seen",
                                         missing_values=("", "N/A"), on_missing="empty"))
    spec = DatasetSpec(
        name="ml-1m",
        ratings=RatingsSpec(user="user_id", item="item_id", rating="rating", time="timestamp",
                            duplicates=opts.duplicates, unknown_users=opts.unknown_users,
                            unknown_items=opts.unknown_items, out_of_range="error"),
        users=TableSpec(id="user_id", features=tuple(user_features), prune_unrated=False),
        items=TableSpec(id="item_id", features=tuple(item_features), prune_unrated=False),
        rating_min=1.0,
        rating_max=5.0,
        protocol={"user_state_rule": "time_quantile", "item_cold_max_ratings": 10},
        base_dir=str(d),
    )
    imputed = d / IMPUTED_FILE
    if imputed.exists():
        n_imputed = imputed.read_bytes().count(b"\n")
        notes.append(
            f"{IMPUTED_FILE}: {n_imputed:,} ratings carry an imputed timestamp (a reconstructed ratings.dat); "
            "'first 20 by time' is approximate for the users concerned"
        )
    return assemble(spec, ratings, users, items, drops=drops, notes=notes)


def _int_ids(table: RawTable, name: str) -> np.ndarray:
    col = table.columns[name]
    out = np.empty(len(col), dtype=np.int64)
    for k, v in enumerate(col):
        try:
            out[k] = int(v)
        except ValueError:
            raise table.error(k, f"{name} {v!r} is not an integer") from None
    return out


def _title_year(title: str) -> str:
    m = re.search(r"\((\d{4})\)\s*$", title)
    return m.group(1) if m else ""


def _join_items(
    movies: RawTable, extra: RawTable, opts: MovieLensOptions, ratings: RawTable
) -> tuple[RawTable, list[str], dict[str, int], tuple[str, ...]]:
    """One item row per movie of ``movies.dat``, with the OMDb fields joined by MovieID."""
    ex_ids = extra.columns["item_id"]
    uniq, first, counts = np.unique(ex_ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        rows = np.flatnonzero(ex_ids == dup)
        raise extra.error(int(rows[1]), f"MovieID {dup} appears more than once (first at line {int(extra.lines[rows[0]])})")
    row_of = {int(i): k for k, i in enumerate(ex_ids)}
    # year vocabulary: distinct values in order of first appearance in the extra-info file (MAMO)
    years = list(dict.fromkeys(str(y).strip() for y in extra.columns["year"]))
    notes: list[str] = []
    drops: dict[str, int] = {}
    mv_ids = movies.columns["item_id"]
    movie_set = set(int(i) for i in mv_ids)
    orphan = [i for i in row_of if i not in movie_set]
    if orphan:
        drops["extra_info_rows_without_movie"] = len(orphan)
        notes.append(f"{EXTRA_FILE}: {len(orphan)} row(s) for MovieIDs absent from {MOVIES_FILE} ignored (e.g. {orphan[0]})")
    rated = np.bincount(ratings.columns["item_id"][ratings.columns["item_id"] >= 0], minlength=int(max(mv_ids.max(), 1)) + 1) if len(ratings) else np.zeros(1, int)

    def n_ratings(mid: int) -> int:
        return int(rated[mid]) if mid < len(rated) else 0

    missing = [int(i) for i in mv_ids if int(i) not in row_of]
    src_rows = np.empty(len(mv_ids), dtype=np.int64)
    fallback_rows: dict[int, dict[str, str]] = {}
    for k, mid in enumerate(mv_ids):
        mid = int(mid)
        if mid in row_of:
            src_rows[k] = row_of[mid]
            continue
        if opts.missing_extra_info == "error":
            raise DataFormatError(
                extra.path,
                f"MovieID(s) {', '.join(map(str, missing))} of {MOVIES_FILE} have no row here; "
                "use missing_extra_info='alias' or 'fallback'",
            )
        alias = EXTRA_INFO_ALIASES.get(mid)
        if opts.missing_extra_info == "alias":
            if alias is None or alias not in row_of:
                raise movies.error(
                    k,
                    f"MovieID {mid} has no row in {EXTRA_FILE} and no known duplicate id to take its features from "
                    f"(known: {EXTRA_INFO_ALIASES}); use missing_extra_info='fallback'",
                )
            src_rows[k] = row_of[alias]
            notes.append(f"MovieID {mid} ({n_ratings(mid)} ratings) has no row in {EXTRA_FILE}: it uses the features of MovieID {alias}, the same film")
        else:
            src_rows[k] = -1
            genres = [GENRE_TO_OMDB.get(g, g) for g in str(movies.columns["genres"][k]).strip().split("|") if g]
            year = _title_year(str(movies.columns["title"][k]))
            if year and year not in years:
                years.append(year)
            fallback_rows[k] = {"rate": "", "year": year, "genre": ", ".join(genres) or "N/A", "director": "N/A", "actors": "N/A"}
            notes.append(
                f"MovieID {mid} ({n_ratings(mid)} ratings) has no row in {EXTRA_FILE}: genres and year from {MOVIES_FILE}, "
                "rate <missing>, director nan"
            )
    cols: dict[str, np.ndarray] = {"item_id": mv_ids.copy()}
    for name in ("rate", "year", "genre", "director", "actors"):
        col = np.empty(len(mv_ids), dtype=object)
        src = extra.columns[name]
        for k in range(len(mv_ids)):
            col[k] = fallback_rows[k][name] if k in fallback_rows else src[src_rows[k]]
        cols[name] = col
    # errors about feature values point into the extra-info file; fallback rows into movies.dat
    lines = np.where(src_rows >= 0, extra.lines[np.maximum(src_rows, 0)], movies.lines)
    items = RawTable(extra.path, cols, lines, id_path=movies.path)
    return items, notes, drops, tuple(years)


__all__ = ["EXTRA_INFO_ALIASES", "MovieLensOptions", "load_movielens"]
