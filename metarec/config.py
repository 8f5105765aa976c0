"""Layered configuration: dataclass defaults < preset < TOML file < command line.

Every learner, the protocol and the benchmark are configured by plain dataclasses. This module
turns layers of plain mappings into a validated dataclass instance, with errors that name the
offending key and list the valid ones.

Validation is declarative and runs at construction, so ``MAMOConfig(backend="lowrnk")`` fails
exactly as ``--set mamo.backend=lowrnk`` does. A config dataclass subclasses
:class:`ValidatedConfig` (or calls :func:`validate_config` from its ``__post_init__``); each
field is checked against its type hint (types, ``Literal`` choices with a did-you-mean,
finiteness of floats) and the bounds declared with :func:`setting`; conditions between fields
are :class:`Rule` objects in the class's ``rules``::

    @dataclass
    class MyConfig(LearnerConfig):
        lr: float = setting(1e-3, gt=0)
        hidden: tuple[int, ...] = setting((64, 64), ge=1)   # bounds apply to every item
        min_steps: int = setting(1, ge=0)
        max_steps: int = setting(5, ge=1)
        rules = (Rule("min_steps <= max_steps", lambda c: c.min_steps <= c.max_steps),)

A subclass that only changes a default (``lr: float = 0.01``) keeps its parent's bounds.
"""

from __future__ import annotations

from metarec.errors import UserError

import dataclasses
import difflib
import sys
import types
import typing
import math
from dataclasses import MISSING
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A configuration key or value is not valid; the message says which and what to do."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, with an error that names the file and the line on a syntax error."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Parse ``key=value`` strings (values in TOML syntax, bare words as strings) into a dict.

    Dotted keys nest: ``mamo.inner_lr=0.1`` -> ``{"mamo": {"inner_lr": 0.1}}``.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def build_config(cls: type[T], *layers: Mapping[str, Any] | None, where: str = "") -> T:
    """Instantiate dataclass ``cls`` from layered mappings (later layers win)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    merged: dict[str, Any] = {}
    valid = {f.name: f for f in dataclasses.fields(cls)}
    for layer in layers:
        if not layer:
            continue
        for key, value in layer.items():
            if key not in valid:
                hint = difflib.get_close_matches(key, valid, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"{where or cls.__name__}: unknown key {key!r}{did}; "
                    f"valid keys: {', '.join(sorted(valid))}"
                )
            merged[key] = value
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{where or cls.__name__}.{k}") for k, v in merged.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if not where:
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"{where}: {exc}") from None


def preset_config(owner: Any, preset: str | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """``owner.Config`` from its layers -- Config defaults < ``owner.presets[preset]`` <
    ``overrides`` -- validated: how every learner's settings resolve (``owner`` is a learner
    class; an unknown preset is a :class:`ConfigError` that lists the known ones)."""
    base: Mapping[str, Any] = {}
    if preset is not None:
        if preset not in owner.presets:
            raise ConfigError(f"{owner.name}: unknown preset {preset!r}; known presets: {', '.join(owner.presets) or '(none)'}")
        base = owner.presets[preset]
    return build_config(owner.Config, base, overrides, where=f"{owner.name or owner.__name__} config")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return jsonable(dataclasses.asdict(config))


def jsonable(value: Any) -> Any:
    """``value`` with tuples turned into lists, recursively (what JSON can hold and give back)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting the harmless cases (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        optional = type(None) in args
        if len(errors) == 1:  # X | None: X's own message says what is wrong
            raise ConfigError(errors[0] + (" (or leave it unset: None)" if optional else ""))
        raise ConfigError(f"{where}: {value!r} does not match {_type_name(hint)}")
    if origin is typing.Literal:
        if isinstance(value, bool) or value not in args:
            strings = [a for a in args if isinstance(a, str)]
            hint_ = difflib.get_close_matches(value, strings, n=1) if isinstance(value, str) else []
            did = f" (did you mean {hint_[0]!r}?)" if hint_ else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{did}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) and origin is tuple:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ---------------------------------------------------------------------------- declarative validation

#: The device names every ``--device`` option and :func:`metarec.runtime.resolve_device` accept
#: (here, not in the torch-importing runtime module, so that the CLI can build its options cheaply).
DEVICE_CHOICES = ("auto", "cpu", "cuda")

