"""Search spaces: plain dicts declared on each learner class, checked and drawn from here.

A learner declares ``search_space`` next to its ``presets``, one entry per config field::

    search_space = {
        "inner_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "inner_steps": {"type": "int", "low": 1, "high": 5},
        "hidden": {"type": "categorical", "choices": [[64, 64], [128, 64]]},
    }

``float`` and ``int`` take ``low``/``high`` (inclusive) and optionally ``log`` (log-uniform) or
``step``; ``categorical`` takes a list of ``choices`` (numbers, strings, booleans or lists; not
None, which the best-settings TOML could not hold).
Method files import nothing from Optuna: :func:`suggest` turns an entry into ``trial.suggest_*``
calls, and :func:`check_space` checks a declaration (every key a config field, every value one
that builds a valid config) so that a typo fails before the first trial, not after an hour.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

from metarec.config import ConfigError, build_config

SPACE_TYPES = ("float", "int", "categorical")
_ALLOWED = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


class SearchSpaceError(ValueError):
    """A search space declaration is not valid; the message names the learner, key and fix."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_entry(where: str, key: str, spec: Any) -> None:
    at = f"{where}: search_space[{key!r}]"
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(f"{at} must be a dict such as {{'type': 'float', 'low': 1e-4, 'high': 1e-1}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise SearchSpaceError(f"{at}: 'type' must be one of {', '.join(SPACE_TYPES)}, got {kind!r}")
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        raise SearchSpaceError(f"{at}: unknown key(s) {', '.join(unknown)} for type {kind!r}; allowed: {', '.join(sorted(_ALLOWED[kind]))}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SearchSpaceError(f"{at}: 'choices' must be a non-empty list, got {choices!r}")
        if any(c is None for c in choices):
            raise SearchSpaceError(
                f"{at}: None cannot be a choice (a best-settings TOML cannot hold it); use a value that "
                "switches the setting off in effect, or leave the field out of the space"
            )
        encoded = [encode_choice(c) for c in choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise SearchSpaceError(f"{at}: 'choices' lists a value more than once: {list(choices)!r}")
        return
    low, high = spec.get("low"), spec.get("high")
    if kind == "int":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise SearchSpaceError(f"{at}: type 'int' needs integer 'low' and 'high', got {low!r}, {high!r}")
    elif not (_is_number(low) and _is_number(high)):
        raise SearchSpaceError(f"{at}: type 'float' needs numbers 'low' and 'high', got {low!r}, {high!r}")
    if not low < high:
        raise SearchSpaceError(f"{at}: need low < high, got low={low!r}, high={high!r} (a fixed value is a preset, not a search)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{at}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise SearchSpaceError(f"{at}: a log-uniform range needs low > 0, got {low!r}")
    if "step" in spec:
        step = spec["step"]
        ok = isinstance(step, int) and step >= 1 if kind == "int" else _is_number(step) and step > 0
        if not ok:
            raise SearchSpaceError(f"{at}: 'step' must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        if log and (kind == "float" or step != 1):
            raise SearchSpaceError(f"{at}: 'log' and 'step' cannot be combined (Optuna draws log ranges continuously)")


def extreme_values(spec: Mapping[str, Any]) -> list[Any]:
    """The values of an entry that a check must build: both ends of a range, or every choice."""
    if spec["type"] == "categorical":
        return list(spec["choices"])
    return [spec["low"], spec["high"]]


def check_space(cls: type, space: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Validate ``cls.search_space`` (or ``space``) against ``cls.Config``; return it as a plain dict.

    Every key must be a config field, and every end of every range and every choice must build a
    valid config (alone, on top of ``base``), as must all the lower ends together and all the
    upper ends together.
    """
    where = getattr(cls, "name", "") or cls.__name__
    space = getattr(cls, "search_space", {}) if space is None else space
    if not isinstance(space, Mapping):
        raise SearchSpaceError(f"{where}: search_space must be a dict of config field -> range, got {type(space).__name__}")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for key, spec in space.items():
        if key not in fields:
            import difflib

            hint = difflib.get_close_matches(str(key), fields, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SearchSpaceError(
                f"{where}: search_space key {key!r} is not a field of {cls.Config.__name__}{did}; "
                f"fields: {', '.join(sorted(fields))}"
            )
        _check_entry(where, key, spec)
    base = dict(base or {})

    def build(values: Mapping[str, Any], what: str) -> None:
        try:
            build_config(cls.Config, base, values, where=f"{where} config")
        except ConfigError as exc:
            raise SearchSpaceError(f"{where}: search_space {what} does not build a valid config: {exc}") from None

    for key, spec in space.items():
        for value in extreme_values(spec):
            build({key: value}, f"value {key}={value!r}")
    for end in (0, -1):
        values = {k: extreme_values(s)[end] for k, s in space.items()}
        if values:
            build(values, f"{'lower' if end == 0 else 'upper'} ends together ({values})")
    return {k: dict(v) for k, v in space.items()}


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: scalars as they are, lists as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    raise SearchSpaceError(f"categorical choice {value!r} must be a number, string, boolean, None or a list")


def decode_choice(value: Any, choices: list[Any]) -> Any:
    """The declared choice that :func:`encode_choice` turned into ``value``."""
    for c in choices:
        if encode_choice(c) == value and type(encode_choice(c)) is type(value):
            return c
    return value


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draw one value per entry through an Optuna ``trial``; returns config values (lists decoded)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            out[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                           log=bool(spec.get("log", False)), step=spec.get("step"))
        elif kind == "int":
            out[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]),
                                         step=int(spec.get("step", 1)), log=bool(spec.get("log", False)))
        else:
            choices = list(spec["choices"])
            picked = trial.suggest_categorical(key, [encode_choice(c) for c in choices])
            out[key] = decode_choice(picked, choices)
    return out


def decode_params(params: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Config values of a finished trial's stored ``params`` (categorical lists decoded)."""
    out = {}
    for key, value in params.items():
        spec = space.get(key)
        out[key] = decode_choice(value, list(spec["choices"])) if spec and spec["type"] == "categorical" else value
    return out


__all__ = ["SPACE_TYPES", "SearchSpaceError", "check_space", "decode_params", "encode_choice", "suggest"]
