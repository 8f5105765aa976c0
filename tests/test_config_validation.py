"""Every config dataclass validates itself at construction: types, choices, ranges, finiteness.

Parametrised over every config class metarec and its plugins define (found as subclasses of
ValidatedConfig once every registered learner is imported), so a new config is covered the
moment it exists. Direct construction and build_config (TOML, --set) must agree.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from metarec.config import ConfigError, ValidatedConfig, _spec, build_config


def _all_config_classes() -> list[type]:
    import metarec.bench.config  # noqa: F401
    import metarec.data.bookcrossing  # noqa: F401
    import metarec.data.custom  # noqa: F401
    import metarec.data.movielens  # noqa: F401
    import metarec.data.protocol  # noqa: F401
    import metarec.data.synthetic  # noqa: F401
    from metarec.registry import available_learners

    learners, _ = available_learners()
    found = {e.load().Config for e in learners.values()}
    stack = list(ValidatedConfig.__subclasses__())
    while stack:
        cls = stack.pop()
        found.add(cls)
        stack.extend(cls.__subclasses__())
    return sorted((c for c in found if dataclasses.is_dataclass(c)), key=lambda c: f"{c.__module__}.{c.__qualname__}")


CLASSES = _all_config_classes()
REQUIRED = {  # classes without defaults for every field: a valid base to vary one key of
    "FeatureSpec": {"name": "genre", "kind": "categorical"},
    "FileSpec": {"path": "genres.csv"},
    "TableSpec": {"id": "user_id", "features": ()},  # filled below
    "DatasetSpec": None,
}


def _base(cls: type) -> dict:
    if cls.__name__ == "TableSpec":
        from metarec.data.custom import FeatureSpec

        return {"id": "user_id", "features": (FeatureSpec(name="g", kind="categorical"),)}
    return dict(REQUIRED.get(cls.__name__) or {})


def _cases(cls: type) -> list[tuple[str, str, object, list[str]]]:
    """(kind, key, bad value, substrings the message must contain) for one class."""
    hints, bounds, _ = _spec(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        plain = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        if "type" not in [c[0] for c in out] and (hint in (int, float) or set(plain) <= {int, float}):
            out.append(("type", f.name, "lots", [f"{cls.__name__}.{f.name}", "'lots'"]))
        lits = [a for a in plain if typing.get_origin(a) is typing.Literal]
        if "choice" not in [c[0] for c in out] and lits:
            choices = typing.get_args(lits[0])
            typo = choices[0][:-1] + "x" if isinstance(choices[0], str) else "nope"
            out.append(("choice", f.name, typo, [f"{cls.__name__}.{f.name}", repr(typo), *map(repr, choices),
                                                 f"did you mean {choices[0]!r}"]))
        b = bounds.get(f.name, {})
        if "range" not in [c[0] for c in out] and any(k in b for k in ("ge", "gt", "le", "lt")):
            bad = b["ge"] - 1 if "ge" in b else b["gt"] if "gt" in b else b["le"] + 1 if "le" in b else b["lt"]
            if typing.get_origin(plain[0]) is tuple:
                bad = (bad,)
            elif float in plain:
                bad = float(bad)
            out.append(("range", f.name, bad, [f"{cls.__name__}.{f.name}", "must be"]))
        if "finite" not in [c[0] for c in out] and float in plain:
            out.append(("finite", f.name, math.inf, [f"{cls.__name__}.{f.name}", "finite", "inf"]))
    return out


PARAMS = [
    pytest.param(cls, kind, key, value, expect, id=f"{cls.__name__}-{kind}-{key}")
    for cls in CLASSES if cls.__name__ != "DatasetSpec" for kind, key, value, expect in _cases(cls)
]


def test_every_config_class_is_covered():
    names = {c.__name__ for c in CLASSES}
    for expected in ("LearnerConfig", "MAMOConfig", "MeLUConfig", "MetaCSConfig", "S2MetaConfig", "RUMConfig",
                     "BaselinePredictorConfig", "ProfileMLPFineTuneConfig", "ProtocolConfig", "BenchConfig",
                     "SyntheticOptions", "MovieLensOptions", "BookCrossingOptions", "FeatureSpec"):
        assert expected in names
    kinds = {(p.values[0].__name__, p.values[1]) for p in PARAMS}
    for cls in CLASSES:
        if cls.__name__ in ("DatasetSpec", "MethodSettings", "RatingsSpec", "TableSpec", "MovieLensOptions",
                            "FileSpec"):
            continue  # no numeric field (or only structure): nothing of that kind to get wrong
        assert (cls.__name__, "type") in kinds and (cls.__name__, "range") in kinds, cls
    # every learner config can get a choice wrong (multi_pooling, backend, ...) except the two simplest
    for cls in CLASSES:
        if cls.__name__.endswith("Config") and cls.__name__ not in ("LearnerConfig", "EpisodicConfig",
                                                                     "BaselinePredictorConfig", "BenchConfig"):
            assert (cls.__name__, "choice") in kinds, cls


@pytest.mark.parametrize("cls, kind, key, value, expect", PARAMS)
def test_direct_construction_rejects_bad_values(cls, kind, key, value, expect):
    with pytest.raises(ConfigError) as info:
        cls(**{**_base(cls), key: value})
    message = str(info.value)
    for part in expect:
        assert part in message, f"{message!r} lacks {part!r}"
    # build_config (TOML files, --set) refuses the same value with the same explanation
    with pytest.raises(ConfigError) as via_layers:
        build_config(cls, _base(cls), {key: value}, where="somewhere")
    assert expect[0].split(".")[-1] in str(via_layers.value)


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.__name__ != "DatasetSpec"], ids=lambda c: c.__name__)
def test_defaults_are_valid_and_normalised(cls):
    config = cls(**_base(cls))
    hints, _, _ = _spec(cls)
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if hints[f.name] is float:
            assert isinstance(value, float) and math.isfinite(value), f.name
        if hints[f.name] is int:
            assert isinstance(value, int) and not isinstance(value, bool), f.name


def test_issue_examples_fail_loudly():
    from baselines.s2meta import S2MetaConfig
    from metarec.methods.maml import MAMLConfig
    from metarec.methods.mamo import MAMOConfig

    with pytest.raises(ConfigError, match=r"MAMOConfig.backend: 'lowrnk' is not one of .*did you mean 'lowrank'"):
        MAMOConfig(backend="lowrnk")
    with pytest.raises(ConfigError, match=r"gradient_source: 'suport' .*did you mean 'support'"):
        MAMOConfig(gradient_source="suport")
    with pytest.raises(ConfigError, match=r"MAMLConfig.backend: 'l2l' is not one of 'torch.func', 'loop', 'learn2learn'"):
        MAMLConfig(backend="l2l")
    with pytest.raises(ConfigError, match=r"eval_stop_rule: 'samples' .*did you mean 'sample'"):
        S2MetaConfig(eval_stop_rule="samples")
    with pytest.raises(ConfigError, match=r"MAMLConfig.meta_lr must be > 0, got 0.0"):
        MAMLConfig(meta_lr=0)
    with pytest.raises(ConfigError, match=r"MAMOConfig.local_lr must be a finite number, got nan"):
        MAMOConfig(local_lr=float("nan"))
    with pytest.raises(ConfigError, match=r"S2MetaConfig: need min_steps <= max_steps, got min_steps=9, max_steps=3"):
        S2MetaConfig(min_steps=9, max_steps=3)


def test_subclass_that_changes_a_default_keeps_the_bounds():
    from baselines.melu import MeLUConfig

    with pytest.raises(ConfigError, match="MeLUConfig.inner_lr must be >= 0"):
        MeLUConfig(inner_lr=-1.0)  # MeLUConfig redeclares inner_lr with a plain default


def test_harmless_conversions_are_made_at_construction():
    from metarec.learner import RatingMLPConfig

    c = RatingMLPConfig(hidden=[8, 4], embedding_dim=8.0)
    assert c.hidden == (8, 4) and isinstance(c.embedding_dim, int)
    with pytest.raises(ConfigError, match=r"RatingMLPConfig.hidden must be >= 1, got 0"):
        RatingMLPConfig(hidden=(8, 0))
    with pytest.raises(ConfigError, match=r"expected an integer, got 2.5"):
        RatingMLPConfig(embedding_dim=2.5)