#: Key of a field's ``metadata`` under which :func:`setting` stores its bounds.
META_KEY = "metarec"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition between fields of a config, checked at construction.

    ``text`` is the condition as a user reads it (``"min_steps <= max_steps"``); ``holds``
    takes the config and says whether it is met; ``keys`` name the fields it involves (shown
    with their values in the error).
    """

    text: str
    holds: Callable[[Any], bool]
    keys: tuple[str, ...] = ()


def setting(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    finite: bool = True,
    min_len: int | None = None,
    unique: bool = False,
) -> Any:
    """A dataclass field with declared bounds: ``x: float = setting(0.1, gt=0, le=1)``.

    Bounds of a tuple/list field apply to each of its items; ``min_len``/``unique`` to the
    sequence itself. Floats must be finite unless ``finite=False``. ``None`` (for an optional
    field) is never range-checked.
    """
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, min_len=min_len).items() if v is not None}
    bounds["finite"] = finite
    bounds["unique"] = unique
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={META_KEY: bounds})
    return dataclasses.field(default=default, metadata={META_KEY: bounds})


_SPECS: dict[type, tuple[dict[str, Any], dict[str, dict[str, Any]], tuple[Rule, ...]]] = {}


def _spec(cls: type) -> tuple[dict[str, Any], dict[str, dict[str, Any]], tuple[Rule, ...]]:
    """Type hints, bounds (inherited by field name through the MRO) and rules of a config class."""
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        bounds: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(cls):
            for base in cls.__mro__:  # the most derived declaration with bounds wins
                own = base.__dict__.get("__dataclass_fields__", {}).get(f.name)
                if own is not None and META_KEY in own.metadata:
                    bounds[f.name] = own.metadata[META_KEY]
                    break
        rules: list[Rule] = []
        for base in reversed(cls.__mro__):
            for rule in base.__dict__.get("rules", ()):
                if rule not in rules:
                    rules.append(rule)
        _SPECS[cls] = (hints, bounds, tuple(rules))
    return _SPECS[cls]


def _check_bounds(value: Any, b: Mapping[str, Any], where: str) -> None:
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        if "min_len" in b and len(value) < b["min_len"]:
            need = "at least one value" if b["min_len"] == 1 else f"at least {b['min_len']} values"
            raise ConfigError(f"{where} must hold {need}, got {list(value)!r}")
        if b.get("unique"):
            dupes = sorted({str(v) for v in value if list(value).count(v) > 1})
            if dupes:
                raise ConfigError(f"{where} lists {', '.join(dupes)} more than once: {list(value)!r}")
        for item in value:
            _check_bounds(item, {k: v for k, v in b.items() if k not in ("min_len", "unique")}, where)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and b.get("finite", True) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    for key, op, ok in (
        ("ge", ">=", lambda v, x: v >= x), ("gt", ">", lambda v, x: v > x),
        ("le", "<=", lambda v, x: v <= x), ("lt", "<", lambda v, x: v < x),
    ):
        if key in b and not ok(value, b[key]):
            lo = [f"{o} {b[k]}" for k, o in (("ge", ">="), ("gt", ">")) if k in b]
            hi = [f"{o} {b[k]}" for k, o in (("le", "<="), ("lt", "<")) if k in b]
            raise ConfigError(f"{where} must be {' and '.join(lo + hi)}, got {value!r}")


def validate_config(config: Any) -> None:
    """Check (and normalise: int -> float, list -> tuple) every field of a config dataclass.

    Raises :class:`ConfigError` naming the class, the key, the value and what is accepted.
    """
    cls = type(config)
    owner = cls.__name__
    hints, bounds, rules = _spec(cls)
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        where = f"{owner}.{f.name}"
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        coerced = _coerce(value, hint, where)
        if isinstance(coerced, float) and not math.isfinite(coerced) and f.name not in bounds:
            raise ConfigError(f"{where} must be a finite number, got {coerced!r}")
        if f.name in bounds:
            _check_bounds(coerced, bounds[f.name], where)
        if coerced is not value:
            object.__setattr__(config, f.name, coerced)  # works for frozen dataclasses too
    for rule in rules:
        if not rule.holds(config):
            shown = ", ".join(f"{k}={getattr(config, k)!r}" for k in rule.keys)
            raise ConfigError(f"{owner}: need {rule.text}" + (f", got {shown}" if shown else ""))


class ValidatedConfig:
    """Base of metarec's config dataclasses: :func:`validate_config` runs at construction.

    A subclass adds fields (bounds via :func:`setting`) and optional ``rules``; it needs no
    ``__post_init__`` of its own.
    """

    rules: ClassVar[tuple[Rule, ...]] = ()

    def __post_init__(self) -> None:
        validate_config(self)
