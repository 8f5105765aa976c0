"""MovieLens-1M loader on fixtures in the release formats, its rules and its bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datafiles import DIRECTORS, GENRES, _write_ratings, write_ml1m
from metarec.data.movielens import EXTRA_INFO_ALIASES, MovieLensOptions, load_movielens
from metarec.data.protocol import ProtocolConfig, ProtocolError, build_split
from metarec.data.readers import DataFormatError


@pytest.fixture()
def ml(tmp_path):
    return write_ml1m(tmp_path / "ml-1m")


def item_row(data, movie_id: int) -> int:
    return int(np.flatnonzero(data.items.ids == str(movie_id))[0])


def test_loads_mamo_feature_set(ml):
    data = load_movielens(ml.directory)
    assert [f.name for f in data.schema.user_features] == ["gender", "age", "occupation"]
    assert [f.name for f in data.schema.item_features] == ["rate", "year", "genre", "director"]
    assert data.schema.user_feature("gender").vocabulary == ("M", "F")
    assert data.schema.user_feature("age").cardinality == 7
    assert data.schema.user_feature("occupation").cardinality == 21
    assert data.schema.item_feature("rate").vocabulary == ("PG-13", "UNRATED", "NC-17", "PG", "G", "R")
    assert data.schema.item_feature("genre").vocabulary == tuple(GENRES)  # List_genre.txt, in file order
    assert data.schema.item_feature("director").vocabulary == tuple(DIRECTORS)
    assert (data.schema.rating_min, data.schema.rating_max) == (1.0, 5.0)
    assert data.n_ratings == len(ml.ratings) and data.drops == {}
    # every movie of movies.dat has a row, in movies.dat order
    assert data.items.ids.tolist() == [str(m) for m in ml.movie_ids]


def test_ratings_join_by_id_in_file_order(ml):
    data = load_movielens(ml.directory)
    for k in (0, 5, len(ml.ratings) - 1):
        u, m, r, t = ml.ratings[k]
        assert data.users.ids[data.user[k]] == str(u)
        assert data.items.ids[data.item[k]] == str(m)
        assert data.rating[k] == r and data.time[k] == t and data.order[k] == k


def test_year_vocabulary_in_order_of_first_appearance(ml):
    data = load_movielens(ml.directory)
    lines = (ml.directory / "movies_extrainfos.dat").read_text("utf-8").splitlines()
    years = list(dict.fromkeys(line.split("::")[2] for line in lines))
    assert data.schema.item_feature("year").vocabulary == tuple(years)


def test_user_features_decoded(ml):
    data = load_movielens(ml.directory)
    row = int(np.flatnonzero(data.users.ids == "3")[0])  # "3::F::35::3::10003"
    assert (ml.directory / "users.dat").read_text("latin-1").splitlines()[2] == "3::F::35::3::10003"
    schema = data.schema
    assert schema.user_feature("gender").vocabulary[int(data.users.columns["gender"][row])] == "F"
    assert schema.user_feature("age").vocabulary[int(data.users.columns["age"][row])] == "35"
    assert schema.user_feature("occupation").vocabulary[int(data.users.columns["occupation"][row])] == "3"


def test_director_annotations_stripped_and_na_is_nan(ml):
    data = load_movielens(ml.directory)
    vocab = data.schema.item_feature("director").vocabulary
    d2 = [vocab[i] for i in data.items.columns["director"][item_row(data, 2)].tolist() if i >= 0]
    assert d2 == ["Pat Doe", "Lee Roe"]
    d3 = [vocab[i] for i in data.items.columns["director"][item_row(data, 3)].tolist() if i >= 0]
    g3 = [data.schema.item_feature("genre").vocabulary[i] for i in data.items.columns["genre"][item_row(data, 3)].tolist() if i >= 0]
    assert d3 == ["nan"] and g3 == ["nan"]


def test_missing_extra_info_alias_rule(ml):
    data = load_movielens(ml.directory)
    for missing, alias in EXTRA_INFO_ALIASES.items():
        a, b = item_row(data, missing), item_row(data, alias)
        assert a != b  # own row, own id
        for name, col in data.items.columns.items():
            assert col[a].tolist() == col[b].tolist(), name
        n_fixture = sum(1 for _, m, _, _ in ml.ratings if m == missing)
        assert n_fixture > 0 and int((data.item == a).sum()) == n_fixture  # no rating dropped or moved
    assert any("860" in n and "811" in n for n in data.notes)


def test_missing_extra_info_fallback_rule(ml):
    data = load_movielens(ml.directory, MovieLensOptions(missing_extra_info="fallback"))
    s = data.schema
    row = item_row(data, 860)  # movies.dat: "Children's|Comedy", title year 1994
    genres = {s.item_feature("genre").vocabulary[i] for i in data.items.columns["genre"][row].tolist() if i >= 0}
    assert genres == {"Family", "Comedy"}
    assert s.item_feature("rate").vocabulary[int(data.items.columns["rate"][row])] == "<missing>"
    assert s.item_feature("year").vocabulary[int(data.items.columns["year"][row])] == "1994"
    assert [s.item_feature("director").vocabulary[i] for i in data.items.columns["director"][row].tolist() if i >= 0] == ["nan"]
    assert int((data.item == row).sum()) == sum(1 for _, m, _, _ in ml.ratings if m == 860)


def test_missing_extra_info_error_rule(ml):
    with pytest.raises(DataFormatError, match=r"movies_extrainfos\.dat.*860, 1795"):
        load_movielens(ml.directory, MovieLensOptions(missing_extra_info="error"))


def test_alias_without_its_target_is_an_error(tmp_path):
    fx = write_ml1m(tmp_path / "ml", extra_missing=(860, 1795, 811))
    with pytest.raises(DataFormatError, match=r"movies\.dat, line \d+: MovieID 811 has no row"):
        load_movielens(fx.directory)


def test_optional_actors_and_zip(ml):
    data = load_movielens(ml.directory, MovieLensOptions(actors=True, zip_code=True))
    assert data.schema.item_features[-1].name == "actors"
    assert data.schema.user_features[-1].name == "zip"
    actors = data.items.columns["actors"]
    assert (actors[item_row(data, 4)] == -1).all()  # "N/A": no actors
    assert (actors[item_row(data, 5)] >= 0).sum() == 2


def test_tie_rule_on_identical_timestamps(ml):
    data = load_movielens(ml.directory)
    split = build_split(data, seed=0)
    # every fixture user has a tie between their first two ratings (by time): file order decides
    by_user: dict[int, list] = {}
    for u, m, r, t in ml.ratings:
        by_user.setdefault(u, []).append((t, len(by_user[u]), m))
    for ts in (split.train, split.test):
        for k in range(len(ts)):
            uid = int(ts.users.ids[int(ts.user_index[k])])
            expected = [m for _, _, m in sorted(by_user[uid])][:15]
            got = [int(ts.items.ids[i]) for i in ts.support_items[k].tolist()]
            assert got == expected


# ------------------------------------------------------------------------------ bad input


def _ratings_lines(ml) -> list[str]:
    return (ml.directory / "ratings.dat").read_text("latin-1").splitlines()


def _write_lines(path: Path, lines: list[str], encoding: str = "latin-1") -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))


def test_truncated_last_line(ml):
    lines = _ratings_lines(ml)
    lines[-1] = lines[-1].rsplit("::", 1)[0]
    (ml.directory / "ratings.dat").write_bytes(("\n".join(lines)).encode())
    with pytest.raises(DataFormatError, match=rf"ratings\.dat, line {len(lines)}: expected 4 '::'-separated fields, found 3.*truncated"):
        load_movielens(ml.directory)


def test_malformed_line_in_the_middle(ml):
    lines = _ratings_lines(ml)
    lines[41] = "3::12::4::97830x760"
    _write_lines(ml.directory / "ratings.dat", lines)
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 42: field 'timestamp' is not an integer: '97830x760'"):
        load_movielens(ml.directory)


def test_blank_line_in_the_middle(ml):
    lines = _ratings_lines(ml)
    lines.insert(10, "")
    _write_lines(ml.directory / "ratings.dat", lines)
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 11: blank line"):
        load_movielens(ml.directory)


def test_wrong_separator(ml):
    lines = [ln.replace("::", ",") for ln in _ratings_lines(ml)]
    _write_lines(ml.directory / "ratings.dat", lines)
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 1: .*','.*wrong separator"):
        load_movielens(ml.directory)


def test_wrong_encoding_utf16(ml):
    text = (ml.directory / "users.dat").read_text("latin-1")
    (ml.directory / "users.dat").write_bytes(text.encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"users\.dat: the file looks UTF-16"):
        load_movielens(ml.directory)


def test_invalid_utf8_in_extra_info(ml):
    path = ml.directory / "movies_extrainfos.dat"
    raw = path.read_bytes().split(b"\r\n")
    raw[6] = raw[6].replace(b"Some Writer", b"Some Writ\xe9r")  # latin-1 byte in a UTF-8 file
    path.write_bytes(b"\r\n".join(raw))
    with pytest.raises(DataFormatError, match=r"movies_extrainfos\.dat, line 7: byte .* is not valid utf-8"):
        load_movielens(ml.directory)


def test_missing_column(ml):
    lines = (ml.directory / "movies.dat").read_text("latin-1").splitlines()
    lines[3] = lines[3].rsplit("::", 1)[0]
    _write_lines(ml.directory / "movies.dat", lines)
    with pytest.raises(DataFormatError, match=r"movies\.dat, line 4: expected 3 '::'-separated fields, found 2"):
        load_movielens(ml.directory)


def test_rating_out_of_range(ml):
    lines = _ratings_lines(ml)
    u, m, _, t = lines[7].split("::")
    lines[7] = f"{u}::{m}::6::{t}"
    _write_lines(ml.directory / "ratings.dat", lines)
    with pytest.raises(DataFormatError, match=r"ratings\.dat, line 8: rating 6 is outside the declared range \[1, 5\]"):
        load_movielens(ml.directory)


def test_duplicate_pairs_error_or_counted(ml):
    ratings = list(ml.ratings)
    u, m, r, t = ratings[3]
    ratings.append((u, m, 1 if r != 1 else 2, t + 10**6))
    _write_ratings(ml.directory / "ratings.dat", ratings)
    with pytest.raises(DataFormatError, match=rf"ratings\.dat, line {len(ratings)}: duplicate rating .* \(first at line 4\)"):
        load_movielens(ml.directory)
    first = load_movielens(ml.directory, MovieLensOptions(duplicates="first"))
    assert first.drops == {"ratings_duplicate": 1} and first.n_ratings == len(ml.ratings)
    k = np.flatnonzero((first.users.ids[first.user] == str(u)) & (first.items.ids[first.item] == str(m)))
    assert len(k) == 1 and first.rating[k[0]] == r
    last = load_movielens(ml.directory, MovieLensOptions(duplicates="last"))
    k = np.flatnonzero((last.users.ids[last.user] == str(u)) & (last.items.ids[last.item] == str(m)))
    assert last.rating[k[0]] == ratings[-1][2]


def test_item_without_metadata(ml):
    ratings = list(ml.ratings) + [(1, 3999, 4, 978300760)]
    _write_ratings(ml.directory / "ratings.dat", ratings)
    with pytest.raises(DataFormatError, match=rf"ratings\.dat, line {len(ratings)}: item 3999 is not in the item table \(\S*movies\.dat\)"):
        load_movielens(ml.directory)
    data = load_movielens(ml.directory, MovieLensOptions(unknown_items="drop"))
    assert data.drops == {"ratings_unknown_item": 1} and data.n_ratings == len(ml.ratings)


def test_unknown_rate_value_names_the_extra_info_line(ml):
    path = ml.directory / "movies_extrainfos.dat"
    lines = path.read_bytes().decode("utf-8").split("\r\n")
    fields = lines[4].split("::")
    fields[3] = "TV-MA"
    lines[4] = "::".join(fields)
    path.write_bytes("\r\n".join(lines).encode("utf-8"))
    with pytest.raises(DataFormatError, match=r"movies_extrainfos\.dat, line 5: item feature 'rate': value 'TV-MA' is not in its vocabulary"):
        load_movielens(ml.directory)


def test_users_with_too_few_ratings(tmp_path):
    fx = write_ml1m(tmp_path / "ml", per_user=(18, 25), seed=3)
    data = load_movielens(fx.directory)
    n_short = sum(1 for u in fx.user_ids if sum(1 for r in fx.ratings if r[0] == u) < 20)
    assert n_short > 0
    split = build_split(data, seed=0)
    assert split.info["users_dropped_too_few_ratings"] == n_short
    assert split.info["users_kept"] == len(fx.user_ids) - n_short
    with pytest.raises(ProtocolError, match="fewer than 20 ratings"):
        build_split(data, ProtocolConfig(short_users="error"))


def test_missing_file(tmp_path):
    fx = write_ml1m(tmp_path / "ml")
    (fx.directory / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match="users.dat"):
        load_movielens(fx.directory)


# ------------------------------------------------------------------------------ real data


@pytest.mark.data
def test_ml1m_acceptance_counts(shared_data_dir, tmp_path, monkeypatch):
    """The issue's acceptance numbers on ../shared/data/ml-1m (a reconstruction: non-canonical)."""
    from metarec.data import load_split

    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    split = load_split("ml-1m", data_dir=shared_data_dir, seed=0, use_cache=False)
    info = split.info
    assert info["users_total"] == 6040 and info["users_kept"] == 6040
    assert info["users_dropped_too_few_ratings"] == 0
    assert (info["train_users"], info["test_users"]) == (4832, 1208)
    assert (info["users_warm"], info["users_cold"]) == (5400, 640)
    assert info["split_time"] == 975768738.0  # 2000-12-02 14:52:18 UTC = 2000-12-03 01:52:18 in Sydney
    for ts in (split.train, split.test):
        assert ts.n_support == 15 and ts.n_query == 5
        assert bool(ts.support_mask.all()) and bool(ts.query_mask.all())
    assert sum(info["query_scenarios_train"].values()) == 4832 * 5
    assert sum(info["query_scenarios_test"].values()) == 1208 * 5
    assert info["canonical"] is False and "ratings.dat" in info["non_canonical_files"]
    assert info["load_drops"] == {}
    # the item split of the reconstructed file is close to the paper's 1,683 / 1,645
    assert abs(info["items_warm"] - 1683) < 150 and abs(info["items_cold"] - 1645) < 150
    assert len(split.train.items) == 3883  # every movie of movies.dat, so every rated one


def test_relative_data_directory_is_not_applied_twice(tmp_path, monkeypatch):
    """A relative --data-dir (e.g. ../shared/data) must reach every file, vocabularies included."""
    write_ml1m(tmp_path / "data" / "ml-1m")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    data = load_movielens(Path("../data/ml-1m"))
    assert data.schema.item_feature("genre").cardinality > 0
    from metarec.data import load_split

    split = load_split("ml-1m", data_dir="../data", seed=1, use_cache=False)
    assert len(split.train) + len(split.test) == split.info["users_kept"]
