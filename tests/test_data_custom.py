"""Your own data: a TOML schema over CSV (or Parquet) tables, with every bad-input case."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from metarec.config import ConfigError
from metarec.data import load_dataset, load_split
from metarec.data.custom import load_custom, load_schema_file
from metarec.data.protocol import ProtocolConfig
from metarec.data.readers import DataFormatError

SCHEMA = """
name = "shop"
rating_min = 1
rating_max = 5

[ratings]
path = "ratings.csv"
user = "user_id"
item = "item_id"
rating = "stars"
time = "when"
{ratings_extra}

[users]
path = "users.csv"
id = "user_id"
features = [
  {{ name = "segment", kind = "categorical" }},
  {{ name = "income", kind = "numeric", on_missing = "mean" }},
]

[items]
path = "items.csv"
id = "item_id"
features = [
  {{ name = "tags", kind = "multi_categorical", separator = "|" }},
  {{ name = "brand", kind = "categorical", column = "maker", on_missing = "category" }},
  {{ name = "price", kind = "numeric" }},
]

[protocol]
user_state_rule = "time_quantile"
item_cold_max_ratings = 3
"""


def write_shop(d: Path, *, n_users=30, n_items=25, per_user=21, ratings_extra="", seed=0, iso_time=False) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    users = ["user_id,segment,income"]
    for u in range(n_users):
        income = "" if u == 4 else f"{1000 + 37 * u}"
        users.append(f"u{u},{'abc'[u % 3]},{income}")
    (d / "users.csv").write_text("\n".join(users) + "\n", "utf-8")
    items = ["item_id,tags,maker,price"]
    for i in range(n_items):
        tags = "|".join(sorted({f"t{i % 4}", f"t{(i * 7) % 5}"}))
        maker = "" if i == 3 else f'"Maker, {i % 3}"'
        items.append(f"{i},{tags},{maker},{1.5 * i}")
    (d / "items.csv").write_text("\n".join(items) + "\n", "utf-8")
    rows = ["user_id,item_id,stars,when"]
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False).tolist()):
            t = 1_600_000_000 + 86400 * u + 60 * k
            when = np.datetime64(t, "s").astype(str) if iso_time else str(t)
            rows.append(f"u{u},{i},{int(rng.integers(1, 6))},{when}")
    (d / "ratings.csv").write_text("\n".join(rows) + "\n", "utf-8")
    schema = d / "schema.toml"
    schema.write_text(SCHEMA.format(ratings_extra=ratings_extra), "utf-8")
    return schema


@pytest.fixture()
def shop(tmp_path):
    return write_shop(tmp_path / "shop")


def edit_lines(path: Path, fn) -> None:
    lines = path.read_text("utf-8").splitlines()
    fn(lines)
    path.write_text("\n".join(lines) + "\n", "utf-8")


def test_loads_declared_features(shop):
    data = load_custom(shop)
    s = data.schema
    assert s.name == "shop" and (s.rating_min, s.rating_max) == (1.0, 5.0)
    assert [(f.name, f.kind) for f in s.user_features] == [("segment", "categorical"), ("income", "numeric")]
    assert [(f.name, f.kind) for f in s.item_features] == [("tags", "multi_categorical"), ("brand", "categorical"), ("price", "numeric")]
    assert s.user_feature("segment").vocabulary == ("a", "b", "c")
    assert s.item_feature("tags").max_values == 2
    assert "Maker, 1" in s.item_feature("brand").vocabulary  # quoted field with a comma
    assert "<missing>" in s.item_feature("brand").vocabulary  # on_missing = "category"
    assert data.n_ratings == 30 * 21 and data.drops == {}
    # numeric: standardised, scale kept in the schema, missing income imputed with the mean
    inc = data.users.columns["income"].numpy()
    f = s.user_feature("income")
    assert abs(inc.mean()) < 1e-5 and f.std > 0
    row4 = int(np.flatnonzero(data.users.ids == "u4")[0])
    assert abs(inc[row4] * f.std + f.mean - f.mean) < 1e-3
    assert data.protocol_defaults == {"user_state_rule": "time_quantile", "item_cold_max_ratings": 3}


def test_time_column_numbers_and_iso_dates(tmp_path):
    a = load_custom(write_shop(tmp_path / "a"))
    b = load_custom(write_shop(tmp_path / "b", iso_time=True))
    assert np.array_equal(a.time, b.time)


def test_without_time_column_file_order_is_time(tmp_path):
    schema = write_shop(tmp_path / "s")
    schema.write_text(schema.read_text().replace('time = "when"\n', ""), "utf-8")
    data = load_custom(schema)
    assert np.array_equal(data.time, np.arange(data.n_ratings, dtype=float))


def test_load_split_custom_and_cache(shop, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    a = load_split("custom", config_path=shop, seed=1)
    assert a.info["cache"]["hit"] is False and a.info["protocol"]["item_cold_max_ratings"] == 3
    b = load_split("custom", config_path=shop, seed=1)
    assert b.info["cache"]["hit"] is True
    assert b.train.user_index.tolist() == a.train.user_index.tolist()
    assert len(a.train) + len(a.test) == 30 and a.info["canonical"] is None
    # changing a data file changes the key
    edit_lines(shop.parent / "ratings.csv", lambda ls: ls.__setitem__(1, ls[1].rsplit(",", 2)[0] + ",5," + ls[1].rsplit(",", 1)[1]))
    c = load_split("custom", config_path=shop, seed=1)
    assert c.info["cache"]["hit"] is False and c.info["checksum"] != a.info["checksum"]


def test_load_dataset_custom_needs_config():
    with pytest.raises(ConfigError, match="config_path"):
        load_dataset("custom")


# ------------------------------------------------------------------------------ bad input


def test_rating_out_of_range(shop):
    edit_lines(shop.parent / "ratings.csv", lambda ls: ls.__setitem__(9, ls[9].split(",")[0] + ",7,9," + ls[9].split(",")[3]))
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 10: rating '9' is outside the declared range \[1, 5\]"):
        load_custom(shop)


def test_rating_out_of_range_dropped_when_asked(tmp_path):
    schema = write_shop(tmp_path / "s", ratings_extra='out_of_range = "drop"')
    edit_lines(schema.parent / "ratings.csv", lambda ls: ls.__setitem__(9, ls[9].split(",")[0] + ",7,9," + ls[9].split(",")[3]))
    assert load_custom(schema).drops == {"ratings_out_of_range": 1}


def test_non_numeric_rating(shop):
    edit_lines(shop.parent / "ratings.csv", lambda ls: ls.__setitem__(4, ls[4].split(",")[0] + ",7,good," + ls[4].split(",")[3]))
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 5: column 'stars': 'good' is not a number"):
        load_custom(shop)


def test_duplicates(tmp_path):
    schema = write_shop(tmp_path / "s")
    edit_lines(schema.parent / "ratings.csv", lambda ls: ls.append(ls[3].rsplit(",", 1)[0] + ",1700000000"))
    n = len((schema.parent / "ratings.csv").read_text().splitlines())
    with pytest.raises(DataFormatError, match=rf"ratings\.csv, line {n}: duplicate rating .*\(first at line 4\)"):
        load_custom(schema)
    schema2 = write_shop(tmp_path / "t", ratings_extra='duplicates = "first"')
    edit_lines(schema2.parent / "ratings.csv", lambda ls: ls.append(ls[3].rsplit(",", 1)[0] + ",1700000000"))
    assert load_custom(schema2).drops == {"ratings_duplicate": 1}


def test_unknown_user_error_or_drop(tmp_path):
    schema = write_shop(tmp_path / "s")
    edit_lines(schema.parent / "ratings.csv", lambda ls: ls.insert(2, "ghost,1,3,1600000000"))
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 3: user 'ghost' is not in the user table"):
        load_custom(schema)
    schema2 = write_shop(tmp_path / "t", ratings_extra='unknown_users = "drop"')
    edit_lines(schema2.parent / "ratings.csv", lambda ls: ls.insert(2, "ghost,1,3,1600000000"))
    assert load_custom(schema2).drops == {"ratings_unknown_user": 1}


def test_item_without_metadata(shop):
    edit_lines(shop.parent / "ratings.csv", lambda ls: ls.insert(5, "u1,999,3,1600000000"))
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 6: item '999' is not in the item table \(\S*items\.csv\)"):
        load_custom(shop)


def test_missing_column(shop):
    edit_lines(shop.parent / "items.csv", lambda ls: ls.__setitem__(0, "item_id,tags,brand_name,price"))
    with pytest.raises(DataFormatError, match=r"items\.csv, line 1: missing column\(s\) 'maker'"):
        load_custom(shop)


def test_wrong_separator(shop):
    edit_lines(shop.parent / "users.csv", lambda ls: ls.__setitem__(slice(None), [x.replace(",", ";") for x in ls]))
    with pytest.raises(DataFormatError, match=r"users\.csv, line 1: missing column.*wrong separator"):
        load_custom(shop)


def test_malformed_line(shop):
    edit_lines(shop.parent / "ratings.csv", lambda ls: ls.__setitem__(6, "u1,3"))
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 7: expected 4 fields, found 2"):
        load_custom(shop)


def test_wrong_encoding(shop):
    p = shop.parent / "users.csv"
    p.write_bytes(p.read_text("utf-8").replace("u7,b", "u7,\xe9").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"users\.csv, line 9: byte b'\\xe9' is not valid utf-8"):
        load_custom(shop)


def test_missing_categorical_value_is_an_error_by_default(shop):
    edit_lines(shop.parent / "users.csv", lambda ls: ls.__setitem__(3, "u2,,1000"))
    with pytest.raises(DataFormatError, match=r"users\.csv, line 4: user feature 'segment' is missing"):
        load_custom(shop)


def test_missing_value_drop_policy_counts_rows_and_ratings(shop):
    shop.write_text(shop.read_text().replace('{ name = "segment", kind = "categorical" }',
                                             '{ name = "segment", kind = "categorical", on_missing = "drop" }'))
    edit_lines(shop.parent / "users.csv", lambda ls: ls.__setitem__(3, "u2,,1000"))
    data = load_custom(shop)
    assert data.drops == {"users_missing_segment": 1, "ratings_of_dropped_users": 21}
    assert "u2" not in data.users.ids.tolist()


def test_numeric_feature_not_a_number(shop):
    edit_lines(shop.parent / "items.csv", lambda ls: ls.__setitem__(2, ls[2].rsplit(",", 1)[0] + ",cheap"))
    with pytest.raises(DataFormatError, match=r"items\.csv, line 3: feature 'price': 'cheap' is not a number"):
        load_custom(shop)


def test_duplicate_ids_in_a_table(shop):
    edit_lines(shop.parent / "users.csv", lambda ls: ls.append("u3,a,1"))
    with pytest.raises(DataFormatError, match=r"users\.csv, line 32: user id 'u3' appears more than once \(first at line 5\)"):
        load_custom(shop)


def test_fixed_vocabulary_and_unknown_values(shop):
    shop.write_text(shop.read_text().replace('{ name = "segment", kind = "categorical" }',
                                             '{ name = "segment", kind = "categorical", vocabulary = ["a", "b"] }'))
    with pytest.raises(DataFormatError, match=r"users\.csv, line 4: user feature 'segment': value 'c' is not in its vocabulary"):
        load_custom(shop)


def test_schema_errors(tmp_path):
    schema = write_shop(tmp_path / "s")
    text = schema.read_text()
    schema.write_text(text.replace('kind = "numeric", on_missing = "mean"', 'kind = "numerical"'))
    with pytest.raises(ConfigError, match="numerical"):
        load_schema_file(schema)
    schema.write_text(text.replace("[protocol]", "[protocol]\nratings_per_user = 10"))
    with pytest.raises(ConfigError, match="ratings_per_user"):
        load_schema_file(schema)
    schema.write_text(text.replace('separator = "|"', 'sep = "|"'))
    with pytest.raises(ConfigError, match="sep"):
        load_schema_file(schema)
    schema.write_text(text.replace('path = "items.csv"', 'path = "nope.csv"'))
    with pytest.raises(DataFormatError, match="nope.csv"):
        load_custom(schema)


def test_too_few_ratings_per_user_is_reported_by_the_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = write_shop(tmp_path / "s", per_user=12)
    split = load_split("custom", config_path=schema, protocol=ProtocolConfig(ratings_per_user=12, n_support=7), use_cache=False)
    assert split.info["users_kept"] == 30 and split.train.n_support == 7
    from metarec.data.protocol import ProtocolError

    with pytest.raises(ProtocolError, match="only 0 users have at least 20"):
        load_split("custom", config_path=schema, use_cache=False)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_how_to_install(shop):
    (shop.parent / "items.parquet").write_bytes(b"PAR1")
    shop.write_text(shop.read_text().replace('path = "items.csv"', 'path = "items.parquet"'))
    with pytest.raises(ImportError, match=r"items\.parquet needs pyarrow.*pip install"):
        load_custom(shop)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_parquet_tables(shop):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    csv_data = load_custom(shop)
    for name in ("ratings", "users", "items"):
        table = pacsv.read_csv(shop.parent / f"{name}.csv", convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        pq.write_table(table, shop.parent / f"{name}.parquet")
        shop.write_text(shop.read_text().replace(f'path = "{name}.csv"', f'path = "{name}.parquet"'))
    pq_data = load_custom(shop)
    assert np.array_equal(pq_data.rating, csv_data.rating)
    assert pq_data.users.ids.tolist() == csv_data.users.ids.tolist()
