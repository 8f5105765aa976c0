"""Yelp (HIN release) as a built-in dataset: loader on a fixture in the release's layout, and the
time-less protocol defaults (seeded random rating order and warm/cold users)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from datafiles import write_yelp
from metarec.data import load_dataset, load_split
from metarec.data.catalog import YELP, verify
from metarec.data.protocol import ProtocolConfig, ProtocolError, build_split
from metarec.data.yelp import FRIEND_BINS


@pytest.fixture(scope="module")
def yelp(tmp_path_factory):
    return write_yelp(tmp_path_factory.mktemp("data") / "yelp")


def _row(table, raw_id):
    return int(np.flatnonzero(table.ids == str(raw_id))[0])


def _values(table, feature, row):
    f = next(x for x in table.features if x.name == feature)
    col = table.columns[feature][row]
    codes = col.tolist() if col.ndim else [int(col)]
    return sorted(f.vocabulary[c] for c in codes if c >= 0)


def test_loader_reads_the_relational_files_as_published(yelp):
    data = load_dataset("yelp", data_dir=yelp.directory.parent)
    assert data.n_ratings == len(yelp.ratings) and not data.has_time
    assert len(data.users) == len({u for u, _, _ in yelp.ratings})
    assert [f.name for f in data.schema.user_features] == ["compliment", "friends"]
    assert [f.name for f in data.schema.item_features] == ["category", "city"]
    for b in (1, 4, 9, 10):  # 9: no category, 4: no city
        if str(b) not in set(data.items.ids):
            continue
        r = _row(data.items, b)
        assert _values(data.items, "category", r) == (sorted(map(str, yelp.categories[b])) if b in yelp.categories else ["none"])
        assert _values(data.items, "city", r) == ([str(yelp.city[b])] if b in yelp.city else ["none"])
    edges = FRIEND_BINS
    for u in range(1, 41):
        if str(u) not in set(data.users.ids):
            continue
        r = _row(data.users, u)
        assert _values(data.users, "compliment", r) == (sorted(map(str, yelp.compliments[u])) if u in yelp.compliments else ["none"])
        n = len(yelp.friends[u])  # only the user's own friend list
        want = "<1" if n < 1 else next((f"[{a},{b})" for a, b in zip(edges, edges[1:]) if a <= n < b), f">={edges[-1]}")
        assert _values(data.users, "friends", r) == [want]


def test_checksums_flag_a_different_copy_as_non_canonical(yelp):
    ver = verify(YELP, yelp.directory)
    assert set(ver.status.values()) == {"non-canonical"}
    assert all(v["official_md5"].startswith("sha256:") for v in ver.non_canonical.values())
    data = load_dataset("yelp", data_dir=yelp.directory.parent)
    assert data.canonical is False and data.notes[0].startswith("NON-CANONICAL DATA")


def test_protocol_defaults_random_order_and_users_recorded(yelp, tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    counts = Counter(u for u, _, _ in yelp.ratings)
    kept = sorted(u for u, c in counts.items() if c >= 20)
    a = load_split("yelp", data_dir=yelp.directory.parent, seed=0)
    b = load_split("yelp", data_dir=yelp.directory.parent, seed=1)
    for s in (a, b):
        p = s.info["protocol"]
        assert (p["rating_order"], p["user_state_rule"], p["order_seed"]) == ("random", "random", 0)
        assert s.info["protocol_defaults_from"]["user_state_rule"] == "dataset default"
        assert s.info["users_kept"] == len(kept)
        assert s.info["users_cold"] == len(kept) - int(0.9 * len(kept)) and s.info["user_cold_fraction"] == 0.1
        assert s.info["time_source"].startswith("none")
    # the order and the user states define the data: the same for every run seed; the train/test split is not
    assert a.info["items_warm"] == b.info["items_warm"] and a.info["users_cold"] == b.info["users_cold"]
    assert set(a.test.user_index.tolist()) != set(b.test.user_index.tolist())
    # every task holds 20 distinct ratings of its user, not the first 20 lines of the file
    data = load_dataset("yelp", data_dir=yelp.directory.parent)
    by_user = {}
    for u, i, r in zip(data.user, data.item, data.rating):
        by_user.setdefault(int(u), {})[int(i)] = float(r)
    ts = a.train
    for k in range(len(ts)):
        u = int(ts.user_index[k])
        items = ts.support_items[k].tolist() + ts.query_items[k].tolist()
        assert len(set(items)) == 20 and all(i in by_user[u] for i in items)


def test_random_order_differs_from_file_order_and_follows_order_seed(yelp):
    data = load_dataset("yelp", data_dir=yelp.directory.parent)
    by_file = build_split(data, ProtocolConfig(rating_order="time"), seed=0)  # time = file position here
    rand0 = build_split(data, ProtocolConfig(), seed=0)
    rand7 = build_split(data, ProtocolConfig(order_seed=7), seed=0)
    assert not np.array_equal(by_file.train.query_items.numpy(), rand0.train.query_items.numpy())
    assert not np.array_equal(rand0.train.query_items.numpy(), rand7.train.query_items.numpy())
    again = build_split(data, ProtocolConfig(), seed=0)
    assert np.array_equal(rand0.train.query_items.numpy(), again.train.query_items.numpy())


def test_time_quantile_refuses_data_without_time(yelp):
    data = load_dataset("yelp", data_dir=yelp.directory.parent)
    with pytest.raises(ProtocolError, match="needs rating times, but the data has no time column"):
        build_split(data, ProtocolConfig(user_state_rule="time_quantile"))


def test_real_yelp_counts(tmp_path, monkeypatch):
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "yelp" / "user_business.dat").exists():
        pytest.skip(f"shared Yelp data not found at {SHARED_DATA}")
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    s = load_split("yelp", data_dir=SHARED_DATA, seed=0)
    assert s.info["canonical"] is True
    assert (s.info["users_total"], s.info["users_kept"], s.info["users_warm"], s.info["users_cold"]) == (16239, 2554, 2298, 256)
    assert (s.info["items_warm"], s.info["items_cold"]) == (1239, 8349)
    total = {k: s.info["query_scenarios_train"][k] + s.info["query_scenarios_test"][k] for k in ("W-W", "W-C", "C-W", "C-C")}
    assert total == {"W-W": 6592, "W-C": 4898, "C-W": 734, "C-C": 546}  # the numbers docs/protocol.md quotes
    assert (s.info["train_users"], s.info["test_users"]) == (2043, 511)
