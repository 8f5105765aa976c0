"""Book-Crossing: reading the BX-CSV-Dump format and the paper's cleaning (appendix A.1.2)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from datafiles import write_bx
from metarec.data.bookcrossing import BookCrossingOptions, load_bookcrossing, normalise_country, normalise_isbn
from metarec.data.protocol import build_split
from metarec.data.readers import DataFormatError, read_quoted_csv, split_quoted_record


@pytest.fixture()
def bx(tmp_path):
    return write_bx(tmp_path / "book-crossing")


def test_cleaning_drops_are_exactly_the_documented_ones(bx):
    data = load_bookcrossing(bx.directory)
    assert data.drops == bx.expected_drops
    assert data.n_ratings == len(bx.kept_users) * 22
    assert set(data.rating.tolist()) <= set(range(1, 11))


def test_features_and_vocabularies(bx):
    data = load_bookcrossing(bx.directory)
    s = data.schema
    assert [f.name for f in s.user_features] == ["age", "country"]
    assert [f.name for f in s.item_features] == ["year", "author", "publisher"]
    assert s.user_feature("age").vocabulary == tuple(str(a) for a in range(5, 111))  # 106 values, as MAMO
    assert (s.rating_min, s.rating_max) == (1.0, 10.0)
    countries = set(s.user_feature("country").vocabulary)
    assert countries == {"usa", "germany", "spain", "united kingdom", "canada", "italy", "méxico"} & countries | {"italy", "méxico", "usa"}
    assert "Smith & Sons" in s.item_feature("publisher").vocabulary  # HTML entity decoded
    years = [int(y) for y in s.item_feature("year").vocabulary]
    assert min(years) >= 1500 and max(years) <= 2010


def test_user_table_in_numeric_id_order_and_embedded_line_break(bx):
    data = load_bookcrossing(bx.directory)
    ids = [int(x) for x in data.users.ids]
    assert ids == sorted(ids) == bx.kept_users  # the file lists them in reverse
    row = ids.index(bx.kept_users[1])  # the record with a line break inside its location
    country = data.schema.user_feature("country").vocabulary[int(data.users.columns["country"][row])]
    assert country == "italy"


def test_title_ending_in_backslash_does_not_shift_columns(bx):
    books = read_quoted_csv(bx.directory / "BX-Books.csv", ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher"))
    k = int(np.flatnonzero(books.columns["ISBN"] == "0000000021")[0])
    assert books.columns["Book-Title"][k].endswith("(Level 4)\\")
    assert books.columns["Book-Author"][k] == "Author 1"
    assert books.columns["Year-Of-Publication"][k] == "1981"
    k0 = int(np.flatnonzero(books.columns["ISBN"] == "0000000011")[0])
    assert books.columns["Book-Title"][k0] == 'Die Biene \\"Maja\\" &amp; Co'


def test_pseudo_time_is_file_position(bx):
    data = load_bookcrossing(bx.directory)
    assert np.all(np.diff(data.time) > 0) and np.array_equal(data.time, data.order.astype(float))


def test_protocol_defaults_id_order_and_threshold_5(bx):
    data = load_bookcrossing(bx.directory)
    split = build_split(data, seed=0)
    assert split.info["protocol"]["user_state_rule"] == "id_order"
    assert split.info["protocol"]["item_cold_max_ratings"] == 5
    n = len(bx.kept_users)
    assert split.info["users_warm"] == int(0.9 * n)
    cold = {int(ts.users.ids[int(ts.user_index[k])]) for ts in (split.train, split.test) for k in range(len(ts))
            if int(ts.query_scenario[k, 0]) >= 2}
    assert cold == set(bx.kept_users[int(0.9 * n):])  # the highest User-IDs


def test_duplicates_keep_first_or_last_or_fail(bx):
    def pairs(data):
        return {(data.users.ids[u], data.items.ids[i]): (r, o) for u, i, r, o in zip(data.user, data.item, data.rating, data.order)}

    first = pairs(load_bookcrossing(bx.directory))
    last_data = load_bookcrossing(bx.directory, BookCrossingOptions(duplicates="last"))
    last = pairs(last_data)
    assert first.keys() == last.keys() and last_data.drops["ratings_duplicate"] == 1
    changed = [k for k in first if first[k] != last[k]]
    assert len(changed) == 1  # the duplicated pair: last keeps the later record (rating 7)
    assert last[changed[0]][0] == 7 and last[changed[0]][1] > first[changed[0]][1]
    with pytest.raises(DataFormatError, match=r"BX-Book-Ratings\.csv, line \d+: duplicate rating"):
        load_bookcrossing(bx.directory, BookCrossingOptions(duplicates="error"))


@pytest.mark.parametrize(
    ("location", "country"),
    [
        ("nyc, new york, usa", "usa"),
        ("porto, v.n.gaia, portugal", "portugal"),
        ("x, y, ", ""),
        ("x, y, n/a", ""),
        ("x, y, 19104", ""),
        ("x, y, &quot;USA&quot;", "usa"),
        ("x, y,   United   Kingdom. ", "united kingdom"),
        ("españa", "españa"),  # spelling variants are kept apart (documented)
    ],
)
def test_country_normalisation(location, country):
    assert normalise_country(location) == country


@pytest.mark.parametrize(("raw", "isbn"), [("034545104x", "034545104X"), ("0-345-45104-X", "034545104X"), (" 0345 ", "0345"), ("??", "")])
def test_isbn_normalisation(raw, isbn):
    assert normalise_isbn(raw) == isbn


def test_quoted_record_splitting():
    assert split_quoted_record('"1";"nyc, ny, usa";NULL') == ["1", "nyc, ny, usa", "NULL"]
    assert split_quoted_record('"a";"";"c"') == ["a", "", "c"]
    assert split_quoted_record('"1";"open') is None  # continues on the next line


# ------------------------------------------------------------------------------ bad input


def _edit(path, fn):
    lines = path.read_bytes().decode("latin-1").split("\r\n")
    fn(lines)
    path.write_bytes("\r\n".join(lines).encode("latin-1"))


def test_rating_out_of_range_names_line(bx):
    _edit(bx.directory / "BX-Book-Ratings.csv", lambda ls: ls.__setitem__(5, '"10";"0000000011";"11"'))
    with pytest.raises(DataFormatError, match=r"BX-Book-Ratings\.csv, line 6: Book-Rating '11' is outside 0\.\.10"):
        load_bookcrossing(bx.directory)


def test_non_integer_user_id(bx):
    _edit(bx.directory / "BX-Book-Ratings.csv", lambda ls: ls.__setitem__(3, '"abc";"0000000011";"5"'))
    with pytest.raises(DataFormatError, match=r"BX-Book-Ratings\.csv, line 4: User-ID 'abc' is not an integer"):
        load_bookcrossing(bx.directory)


def test_non_numeric_age(bx):
    _edit(bx.directory / "BX-Users.csv", lambda ls: ls.__setitem__(2, '"11";"a, b, usa";"twenty"'))
    with pytest.raises(DataFormatError, match=r"BX-Users\.csv, line 3: Age 'twenty'"):
        load_bookcrossing(bx.directory)


def test_missing_column(bx):
    _edit(bx.directory / "BX-Books.csv", lambda ls: ls.__setitem__(0, ls[0].replace('"Publisher";', "")))
    with pytest.raises(DataFormatError, match=r"BX-Books\.csv, line 1: missing column\(s\) 'Publisher'"):
        load_bookcrossing(bx.directory)


def test_wrong_separator(bx):
    _edit(bx.directory / "BX-Book-Ratings.csv", lambda ls: ls.__setitem__(0, "User-ID,ISBN,Book-Rating"))
    with pytest.raises(DataFormatError, match=r"BX-Book-Ratings\.csv, line 1: .*wrong separator"):
        load_bookcrossing(bx.directory)


def test_malformed_record(bx):
    _edit(bx.directory / "BX-Book-Ratings.csv", lambda ls: ls.__setitem__(7, '"10";"0000000011"'))
    with pytest.raises(DataFormatError, match=r"BX-Book-Ratings\.csv, line 8: expected 3 ';'-separated fields, found 2"):
        load_bookcrossing(bx.directory)


def test_truncated_file_with_open_quote(bx):
    path = bx.directory / "BX-Book-Ratings.csv"
    raw = path.read_bytes().rstrip(b"\r\n")
    path.write_bytes(raw[:-2])  # cut inside the last quoted field
    n = raw.count(b"\r\n") + 1
    with pytest.raises(DataFormatError, match=rf"BX-Book-Ratings\.csv, line {n}: unterminated quoted field"):
        load_bookcrossing(bx.directory)


def test_wrong_encoding(bx):
    text = (bx.directory / "BX-Users.csv").read_bytes().decode("latin-1")
    (bx.directory / "BX-Users.csv").write_bytes(text.encode("utf-16"))
    with pytest.raises(DataFormatError, match="UTF-16"):
        load_bookcrossing(bx.directory)


def test_duplicate_user_id(bx):
    _edit(bx.directory / "BX-Users.csv", lambda ls: ls.insert(3, '"10";"a, b, usa";"30"'))
    with pytest.raises(DataFormatError, match=r"BX-Users\.csv, line \d+: User-ID 10 appears more than once"):
        load_bookcrossing(bx.directory)


# ------------------------------------------------------------------------------ real files


@pytest.mark.data
def test_real_bx_users_file_format(shared_data_dir):
    """The real BX-Users.csv: 278,858 users, one record with a line break inside a quoted field."""
    path = shared_data_dir / "book-crossing" / "BX-Users.csv"
    if not path.exists():
        pytest.skip("BX-Users.csv not in the shared data")
    users = read_quoted_csv(path, ("User-ID", "Location", "Age"))
    assert len(users) == 278858
    ids = users.columns["User-ID"].astype(int)
    assert ids.min() == 1 and ids.max() == 278858 and len(np.unique(ids)) == 278858
    k = int(np.flatnonzero(ids == 275081)[0])
    assert "\n" in users.columns["Location"][k] and users.lines[k] == 275082
    assert normalise_country(users.columns["Location"][k]) == "italy"
    assert int((users.columns["Age"] != "NULL").sum()) == 168096


@pytest.mark.data
def test_real_ratings_fragment_format(shared_data_dir, tmp_path):
    """The real ratings fragment (no header of its own) loads with the real users and a books file."""
    src = shared_data_dir / "book-crossing"
    fragment = src / "BX-Book-Ratings.PARTIAL-users43842-55178.csv"
    if not fragment.exists():
        pytest.skip("ratings fragment not in the shared data")
    d = tmp_path / "bx"
    d.mkdir()
    (d / "BX-Book-Ratings.csv").write_bytes(b'"User-ID";"ISBN";"Book-Rating"\r\n' + fragment.read_bytes())
    shutil.copy(src / "BX-Users.csv", d / "BX-Users.csv")
    ratings = read_quoted_csv(d / "BX-Book-Ratings.csv", ("User-ID", "ISBN", "Book-Rating"))
    assert len(ratings) == 39268
    # a BX-Books.csv covering the fragment's ISBNs (the real one is not available)
    isbns = sorted({normalise_isbn(i) for i in ratings.columns["ISBN"]} - {""})
    lines = ['"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"']
    lines += [f'"{i}";"T";"A{k % 50}";"{1990 + k % 15}";"P{k % 9}";"u";"u";"u"' for k, i in enumerate(isbns)]
    (d / "BX-Books.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    data = load_bookcrossing(d)
    assert data.drops["ratings_implicit_0"] > 0
    total = sum(v for k, v in data.drops.items() if k.startswith("ratings_")) + data.n_ratings
    assert total == 39268  # every record is either kept or counted under a reason
    split = build_split(data, seed=0)
    assert split.info["users_kept"] > 0
