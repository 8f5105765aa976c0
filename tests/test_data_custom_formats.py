"""Public releases read as published through a schema file alone (issue 16): headerless files,
flag columns, relational (id, value) files, derived features, sides without features, and the
bad inputs that used to crash -- checked as CLI output: one line, no traceback."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from datafiles import ML100K_GENRES, ML100K_SCHEMA, write_ml100k, write_no_user_features
from metarec.cli import main
from metarec.config import ConfigError
from metarec.data import load_dataset, load_split
from metarec.data.custom import CONSTANT_FEATURE, load_custom
from metarec.data.protocol import ProtocolConfig, ProtocolError, build_split
from metarec.data.readers import DataFormatError


@pytest.fixture()
def ml100k(tmp_path):
    fx = write_ml100k(tmp_path / "ml-100k")
    (fx.directory / "schema.toml").write_text(ML100K_SCHEMA, "utf-8")
    return fx


def _independent_counts(ratings):
    """The protocol's counts from the raw records, written out without metarec's code."""
    by_user = defaultdict(list)
    for pos, (u, i, r, t) in enumerate(ratings):
        by_user[u].append((t, pos, i))
    kept = {u: sorted(v)[:20] for u, v in by_user.items() if len(v) >= 20}
    times = sorted(t for _, _, _, t in ratings)
    split_time = times[min(int(round(0.8 * len(times))), len(times) - 1)]
    cold_user = {u: not (min(t for t, _, _ in by_user[u]) < split_time) for u in kept}
    n_item = defaultdict(int)
    for u, rows in kept.items():
        for _, _, i in rows:
            n_item[i] += 1
    cold_item = {i: n <= 10 for i, n in n_item.items()}
    scen = defaultdict(int)
    for u, rows in kept.items():
        for _, _, i in rows[15:]:
            scen[("W", "C")[cold_user[u]] + "-" + ("W", "C")[cold_item[i]]] += 1
    return {
        "users_kept": len(kept), "users_dropped_too_few_ratings": len(by_user) - len(kept),
        "users_cold": sum(cold_user.values()), "users_warm": len(kept) - sum(cold_user.values()),
        "items_warm": sum(not c for c in cold_item.values()), "items_cold": sum(cold_item.values()),
        "split_time": float(split_time), "scenarios": dict(scen),
    }


def test_ml100k_layout_through_the_schema_alone(ml100k, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = ml100k.directory / "schema.toml"
    data = load_custom(schema)
    assert data.n_ratings == len(ml100k.ratings) and data.has_time
    genre = data.schema.item_feature("genre")
    assert genre.kind == "multi_categorical" and set(genre.vocabulary) <= set(ML100K_GENRES)
    year = data.schema.item_feature("year")
    for raw in (1, 5, 7):  # 5: latin-1 title; 7: no release date, genre "unknown" only
        row = int(np.flatnonzero(data.items.ids == str(raw))[0])
        got = sorted(genre.vocabulary[c] for c in data.items.columns["genre"][row].tolist() if c >= 0)
        assert got == sorted(ml100k.item_genres[raw])
        want_year = ml100k.item_year[raw] or "<missing>"
        assert year.vocabulary[int(data.items.columns["year"][row])] == want_year
    age = data.schema.user_feature("age")
    assert set(age.vocabulary) <= {"<18", "[18,25)", "[25,35)", "[35,45)", "[45,50)", "[50,56)", ">=56"}

    split = load_split("custom", config_path=schema, seed=0)
    want = _independent_counts(ml100k.ratings)
    for key in ("users_kept", "users_dropped_too_few_ratings", "users_cold", "users_warm", "items_warm", "items_cold",
                "split_time"):
        assert split.info[key] == want[key], key
    got = {s: split.info["query_scenarios_train"][s] + split.info["query_scenarios_test"][s] for s in want["scenarios"]}
    assert got == want["scenarios"]
    assert split.info["protocol_defaults_from"]["user_state_rule"] == "generic default for data with a time column"


def test_cli_bench_and_info_on_the_ml100k_layout(ml100k, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = str(ml100k.directory / "schema.toml")
    r = CliRunner().invoke(main, ["datasets", "info", "custom", "--config", schema])
    assert r.exit_code == 0, r.output
    assert "time_quantile" in r.output and "generic default for data with a time column" in r.output
    r = CliRunner().invoke(main, ["bench", "-d", "custom", "--dataset-config", schema, "-m", "global-mean",
                                  "--seeds", "0", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    line = "data ml-100k-style: 30 users kept; 6 with fewer than 20 ratings set aside; nothing dropped while loading"
    assert line in r.output.splitlines()
    page = (Path(__file__).resolve().parents[1] / "docs" / "custom-data.md").read_text("utf-8")
    assert f"`{line}`" in page  # the page quotes this exact line
    for fact in ("36 users of whom 30 have at least 20 ratings (6 set aside), 24 warm\nand 6 cold users",
                 "35 warm and 10 cold items"):
        assert fact in page
    import json

    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["dataset"]["protocol"]["user_state_rule"] == "time_quantile"
    assert res["dataset"]["protocol_defaults_from"]["rating_order"].startswith("generic default")


def test_page_shows_the_fixture_lines(ml100k):
    page = (Path(__file__).resolve().parents[1] / "docs" / "custom-data.md").read_text("utf-8")
    d = ml100k.directory
    shown = d.joinpath("u.data").read_text().splitlines()[:3] + d.joinpath("u.user").read_text().splitlines()[:3]
    items = d.joinpath("u.item").read_bytes().decode("latin-1").splitlines()
    for line in shown + [items[4], items[6]]:
        assert line in page, line
    assert '--8<-- "docs/examples/ml-100k/schema.toml"' in page


def test_a_bad_date_names_file_line_and_format(ml100k):
    path = ml100k.directory / "u.item"
    lines = path.read_bytes().decode("latin-1").splitlines()
    lines[6] = lines[6].replace("|unknown||", "|unknown|1-1-95|")
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"u\.item, line 7: feature 'year': '1-1-95' is not a date in the format '%d-%b-%Y'"):
        load_custom(ml100k.directory / "schema.toml")


def test_side_without_features_gets_one_constant_feature(tmp_path):
    schema = write_no_user_features(tmp_path / "shop")
    data = load_custom(schema)
    assert [f.name for f in data.schema.user_features] == [CONSTANT_FEATURE]
    assert len(data.users) == 40 and data.users.columns[CONSTANT_FEATURE].unique().tolist() == [0]
    # ids only: an item table with an id column and no features
    text = schema.read_text().split("[items]")[0] + '[items]\npath = "items.csv"\nid = "asin"\n'
    schema.write_text(text)
    data = load_custom(schema)
    assert [f.name for f in data.schema.item_features] == [CONSTANT_FEATURE]


def test_relational_feature_files_and_count_bins(tmp_path):
    d = tmp_path / "rel"
    d.mkdir()
    (d / "r.tsv").write_text("".join(f"u{u}\tb{b}\t{1 + (u + b) % 5}\n" for u in range(25) for b in range(22)))
    (d / "tags.dat").write_text("b1::x\nb1::y\nb2::x\nb99::z\n")  # b99 is in no rating: ignored, noted
    (d / "friends.tsv").write_text("".join(f"u1\tu{v}\n" for v in range(2, 9)) + "u2\tu1\n")
    (d / "s.toml").write_text(
        '[ratings]\npath = "r.tsv"\nheader = false\nnames = ["u", "b", "stars"]\nuser = "u"\nitem = "b"\nrating = "stars"\n'
        '[users]\nid = "u"\nfeatures = [{ name = "friends", kind = "categorical", derive = "count", bins = [1, 5], '
        'file = { path = "friends.tsv", header = false, names = ["id", "friend"], column = "friend" } }]\n'
        '[items]\nid = "b"\nfeatures = [{ name = "tags", kind = "multi_categorical", on_missing = "empty", '
        'file = { path = "tags.dat", delimiter = "::", header = false, names = ["id", "value"] } }]\n')
    data = load_custom(d / "s.toml")
    tags = data.schema.item_feature("tags")
    row = {i: k for k, i in enumerate(data.items.ids)}
    assert sorted(tags.vocabulary[c] for c in data.items.columns["tags"][row["b1"]].tolist() if c >= 0) == ["x", "y"]
    assert (data.items.columns["tags"][row["b5"]] < 0).all()
    friends = data.schema.user_feature("friends")
    urow = {u: k for k, u in enumerate(data.users.ids)}
    assert friends.vocabulary[int(data.users.columns["friends"][urow["u1"]])] == ">=5"  # 7 friends
    assert friends.vocabulary[int(data.users.columns["friends"][urow["u2"]])] == "[1,5)"
    assert friends.vocabulary[int(data.users.columns["friends"][urow["u3"]])] == "<1"
    assert any("tags.dat: 1 row(s) of ids absent" in n for n in data.notes)
    # no time column: the generic defaults are random; time_quantile is refused with a clear error
    split = build_split(data, ProtocolConfig(), seed=0)
    assert (split.info["protocol"]["rating_order"], split.info["protocol"]["user_state_rule"]) == ("random", "random")
    with pytest.raises(ProtocolError, match="'time_quantile' needs rating times"):
        build_split(data, ProtocolConfig(user_state_rule="time_quantile"))


def test_format_detection(tmp_path):
    d = tmp_path / "fmt"
    d.mkdir()
    (d / "r.tsv").write_text("user_id\titem_id\trating\n" + "".join(f"{u}\t{i}\t3\n" for u in range(3) for i in range(20)))
    (d / "s.toml").write_text('[ratings]\npath = "r.tsv"\n')
    assert load_custom(d / "s.toml").n_ratings == 60  # .tsv: tab, with its header
    (d / "r.tsv").rename(d / "r.data")
    (d / "s.toml").write_text('[ratings]\npath = "r.data"\n')
    with pytest.raises(DataFormatError, match=r"r\.data: cannot tell the format from the extension '\.data'; set format"):
        load_custom(d / "s.toml")
    (d / "r.data").rename(d / "r.dat")
    (d / "s.toml").write_text('[ratings]\npath = "r.dat"\n')
    with pytest.raises(DataFormatError, match="format 'dat' needs a delimiter"):
        load_custom(d / "s.toml")
    (d / "s.toml").write_text('[ratings]\npath = "r.dat"\ndelimiter = "\\t"\n')
    assert load_custom(d / "s.toml").n_ratings == 60


def test_schema_errors_name_the_key(tmp_path):
    (tmp_path / "s.toml").write_text('[ratings]\npath = "r.csv"\nheader = false\nnames = ["a", "b", "c"]\n')
    with pytest.raises(ConfigError, match=r"\[ratings\]: user column 'user_id' is not in names"):
        load_custom(tmp_path / "s.toml")
    (tmp_path / "s.toml").write_text('[ratings]\npath = "r.csv"\n[items]\npath = "i.csv"\nid = "item_id"\n'
                                     'features = [{ name = "g", kind = "categorical", bins = [3, 1] }]\n')
    with pytest.raises(ConfigError, match="bins must be a non-empty ascending list"):
        load_custom(tmp_path / "s.toml")


# ---------------------------------------------------------------- bad input as CLI output


def _one_line_error(result, *needles):
    out = result.output.strip()
    assert result.exit_code != 0, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    for n in needles:
        assert n in out, out
    return out


def _shop(tmp_path):
    return write_no_user_features(tmp_path / "shop")


def test_ratings_file_with_a_header_and_no_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = _shop(tmp_path)
    (schema.parent / "ratings.csv").write_text("reviewer,asin,overall,unixReviewTime\n")
    for args in (["datasets", "info", "custom", "--config", str(schema)],
                 ["bench", "-d", "custom", "--dataset-config", str(schema), "-m", "global-mean", "--seeds", "0",
                  "--no-progress", "--out", str(tmp_path / "o")]):
        _one_line_error(CliRunner().invoke(main, args), "ratings.csv", "has no data rows (only a header line)")


def test_users_file_with_a_header_and_no_rows_and_unknown_users_drop(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = _shop(tmp_path)
    (schema.parent / "users.csv").write_text("reviewer,segment\n")
    text = schema.read_text().replace('time = "unixReviewTime"', 'time = "unixReviewTime"\nunknown_users = "drop"')
    schema.write_text(text + '\n[users]\npath = "users.csv"\nid = "reviewer"\n'
                      'features = [{ name = "segment", kind = "categorical" }]\n')
    for args in (["datasets", "info", "custom", "--config", str(schema)],
                 ["bench", "--dataset-config", str(schema), "-m", "global-mean", "--seeds", "0", "--no-progress",
                  "--out", str(tmp_path / "o")]):
        r = CliRunner().invoke(main, args)
        out = r.output.strip().splitlines()
        if args[0] == "bench":  # first the note that --dataset-config implied -d custom, on one line
            assert out[0].endswith("is a dataset schema: benchmarking it as -d custom") and len(out) == 2, out
        assert r.exit_code != 0 and "Traceback" not in r.output
        assert r.exit_code == 2 and ": error: " in out[-1] and "users.csv: the users file has no data rows" in out[-1]


def test_time_quantile_on_data_without_time(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = _shop(tmp_path)
    schema.write_text(schema.read_text().replace('time = "unixReviewTime"\n', "") + '\n[protocol]\nuser_state_rule = "time_quantile"\n')
    for args in (["datasets", "info", "custom", "--config", str(schema)],
                 ["bench", "-d", "custom", "--dataset-config", str(schema), "-m", "global-mean", "--seeds", "0",
                  "--no-progress", "--out", str(tmp_path / "o")]):
        _one_line_error(CliRunner().invoke(main, args), "'time_quantile' needs rating times", "no time column")


def test_wrong_dataset_invocations(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = str(_shop(tmp_path))
    run = ["-m", "global-mean", "--seeds", "0", "--no-progress", "--out", str(tmp_path / "o")]
    _one_line_error(CliRunner().invoke(main, ["bench", "-d", "custom", *run]), "--dataset-config FILE")
    _one_line_error(CliRunner().invoke(main, ["datasets", "info", "custom"]), "--config FILE")
    _one_line_error(CliRunner().invoke(main, ["bench", "-d", schema, *run]),
                    "unknown dataset", f"use: -d custom --dataset-config {schema}")
    _one_line_error(CliRunner().invoke(main, ["datasets", "info", schema]),
                    f"use: metarec datasets info custom --config {schema}")
    _one_line_error(CliRunner().invoke(main, ["bench", "-d", "yelp", "--dataset-config", schema, "--data-dir",
                                              str(tmp_path), *run]), "yelp")
    r = CliRunner().invoke(main, ["bench", "--dataset-config", schema, *run])  # implies -d custom
    assert r.exit_code == 0, r.output
    assert "benchmarking it as -d custom" in " ".join(r.output.split())


def test_help_of_dataset_names_custom_and_yelp():
    text = " ".join(CliRunner().invoke(main, ["bench", "--help"]).output.split())
    assert "yelp" in text and "custom (your own data, with --dataset-config" in text
    text = " ".join(CliRunner().invoke(main, ["datasets", "info", "--help"]).output.split())
    assert "yelp" in text and "custom --config" in text


def test_every_registered_method_runs_without_user_features(tmp_path, monkeypatch):
    """The contract: a dataset with no user features (no [users] table) is benchmarkable by every method."""
    from metarec.registry import learners_for_protocol

    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    schema = write_no_user_features(tmp_path / "shop", n_users=30, n_items=25)
    methods = sorted(learners_for_protocol("user-cold"))
    r = CliRunner().invoke(main, [
        "bench", "-d", "custom", "--dataset-config", str(schema), "-m", ",".join(methods), "--seeds", "0",
        "--epochs", "1", "--threads", "1", "--no-progress", "--n-boot", "20", "--out", str(tmp_path / "run"),
        "--set", "s2meta.max_steps=2", "--set", "s2meta.min_steps=1",
    ])
    assert r.exit_code == 0, r.output
    import json

    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {x["method"] for x in res["runs"] if x["status"] == "ok"} == set(methods)
    for x in res["runs"]:
        assert x["status"] == "ok", (x["method"], x.get("error"))
