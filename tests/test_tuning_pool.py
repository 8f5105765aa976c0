"""The tuning pool (protocol.tuning_fraction): fixed, stratified, never a test user of any seed."""

from __future__ import annotations

import pytest

from metarec.config import ConfigError, build_config
from metarec.data.cache import load_split, save_split, tensors_equal
from metarec.data.protocol import ProtocolConfig, build_split, trim_per_user, user_cold_flags
from metarec.runtime import numpy_generator


def _users(ts) -> set[int]:
    return set(ts.user_index.tolist())


def test_pool_is_never_a_test_train_or_validation_user_of_five_seeds(synthetic_data):
    cfg = ProtocolConfig(tuning_fraction=0.1, validation_fraction=0.1)
    pools = []
    for seed in range(5):
        split = build_split(synthetic_data, cfg, seed=seed)
        pool = _users(split.tuning)
        pools.append(pool)
        assert pool and not pool & _users(split.test), seed
        assert not pool & _users(split.train) and not pool & _users(split.validation), seed
        # every kept user is in exactly one part
        parts = [_users(split.train), _users(split.validation), _users(split.test), pool]
        assert sum(map(len, parts)) == split.info["users_kept"] == len(set().union(*parts))
    assert all(p == pools[0] for p in pools)  # seed-independent


def test_pool_is_stratified_over_warm_and_cold_users(synthetic_data):
    cfg = ProtocolConfig(tuning_fraction=0.2).resolved(synthetic_data)
    split = build_split(synthetic_data, cfg, seed=3)
    info = split.info
    users, _, _ = trim_per_user(synthetic_data, cfg.ratings_per_user)
    cold, _ = user_cold_flags(synthetic_data, users, cfg)
    assert info["tuning_users_warm"] == round(0.2 * (~cold).sum())
    assert info["tuning_users_cold"] == round(0.2 * cold.sum())
    assert info["tuning_users"] == len(split.tuning) == info["tuning_users_warm"] + info["tuning_users_cold"]
    scen = info["query_scenarios_tuning"]
    assert scen["W-W"] > 0 and scen["C-W"] > 0
    assert sum(scen.values()) == int(split.tuning.query_mask.sum())


def test_the_pool_seed_moves_the_pool_and_the_run_seed_does_not(synthetic_data):
    a = build_split(synthetic_data, ProtocolConfig(tuning_fraction=0.1, tuning_seed=0), seed=0)
    b = build_split(synthetic_data, ProtocolConfig(tuning_fraction=0.1, tuning_seed=1), seed=0)
    assert _users(a.tuning) != _users(b.tuning)


def test_without_a_pool_the_split_is_the_papers_permutation(synthetic_data):
    # tuning_fraction = 0 (the default) must leave every existing split exactly as it was
    for seed in (0, 4):
        split = build_split(synthetic_data, ProtocolConfig(), seed=seed)
        assert split.tuning is None and split.info["tuning_users"] == 0
        users, _, _ = trim_per_user(synthetic_data, 20)
        perm = numpy_generator(seed, "user-split").permutation(len(users))
        n_train = int(0.8 * len(users))
        assert split.train.user_index.tolist() == sorted(users[perm[:n_train]].tolist())
        assert split.test.user_index.tolist() == sorted(users[perm[n_train:]].tolist())


def test_the_remaining_users_are_split_by_train_fraction(synthetic_data):
    split = build_split(synthetic_data, ProtocolConfig(tuning_fraction=0.1), seed=0)
    rest = split.info["users_kept"] - split.info["tuning_users"]
    assert len(split.train) == int(0.8 * rest) and len(split.test) == rest - int(0.8 * rest)


def test_cache_round_trip_keeps_the_pool(synthetic_data, tmp_path):
    split = build_split(synthetic_data, ProtocolConfig(tuning_fraction=0.1), seed=1)
    save_split(tmp_path / "entry", split)
    back = load_split(tmp_path / "entry")
    assert back is not None and back.tuning is not None
    assert tensors_equal(back.tuning, split.tuning) and tensors_equal(back.test, split.test)


@pytest.mark.parametrize("bad", [{"tuning_fraction": 1.0}, {"tuning_fraction": -0.1}, {"tuning_seed": -1}])
def test_bad_pool_settings_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="tuning_"):
        build_config(ProtocolConfig, bad, where="protocol")


def test_datasets_info_shows_the_pool():
    from click.testing import CliRunner

    from metarec.cli import main

    result = CliRunner().invoke(main, ["datasets", "info", "synthetic", "--tuning-fraction", "0.1"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tuning-pool users" in result.output and "tuning pool" in result.output
    js = CliRunner().invoke(main, ["datasets", "info", "synthetic", "-p", "tuning_fraction=0.1", "--json"])
    import json

    report = json.loads(js.output)
    assert report["tuning_users"] == 40 and report["tasks"]["tuning pool"]["tasks"] == 40
    assert report["tuning_users_warm"] + report["tuning_users_cold"] == 40
