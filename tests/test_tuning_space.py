"""Search spaces: every registered learner declares one that the sampler can draw from."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from metarec.config import build_config  # noqa: E402
from metarec.learner import EpisodicLearner  # noqa: E402
from metarec.methods.simple import ProfileMLPConfig  # noqa: E402
from metarec.registry import available_learners, learner_protocol  # noqa: E402
from metarec.tuning.space import SearchSpaceError, check_space, decode_params, suggest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _reptile() -> type:
    """The tutorial's plugin learner, imported from its source (no install needed)."""
    path = REPO / "docs" / "tutorial" / "toy_learner" / "toy_learner" / "reptile.py"
    spec = importlib.util.spec_from_file_location("toy_reptile_for_space_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Reptile


def _learners() -> list[tuple[str, type]]:
    ok, failed = available_learners()
    assert not failed, failed
    # metarec tune searches the user-cold protocol's learners (item warm-up methods run with their presets)
    return [(name, entry.load()) for name, entry in ok.items() if learner_protocol(entry.load()) == "user-cold"] + [
        ("toy-reptile", _reptile())]


@pytest.mark.parametrize("name,cls", _learners(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_learner_has_a_space_that_draws_valid_configs(name, cls):
    space = check_space(cls)
    assert space, f"{name} declares no search_space"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        params = suggest(trial, space)
        config = build_config(cls.Config, params, where=name)
        for key, value in params.items():
            got = getattr(config, key)
            assert (list(got) if isinstance(got, tuple) else got) == (list(value) if isinstance(value, (list, tuple)) else value)
        # what the journal stores decodes back to the same config values
        assert decode_params(trial.params, space) == params
        study.tell(trial, 0.0)


def test_registered_episodic_learners_search_their_training_length():
    for name, cls in _learners()[:-1]:  # the tutorial's learner keeps its space short
        if issubclass(cls, EpisodicLearner):
            assert "epochs" in check_space(cls), name


class _Toy:
    name = "toy"
    Config = ProfileMLPConfig


@pytest.mark.parametrize(
    "space,match",
    [
        ({"hiden": {"type": "categorical", "choices": [[64]]}}, r"'hiden' is not a field of ProfileMLPConfig \(did you mean 'hidden'"),
        ({"lr": {"type": "uniform", "low": 1e-4, "high": 1e-2}}, "'type' must be one of"),
        ({"lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, "need low < high"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "log-uniform range needs low > 0"),
        ({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4}}, "cannot be combined"),
        ({"epochs": {"type": "int", "low": 1.5, "high": 4}}, "integer 'low' and 'high'"),
        ({"epochs": {"type": "int", "low": 1, "high": 4, "scale": 2}}, "unknown key"),
        ({"hidden": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"grad_clip": {"type": "categorical", "choices": [None, 1.0]}}, "None cannot be a choice"),
        ({"epochs": {"type": "int", "low": -3, "high": 4}}, r"value epochs=-3 does not build a valid config.*epochs must be >= 0"),
        ({"hidden": {"type": "categorical", "choices": [[64], "wide"]}}, "does not build a valid config"),
        ({"lr": 0.01}, "must be a dict"),
    ],
)
def test_bad_declarations_are_one_line_errors_naming_the_key(space, match):
    with pytest.raises(SearchSpaceError, match=match):
        check_space(_Toy, space)


def test_list_choices_round_trip_through_the_study():
    space = {"hidden": {"type": "categorical", "choices": [[64, 64], [128, 64]]}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    params = suggest(trial, space)
    assert params["hidden"] in ([64, 64], [128, 64])
    assert isinstance(trial.params["hidden"], str)  # stored as JSON text: Optuna keeps scalars only
    assert decode_params(trial.params, space) == params
    assert dataclasses.is_dataclass(build_config(ProfileMLPConfig, params))
