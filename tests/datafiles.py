"""Small dataset files in the ORIGINAL release formats, written by the tests themselves.

MovieLens-1M: ``::``-separated ISO-8859-1 ``ratings.dat`` / ``users.dat`` / ``movies.dat``, the
UTF-8 CRLF ``movies_extrainfos.dat`` (11 fields) and the CRLF vocabulary lists. Book-Crossing:
``;``-separated, quoted, ISO-8859-1, CRLF ``BX-*.csv`` files with the dump's quirks (``NULL``
ages, a line break inside a quoted field, a title ending in a backslash before the closing
quote, HTML entities, year 0 and future years, lower-case ISBN check digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENRES = ["Animation", "Family", "Romance", "nan", "Documentary", "Action", "Music", "Horror", "Comedy",
          "Adventure", "Drama", "Thriller", "Sci-Fi"]
DIRECTORS = ["nan", "John Lasseter", "Jorge Fons", "Sönke Wortmann", "Ana Núñez", "Pat Doe", "Lee Roe"]
RATES = ["PG-13", "UNRATED", "NC-17", "PG", "G", "R"]


@dataclass
class MLFixture:
    directory: Path
    user_ids: list[int]
    movie_ids: list[int]
    ratings: list[tuple[int, int, int, int]]  # (user, movie, rating, timestamp) in file order
    extra_ids: list[int] = field(default_factory=list)


def write_ml1m(
    directory: Path,
    *,
    n_users: int = 30,
    per_user: tuple[int, int] = (21, 26),
    seed: int = 0,
    extra_missing: tuple[int, ...] = (860, 1795),
) -> MLFixture:
    """A tiny ML-1M in the release formats. Movies 860/1795 duplicate 811/1741 and lack extra info."""
    rng = np.random.default_rng(seed)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    movie_ids = list(range(1, 37)) + [811, 860, 1741, 1795]
    titles = {m: f"Movie {m} ({1990 + m % 9})" for m in movie_ids}
    titles.update({1: "Café Olé (1995)", 811: "Bewegte Mann, Der (1994)", 860: "Maybe, Maybe Not (Bewegte Mann, Der) (1994)",
                   1741: "Midaq Alley (Callejón de los milagros, El) (1995)", 1795: "Callejón de los milagros, El (1995)"})
    ml_genres = ["Animation", "Children's", "Comedy", "Drama", "Action", "Horror", "Romance"]
    movies_lines = []
    for m in movie_ids:
        g = "|".join(sorted(set(rng.choice(ml_genres, size=rng.integers(1, 3)).tolist())))
        if m in (860, 811):
            g = "Children's|Comedy"
        movies_lines.append(f"{m}::{titles[m]}::{g}")
    (d / "movies.dat").write_bytes(("\n".join(movies_lines) + "\n").encode("latin-1"))

    extra_lines = []
    extra_ids = [m for m in movie_ids if m not in extra_missing]
    for m in extra_ids:
        year = str(1990 + m % 9)
        rate = RATES[m % len(RATES)]
        genre = ", ".join(sorted(set(rng.choice([g for g in GENRES if g != "nan"], size=rng.integers(1, 4)).tolist())))
        director = DIRECTORS[1 + m % (len(DIRECTORS) - 1)]
        if m == 2:
            director = "Pat Doe, Lee Roe (co-director)"
        if m == 3:
            genre, director = "N/A", "N/A"
        actors = "N/A" if m == 4 else f"Actor {m % 5}, Actor {(m + 1) % 5}"
        title = titles[m].rsplit(" (", 1)[0]
        extra_lines.append("::".join([str(m), title, year, rate, "01 Jan 1995", genre, director,
                                      "Some Writer (screenplay)", actors, "A plot, with commas.", "https://x/y.jpg"]))
    (d / "movies_extrainfos.dat").write_bytes(("\r\n".join(extra_lines) + "\r\n").encode("utf-8"))
    (d / "List_genre.txt").write_bytes(("\r\n".join(GENRES) + "\r\n").encode("utf-8"))
    (d / "List_director.txt").write_bytes(("\r\n".join(DIRECTORS) + "\r\n").encode("utf-8"))

    user_ids = list(range(1, n_users + 1))
    ages = ["1", "18", "25", "35", "45", "50", "56"]
    users_lines = [f"{u}::{'MF'[u % 2]}::{ages[u % 7]}::{u % 21}::{10000 + u:05d}" for u in user_ids]
    (d / "users.dat").write_bytes(("\n".join(users_lines) + "\n").encode("latin-1"))

    ratings = []
    base = 956703932
    for u in user_ids:
        k = int(rng.integers(per_user[0], per_user[1] + 1))
        chosen = rng.choice(movie_ids, size=k, replace=False)
        start = base + u * 86400 * 3
        times = start + np.sort(rng.integers(0, 86400 * 10, size=k))
        times[1] = times[0]  # a tie on every user: the file order decides
        for m, t in zip(chosen.tolist(), times.tolist()):
            ratings.append((u, int(m), int(rng.integers(1, 6)), int(t)))
    _write_ratings(d / "ratings.dat", ratings)
    return MLFixture(d, user_ids, movie_ids, ratings, extra_ids)


def _write_ratings(path: Path, ratings: list[tuple[int, int, int, int]]) -> None:
    path.write_bytes(("\n".join(f"{u}::{m}::{r}::{t}" for u, m, r, t in ratings) + "\n").encode("latin-1"))


# ------------------------------------------------------------------------------ Book-Crossing


def _q(*fields: str | None) -> str:
    return ";".join("NULL" if f is None else f'"{f}"' for f in fields)


@dataclass
class BXFixture:
    directory: Path
    expected_drops: dict[str, int]
    kept_users: list[int]


def write_bx(directory: Path, *, n_good_users: int = 25, per_user: int = 22, seed: int = 0) -> BXFixture:
    """A tiny BX-CSV-Dump with every quirk the cleaning rules deal with, and the drops they must count."""
    rng = np.random.default_rng(seed)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    countries = ["usa", "germany", "spain", "united kingdom", "canada"]
    users = ['"User-ID";"Location";"Age"']
    good = list(range(10, 10 + n_good_users))
    # deliberately out of numeric order in the file: the loader orders users by User-ID
    order = good[::-1]
    for u in order:
        loc = f"city{u}, state, {countries[u % len(countries)]}"
        if u == good[0]:
            loc = "m\xe9xico city, distrito federal, m\xe9xico"  # latin-1 characters
        if u == good[1]:
            loc = "cernusco s\n, milan, italy"  # line break inside the quoted field
        if u == good[2]:
            loc = "town, state, &quot;  USA.&quot; "  # HTML entities, case, punctuation
        users.append(_q(str(u), loc, str(20 + u % 40)))
    # users dropped by the rules
    users.append(_q("1", "nyc, new york, usa") + ";NULL")  # age NULL
    users.append(_q("2", "x, y, usa", "3"))  # age < 5
    users.append(_q("3", "x, y, usa", "237"))  # age > 110
    users.append(_q("4", "x, y, n/a", "30"))  # no country
    users.append(_q("5", "x, y, ", "30"))  # empty country
    (d / "BX-Users.csv").write_bytes(("\r\n".join(users) + "\r\n").encode("latin-1"))

    header = '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'
    books = [header]
    n_books = 60
    isbns = [f"0{k:08d}X" if k % 7 == 0 else f"0{k:08d}1" for k in range(1, n_books + 1)]
    for k, isbn in enumerate(isbns):
        title = f"Title {k}"
        author = f"Author {k % 15}"
        publisher = f"Pub {k % 6}"
        if k == 0:
            title = 'Die Biene \\"Maja\\" &amp; Co'
            publisher = "Smith &amp; Sons"
        if k == 1:
            title = "DK Readers: Creating the X-Men (Level 4)\\"  # backslash right before the closing quote
        year = str(1980 + k % 25)
        img = f"http://images.example/{isbn}.jpg"
        shown_isbn = isbn.lower() if isbn.endswith("X") else isbn
        books.append(_q(shown_isbn, title, author, year, publisher, img, img, img))
    # books dropped by the rules
    bad_books = {
        "1111111111": ("T", "A", "0", "P"),  # year 0
        "2222222222": ("T", "A", "2030", "P"),  # future year
        "3333333333": ("T", "A", "1499", "P"),  # too old
        "4444444444": ("T", "", "1999", "P"),  # no author
        "5555555555": ("T", "A", "1999", ""),  # no publisher
        "6666666666": ("T", "A", "unknown", "P"),  # not a number
    }
    for isbn, (t, a, y, p) in bad_books.items():
        books.append(_q(isbn, t, a, y, p, "u", "u", "u"))
    books.append(_q("0-00000001-1", "Duplicate of the second book", "A", "1999", "P", "u", "u", "u"))  # same ISBN normalised
    (d / "BX-Books.csv").write_bytes(("\r\n".join(books) + "\r\n").encode("latin-1"))

    ratings = ['"User-ID";"ISBN";"Book-Rating"']
    n_implicit = 0
    first_chosen: list[int] = []
    for u in good:
        chosen = rng.choice(n_books, size=per_user, replace=False)
        first_chosen = first_chosen or chosen.tolist()
        for j in chosen.tolist():
            isbn = isbns[j]
            if j % 5 == 0:
                isbn = isbn[:1] + "-" + isbn[1:]  # hyphenated in the ratings file
            ratings.append(_q(str(u), isbn.lower(), str(int(rng.integers(1, 11)))))
        ratings.append(_q(str(u), isbns[int(chosen[0])], "0"))  # implicit -> dropped
        n_implicit += 1
    # a duplicate (user, ISBN) after normalisation: the first one is kept
    ratings.append(_q(str(good[0]), isbns[first_chosen[1]].upper(), "7"))
    # ratings of dropped / unknown users and books
    ratings.append(_q("1", isbns[0], "5"))  # user dropped (age NULL)
    ratings.append(_q("99999", isbns[0], "5"))  # user not in BX-Users.csv
    ratings.append(_q(str(good[3]), "1111111111", "5"))  # book dropped (year 0)
    ratings.append(_q(str(good[3]), "9999999999", "5"))  # book not in BX-Books.csv
    ratings.append(_q(str(good[3]), "??", "5"))  # ISBN without digits
    (d / "BX-Book-Ratings.csv").write_bytes(("\r\n".join(ratings) + "\r\n").encode("latin-1"))
    drops = {
        "users_age_missing": 1,
        "users_age_out_of_range": 2,
        "users_country_missing": 2,
        "books_year_zero": 1,
        "books_year_out_of_range": 2,
        "books_year_not_a_number": 1,
        "books_author_missing": 1,
        "books_publisher_missing": 1,
        "books_duplicate_isbn": 1,
        "ratings_implicit_0": n_implicit,
        "ratings_user_dropped_by_cleaning": 1,
        "ratings_user_not_in_users_file": 1,
        "ratings_book_dropped_by_cleaning": 1,
        "ratings_book_not_in_books_file": 1,
        "ratings_isbn_invalid": 1,
        "ratings_duplicate": 1,
    }
    return BXFixture(d, drops, good)


# ------------------------------------------------------------------ custom layouts (issue 16)


def write_no_user_features(directory: Path, *, n_users: int = 40, n_items: int = 30, per_user: int = 20, seed: int = 0) -> Path:
    """An Amazon-style release: ratings and an item table (brand, categories), nothing about users.

    The schema has no ``[users]`` table. Returns the schema path.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    items = ["asin,brand,categories"]
    for i in range(n_items):
        items.append(f"B{i:04d},brand{i % 4},{'|'.join(sorted({f'c{i % 3}', f'c{(i * 5) % 7}'}))}")
    (directory / "items.csv").write_text("\n".join(items) + "\n", "utf-8")
    rows = ["reviewer,asin,overall,unixReviewTime"]
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False).tolist()):
            rows.append(f"A{u:05d},B{i:04d},{int(rng.integers(1, 6))},{1_400_000_000 + 86_400 * u + 3_600 * k}")
    (directory / "ratings.csv").write_text("\n".join(rows) + "\n", "utf-8")
    schema = directory / "schema.toml"
    schema.write_text(
        'name = "no-user-features"\n\n[ratings]\npath = "ratings.csv"\nuser = "reviewer"\nitem = "asin"\n'
        'rating = "overall"\ntime = "unixReviewTime"\n\n[items]\npath = "items.csv"\nid = "asin"\nfeatures = [\n'
        '  { name = "brand", kind = "categorical" },\n'
        '  { name = "categories", kind = "multi_categorical", separator = "|" },\n]\n',
        "utf-8",
    )
    return schema


ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                 "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ML100K_ITEM_COLUMNS = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass
class ML100KFixture:
    """Files in the MovieLens-100K layout and the raw records they hold (for independent counts)."""

    directory: Path
    ratings: list[tuple[int, int, int, int]]  # (user, item, rating, timestamp) in file order
    item_year: dict[int, str]  # "" for the movie without a release date
    item_genres: dict[int, list[str]]


