"""BenchConfig: seeds/methods parsing, TOML + --set layering, precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarec.bench.config import (
    BenchConfig,
    layer_from_file,
    layer_from_overrides,
    parse_seeds,
    resolve_config,
)
from metarec.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"


@pytest.mark.parametrize(
    "text, seeds",
    [("0,1,2", (0, 1, 2)), ("0-4", (0, 1, 2, 3, 4)), ("0-2, 7", (0, 1, 2, 7)), ("5", (5,))],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a", "3-1", "", "1.5"])
def test_parse_seeds_errors_name_the_value(text):
    with pytest.raises(ConfigError):
        parse_seeds(text)


def test_defaults():
    cfg = resolve_config()
    assert cfg.methods == ("global-mean", "baseline-predictor")
    assert cfg.seeds == (0, 1, 2)
    assert cfg.dataset == "ml-1m" and cfg.k == 3 and cfg.clip_size == 5


def test_file_then_cli_layers(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text(
        """
[bench]
methods = ["global-mean", "profile-mlp"]
seeds = "0-3"
jobs = 2

[bench.protocol]
n_support = 10

[methods.profile-mlp]
preset = "quick"
epochs = 7
lr = 0.01
"""
    )
    cli = {"bench": {"jobs": 1, "protocol": {"n_query": 4}}, "methods": {}}
    cfg = resolve_config(layer_from_file(f), cli, layer_from_overrides(["profile-mlp.lr=0.5", "clip_size=4"]))
    assert cfg.methods == ("global-mean", "profile-mlp")
    assert cfg.seeds == (0, 1, 2, 3)
    assert cfg.jobs == 1  # CLI beats the file
    assert cfg.protocol == {"n_support": 10, "n_query": 4}  # tables merge, not replace
    assert cfg.clip_size == 4
    s = cfg.settings_for("profile-mlp")
    assert s.preset == "quick"
    assert s.overrides == {"epochs": 7, "lr": 0.5}


def test_set_routing():
    layer = layer_from_overrides(
        ["bench.n_boot=10", "protocol.n_support=5", "methods.mamo.inner_lr=0.1", "melu.preset=paper", "jobs=3",
         "synthetic.n_users=50"]
    )
    assert layer["bench"] == {"n_boot": 10, "protocol": {"n_support": 5}, "jobs": 3, "synthetic": {"n_users": 50}}
    assert layer["methods"] == {"mamo": {"inner_lr": 0.1}, "melu": {"preset": "paper"}}


def test_bench_epochs_precedence():
    file_layer = {"bench": {}, "methods": {"profile-mlp": {"epochs": 20}}}
    # --epochs on the command line beats the file's per-method epochs ...
    cfg = resolve_config(file_layer, {"bench": {"epochs": 2}})
    assert cfg.learner_overrides("profile-mlp", ["epochs"]) == {"epochs": 2}
    # ... and a later, more specific --set beats --epochs
    cfg = resolve_config(file_layer, {"bench": {"epochs": 2}}, layer_from_overrides(["profile-mlp.epochs=1"]))
    assert cfg.learner_overrides("profile-mlp", ["epochs"]) == {"epochs": 1}
    # methods without an epochs setting do not get one
    assert cfg.learner_overrides("global-mean", ["clip_predictions"]) == {}


@pytest.mark.parametrize(
    "items, match",
    [
        (["jbos=2"], "not a bench setting"),
        (["bench.jbos=2"], "did you mean 'jobs'"),
        (["protocol=3"], "protocol.<key>"),
        (["novalue"], "key=value"),
    ],
)
def test_set_errors(items, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(layer_from_overrides(items))


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[bench]\nseedz = [1]\n")
    with pytest.raises(ConfigError, match="bad.toml.*seedz"):
        layer_from_file(bad)
    bad.write_text("[bench\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        layer_from_file(bad)
    bad.write_text("[other]\nx = 1\n")
    with pytest.raises(ConfigError, match="unknown top-level"):
        layer_from_file(bad)


def test_protocol_keys_are_checked_early():
    with pytest.raises(ConfigError, match="n_suport"):
        resolve_config({"bench": {"protocol": {"n_suport": 3}}})
    with pytest.raises(ConfigError, match="n_support"):
        resolve_config({"bench": {"protocol": {"n_support": 30}}})


@pytest.mark.parametrize(
    "bench, match",
    [({"seeds": [1, 1]}, "more than once"), ({"jobs": 0}, "jobs"), ({"methods": []}, "methods"), ({"ci_level": 1.5}, "ci_level")],
)
def test_invalid_values(bench, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({"bench": bench})


def test_round_trip():
    cfg = resolve_config(
        {"bench": {"seeds": [3, 4], "protocol": {"n_support": 5}}, "methods": {"profile-mlp": {"preset": "quick", "lr": 0.1}}}
    )
    again = BenchConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_shipped_config_files_are_valid():
    files = sorted(CONFIGS.glob("*.toml"))
    assert {"default.toml", "global-mean.toml", "baseline-predictor.toml", "profile-mlp.toml",
            "profile-mlp-finetune.toml"} <= {f.name for f in files}
    from metarec.bench.runner import check_methods

    for f in files:
        cfg = resolve_config(layer_from_file(f))
        # every method table must name a real preset and valid keys of that learner
        cfg.methods = tuple(cfg.method_settings) or cfg.methods
        assert check_methods(cfg) == {}, f.name
