"""The MAMO protocol: trimming with the tie rule, support/query, the seeded user split, warm/cold rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.data.base import InteractionData
from metarec.data.protocol import ProtocolConfig, ProtocolError, build_split, trim_per_user
from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable


def make_data(user, item, rating, time, *, n_users=None, n_items=None, defaults=None, order=None) -> InteractionData:
    user = np.asarray(user)
    item = np.asarray(item)
    n_users = n_users or int(user.max()) + 1
    n_items = n_items or int(item.max()) + 1
    uf = (Feature("g", "categorical", ("a", "b")),)
    itf = (Feature("c", "categorical", ("x", "y")),)
    users = FeatureTable(uf, {"g": torch.zeros(n_users, dtype=torch.long)}, np.array([f"u{k}" for k in range(n_users)]))
    items = FeatureTable(itf, {"c": torch.zeros(n_items, dtype=torch.long)}, np.array([f"i{k}" for k in range(n_items)]))
    return InteractionData(
        name="toy", schema=FeatureSchema(uf, itf), users=users, items=items,
        user=user, item=item, rating=np.asarray(rating, dtype=np.float32), time=np.asarray(time, dtype=np.float64),
        order=np.arange(len(user)) if order is None else np.asarray(order),
        protocol_defaults=defaults or {},
    )


def regular_data(n_users=50, per_user=25, n_items=40, seed=0, **kw) -> InteractionData:
    rng = np.random.default_rng(seed)
    user, item, time = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        user += [u] * per_user
        item += items.tolist()
        time += (1000 * u + rng.permutation(per_user)).tolist()  # file order differs from time order
    return make_data(user, item, rng.integers(1, 6, size=len(user)), time, n_items=n_items, **kw)


def test_first_20_by_time_with_stable_tie_rule():
    # user 0: 24 ratings; times out of file order; the 20th/21st by time tie -> file order decides
    times = [5, 3, 9, 1] + list(range(10, 26)) + [7, 7, 30, 2]
    items = list(range(24))
    data = make_data([0] * 24, items, [3] * 24, times)
    users, rows, short = trim_per_user(data, 20)
    assert users.tolist() == [0] and len(short) == 0
    kept_times = data.time[rows[0]]
    assert np.all(np.diff(kept_times) >= 0)
    assert kept_times[0] == 1 and 30 not in kept_times
    # the two ratings at time 7 (file positions 20, 21) appear in file order
    sevens = rows[0][kept_times == 7]
    assert sevens.tolist() == [20, 21]


def test_tie_rule_uses_file_position_not_item_id():
    # same time for every rating: the kept 20 are exactly the first 20 lines of the file
    items = list(range(30))[::-1]
    data = make_data([0] * 30, items, [1] * 30, [100] * 30)
    _, rows, _ = trim_per_user(data, 20)
    assert rows[0].tolist() == list(range(20))


def test_support_first_15_query_last_5():
    data = regular_data()
    split = build_split(data, seed=0)
    ts = split.train
    assert ts.n_support == 15 and ts.n_query == 5
    _, rows, _ = trim_per_user(data, 20)
    u = int(ts.user_index[0])
    assert ts.support_items[0].tolist() == data.item[rows[u][:15]].tolist()
    assert ts.query_items[0].tolist() == data.item[rows[u][15:]].tolist()
    assert ts.query_ratings[0].tolist() == data.rating[rows[u][15:]].tolist()


@pytest.mark.parametrize("n_support", [5, 10, 15])
def test_support_size_varies_with_query_fixed_to_last_5(n_support):
    data = regular_data()
    base = build_split(data, seed=3)
    split = build_split(data, ProtocolConfig(n_support=n_support), seed=3)
    assert split.train.n_support == n_support
    assert torch.equal(split.train.query_items, base.train.query_items)
    assert torch.equal(split.train.support_items, base.train.support_items[:, :n_support])
    last = build_split(data, ProtocolConfig(n_support=n_support, support_position="last"), seed=3)
    assert torch.equal(last.train.support_items, base.train.support_items[:, 15 - n_support:])


def test_user_split_is_seeded_disjoint_and_complete():
    data = regular_data(n_users=101)
    a = build_split(data, seed=7)
    b = build_split(data, seed=7)
    c = build_split(data, seed=8)
    assert torch.equal(a.train.user_index, b.train.user_index)
    assert not torch.equal(a.train.user_index, c.train.user_index)
    tr, te = set(a.train.user_index.tolist()), set(a.test.user_index.tolist())
    assert not tr & te and tr | te == set(range(101))
    assert len(tr) == int(0.8 * 101) and a.info["train_users"] + a.info["test_users"] == 101
    assert a.validation is None and a.info["validation_users"] == 0


def test_validation_slice_comes_from_training_users():
    data = regular_data(n_users=100)
    plain = build_split(data, seed=1)
    val = build_split(data, ProtocolConfig(validation_fraction=0.25), seed=1)
    assert torch.equal(plain.test.user_index, val.test.user_index)
    v = set(val.validation.user_index.tolist())
    assert len(v) == 20 and v <= set(plain.train.user_index.tolist())
    assert not v & set(val.train.user_index.tolist())
    assert val.info["query_scenarios_validation"] is not None


def test_short_users_are_dropped_and_counted_or_rejected():
    data = regular_data(n_users=10)
    keep = ~((data.user == 3) & (np.arange(len(data.user)) % 25 >= 12))  # user 3 keeps 12 ratings
    small = make_data(data.user[keep], data.item[keep], data.rating[keep], data.time[keep], n_users=11, n_items=40)
    split = build_split(small, seed=0)
    assert split.info["users_dropped_too_few_ratings"] == 1
    assert split.info["users_without_ratings"] == 1  # user 10 has none
    assert split.info["users_kept"] == 9
    assert 3 not in split.train.user_index.tolist() + split.test.user_index.tolist()
    with pytest.raises(ProtocolError, match="fewer than 20"):
        build_split(small, ProtocolConfig(short_users="error"))


def test_split_time_is_the_reference_codes_80th_percentile():
    # 10 users, each with 20 ratings; first-rating times 0, 100, ..., 900
    user = np.repeat(np.arange(10), 20)
    time = (100 * user + np.tile(np.arange(20), 10)).astype(float)
    data = make_data(user, np.tile(np.arange(20), 10), np.ones(200), time)
    split = build_split(data, seed=0)
    expected = np.sort(time)[round(0.8 * 200)]  # position round(0.8 N) of all ratings sorted by time
    assert split.info["split_time"] == expected == 800.0
    # strictly before: the user whose first rating is AT the split time is cold
    assert split.info["users_warm"] == 8 and split.info["users_cold"] == 2


def test_item_state_counted_on_the_trimmed_table():
    # item 0 is rated by every user but only AFTER their first 20 ratings: cold on the trimmed table
    n_users = 12
    user, item, time = [], [], []
    for u in range(n_users):
        for k in range(20):
            user.append(u)
            item.append(1 + (u * 20 + k) % 30)
            time.append(k)
        user.append(u)
        item.append(0)
        time.append(100)
    data = make_data(user, item, np.ones(len(user)), time, n_items=31)
    split = build_split(data, seed=0)
    counts = np.bincount(np.concatenate([split.train.support_items.ravel(), split.train.query_items.ravel(),
                                         split.test.support_items.ravel(), split.test.query_items.ravel()]), minlength=31)
    assert counts[0] == 0  # not in any task
    assert split.info["items_in_trimmed_table"] == 30  # item 0 is not counted at all
    # each of items 1..30 has exactly 8 ratings -> cold with threshold 10, warm with threshold 7
    assert split.info["items_cold"] == 30
    assert build_split(data, ProtocolConfig(item_cold_max_ratings=7)).info["items_warm"] == 30
    # exactly at the threshold is cold ("warm iff MORE than")
    assert build_split(data, ProtocolConfig(item_cold_max_ratings=8)).info["items_warm"] == 0


def test_scenario_label_of_every_query_rating():
    data = regular_data(n_users=60, n_items=80, seed=2)
    split = build_split(data, seed=0)
    _, rows, _ = trim_per_user(data, 20)
    counts = np.bincount(data.item[rows].ravel(), minlength=80)
    first = np.full(60, np.inf)
    np.minimum.at(first, data.user, data.time)
    split_time = split.info["split_time"]
    for ts in (split.train, split.test):
        for k in range(len(ts)):
            u = int(ts.user_index[k])
            uc = not first[u] < split_time
            for it, sc in zip(ts.query_items[k].tolist(), ts.query_scenario[k].tolist()):
                assert sc == 2 * int(uc) + int(counts[it] <= 10)
    total = sum(split.info["query_scenarios_train"].values()) + sum(split.info["query_scenarios_test"].values())
    assert total == 60 * 5


def test_id_order_rule_first_90_percent_of_users_warm():
    data = regular_data(n_users=20, defaults={"user_state_rule": "id_order", "item_cold_max_ratings": 5})
    split = build_split(data, seed=0)
    assert split.info["users_warm"] == 18 and split.info["users_cold"] == 2
    cold_users = set()
    for ts in (split.train, split.test):
        for k in range(len(ts)):
            if int(ts.query_scenario[k, 0]) >= 2:
                cold_users.add(int(ts.user_index[k]))
    assert cold_users == {18, 19}  # the last 10 % in table (User-ID) order
    assert split.info["protocol"]["item_cold_max_ratings"] == 5


def test_id_order_by_first_rating():
    # users whose first rating comes late in (time, file) order are the cold ones
    data = regular_data(n_users=20, defaults={"user_state_rule": "id_order"})
    data.time = np.where(np.isin(data.user, [0, 1]), data.time + 1e6, data.time)
    split = build_split(data, ProtocolConfig(id_order_by="first_rating"), seed=0)
    cold = {int(ts.user_index[k]) for ts in (split.train, split.test) for k in range(len(ts)) if int(ts.query_scenario[k, 0]) >= 2}
    assert cold == {0, 1}


def test_dataset_may_only_default_dataset_keys():
    data = regular_data(n_users=10, defaults={"ratings_per_user": 10})
    with pytest.raises(ProtocolError, match="ratings_per_user"):
        build_split(data)


def test_config_validation():
    with pytest.raises(ValueError, match=r"n_support \+ n_query <= ratings_per_user"):
        ProtocolConfig(n_support=16)
    with pytest.raises(ValueError, match="train_fraction"):
        ProtocolConfig(train_fraction=1.0)


def test_info_reports_checksum_canonical_and_drops():
    data = regular_data(n_users=10)
    data.checksum, data.canonical, data.drops = "sha256:abc", False, {"ratings_duplicate": 2}
    split = build_split(data)
    assert split.info["checksum"] == "sha256:abc" and split.info["canonical"] is False
    assert split.info["load_drops"] == {"ratings_duplicate": 2}
    assert split.test.info["canonical"] is False and split.train.info["checksum"] == "sha256:abc"


# ------------------------------------------------------------------ data without time (issue 16)


def test_random_rating_order_is_seeded_and_keeps_each_users_ratings():
    data = regular_data()
    a = build_split(data, ProtocolConfig(rating_order="random"), seed=0)
    b = build_split(data, ProtocolConfig(rating_order="random"), seed=3)
    c = build_split(data, ProtocolConfig(rating_order="random", order_seed=1), seed=0)
    t = build_split(data, ProtocolConfig(rating_order="time"), seed=0)
    pairs = lambda s: {(int(u), int(i)) for ts in (s.train, s.test) for u, row in zip(ts.user_index, ts.query_items)  # noqa: E731
                       for i in row}
    assert pairs(a) == pairs(b)  # the run seed does not change the order: only the train/test users
    assert pairs(a) != pairs(c) and pairs(a) != pairs(t)
    rated = set(zip(data.user.tolist(), data.item.tolist()))
    assert pairs(a) <= rated
    assert a.info["protocol"]["rating_order"] == "random" and a.info["protocol"]["order_seed"] == 0


def test_random_user_state_rule_marks_the_stated_fraction_cold():
    data = regular_data(n_users=50)
    s = build_split(data, ProtocolConfig(user_state_rule="random", user_warm_fraction=0.8), seed=0)
    assert (s.info["users_warm"], s.info["users_cold"]) == (40, 10) and s.info["user_cold_fraction"] == 0.2
    again = build_split(data, ProtocolConfig(user_state_rule="random", user_warm_fraction=0.8), seed=5)
    cold = lambda sp: {int(u) for ts in (sp.train, sp.test) for u, sc in zip(ts.user_index, ts.query_scenario)  # noqa: E731
                       if int(sc[0]) >= 2}
    assert cold(s) == cold(again)  # drawn from order_seed, not from the run seed


def test_time_quantile_refuses_data_without_usable_time():
    data = regular_data()
    data.has_time = False
    with pytest.raises(ProtocolError, match="'time_quantile' needs rating times, but the data has no time column"):
        build_split(data, ProtocolConfig(user_state_rule="time_quantile"))
    # with no rule given, data without time gets the random defaults, recorded with their origin
    s = build_split(data, ProtocolConfig(), seed=0)
    assert (s.info["protocol"]["user_state_rule"], s.info["protocol"]["rating_order"]) == ("random", "random")
    assert s.info["protocol_defaults_from"]["rating_order"] == "generic default for data without a time column"
    flat = regular_data()
    flat.time[:] = 7.0
    with pytest.raises(ProtocolError, match="the same time on every rating"):
        build_split(flat, ProtocolConfig(user_state_rule="time_quantile"))