def write_ml100k(directory: Path, *, n_users: int = 36, n_items: int = 45, seed: int = 0) -> ML100KFixture:
    """``u.data`` / ``u.user`` / ``u.item`` as the ML-100K release writes them.

    ``u.data``: tab-separated ``user item rating timestamp``, no header. ``u.user``: ``|``-separated
    ``user|age|gender|occupation|zip``. ``u.item``: ``|``-separated, ISO-8859-1, ``id|title|release
    date (01-Jan-1995)|video release date (empty)|IMDb URL|`` and 19 genre flags (0/1); one movie
    has no release date and only the ``unknown`` genre, as movie 267 of the release. Some users
    have fewer than 20 ratings, and timestamps tie within a user.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    occupations = ["student", "engineer", "writer", "other", "educator"]
    users = [f"{u}|{int(rng.integers(15, 70))}|{'MF'[u % 2]}|{occupations[u % 5]}|{10000 + 37 * u:05d}" for u in range(1, n_users + 1)]
    (directory / "u.user").write_bytes(("\n".join(users) + "\n").encode("latin-1"))
    items, item_year, item_genres = [], {}, {}
    for i in range(1, n_items + 1):
        title = f"Caf\u00e9 Soci\u00e9t\u00e9 {i} ({1990 + i % 8})" if i % 5 == 0 else f"Movie {i} ({1990 + i % 8})"
        if i == 7:
            date, flags = "", [1] + [0] * 18
            title = "unknown"
        else:
            year = 1990 + i % 8
            date = f"{1 + i % 28:02d}-{_MONTHS[i % 12]}-{year}"
            flags = [0] + [int(rng.random() < 0.25) for _ in range(18)]
            if sum(flags) == 0:
                flags[1 + i % 18] = 1
        item_year[i] = date[-4:] if date else ""
        item_genres[i] = [g for g, f in zip(ML100K_GENRES, flags) if f]
        url = f"http://us.imdb.com/M/title-exact?Movie%20{i}" if i != 7 else ""
        items.append("|".join([str(i), title, date, "", url, *map(str, flags)]))
    (directory / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    ratings = []
    for u in range(1, n_users + 1):
        n = 12 if u % 6 == 0 else int(rng.integers(20, 31))  # every sixth user has too few ratings
        base = 874_000_000 + 400_000 * u + int(rng.integers(0, 3_000_000))
        for k, i in enumerate(rng.choice(np.arange(1, n_items + 1), size=n, replace=False).tolist()):
            ratings.append((u, int(i), int(rng.integers(1, 6)), base + 600 * (k // 2)))  # pairs share a timestamp
    order = rng.permutation(len(ratings))  # the release is not sorted by user or time
    ratings = [ratings[k] for k in order]
    (directory / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), "ascii")
    return ML100KFixture(directory, ratings, item_year, item_genres)


#: The schema of the "Bring your own data" page's worked example: the page includes this file verbatim.
ML100K_SCHEMA = (Path(__file__).resolve().parents[1] / "docs" / "examples" / "ml-100k" / "schema.toml").read_text("utf-8")


@dataclass
class YelpFixture:
    """Files in the layout of the Yelp HIN release and the records they hold."""

    directory: Path
    ratings: list[tuple[int, int, int]]
    categories: dict[int, list[int]]
    city: dict[int, int]
    compliments: dict[int, list[int]]
    friends: dict[int, set[int]]


def write_yelp(directory: Path, *, n_users: int = 40, n_items: int = 60, seed: int = 0) -> YelpFixture:
    """``user_business.dat`` etc.: tab-separated, no header, LF, ``id, id, value`` rows, no time.

    Some businesses have no category or no city, some users no compliment and no friend (as in
    the release); friendships are written in both directions.
    """
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ratings = []
    for u in range(1, n_users + 1):
        n = 8 if u % 5 == 0 else int(rng.integers(20, 28))
        for b in rng.choice(np.arange(1, n_items + 1), size=n, replace=False).tolist():
            ratings.append((u, int(b), int(rng.integers(1, 6))))
    ratings = [ratings[k] for k in rng.permutation(len(ratings))]
    categories = {b: sorted(set(rng.choice(np.arange(1, 12), size=int(rng.integers(1, 4))).tolist()))
                  for b in range(1, n_items + 1) if b % 9 != 0}
    city = {b: int(rng.integers(1, 6)) for b in range(1, n_items + 1) if b != 4}
    compliments = {u: sorted(set(rng.choice(np.arange(1, 12), size=int(rng.integers(1, 5))).tolist()))
                   for u in range(1, n_users + 1) if u % 7 != 0}
    friends: dict[int, set[int]] = {u: set() for u in range(1, n_users + 1)}
    for u in range(1, n_users + 1):
        for v in rng.choice(np.arange(1, n_users + 1), size=int(rng.integers(0, 8)), replace=False).tolist():
            if v != u and u % 4 != 0 and v % 4 != 0:
                friends[u].add(int(v))
                friends[int(v)].add(u)

    def write(name: str, rows: list[tuple[int, ...]]) -> None:
        (directory / name).write_text("".join("\t".join(map(str, r)) + "\n" for r in rows), "ascii")

    write("user_business.dat", ratings)
    write("business_category.dat", [(b, c, 1) for b, cs in categories.items() for c in cs])
    write("business_city.dat", [(b, c, 1) for b, c in city.items()])
    write("user_compliment.dat", [(u, c, 1) for u, cs in compliments.items() for c in cs])
    write("user_user.dat", [(u, v, 1) for u in friends for v in sorted(friends[u])])
    (directory / "README").write_text("\n", "ascii")
    return YelpFixture(directory, ratings, categories, city, compliments, friends)
