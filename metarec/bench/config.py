"""The benchmark's configuration: one dataclass, built from layers.

Layers, later ones win: :class:`BenchConfig` defaults < ``--config`` TOML file(s) < command line.
A file looks like::

    [bench]
    methods = ["global-mean", "baseline-predictor"]
    dataset = "ml-1m"
    seeds = [0, 1, 2]

    [bench.protocol]          # any ProtocolConfig key
    n_support = 15

    [methods.profile-mlp]     # per-method: a preset of the learner, then config overrides
    preset = "default"
    epochs = 20

On the command line ``--set key=value`` reaches every layer: ``--set mamo.epochs=3`` (a method),
``--set jobs=2`` or ``--set bench.jobs=2`` (the bench), ``--set protocol.n_support=10``.
A method's own settings resolve as: its Config defaults < its preset < file overrides < CLI.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from metarec.config import ConfigError, build_config, jsonable, load_toml, parse_overrides

#: Format tag of the saved resolved configuration (``config.json`` of a run directory).
CONFIG_FORMAT = "metarec-bench-config-1"


@dataclass
class MethodSettings:
    """How one method is built: a named preset of its learner plus key overrides."""

    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig:
    """Everything that decides what ``metarec bench`` runs and how it reports it."""

    #: Learner names (see ``metarec methods``), in table order.
    methods: tuple[str, ...] = ("global-mean", "baseline-predictor")
    #: ``ml-1m``, ``book-crossing`` (or any name ``metarec.data.load_split`` knows), or ``synthetic``.
    dataset: str = "ml-1m"
    #: Folder holding the raw dataset files (None: the loader's default).
    data_dir: str | None = None
    #: TOML file for the data loader: the schema of a ``custom`` dataset, or a ``[loader]``
    #: table of options for a built-in one (see :func:`metarec.data.load_split`).
    dataset_config: str | None = None
    #: Run seeds. A seed decides the train/test user split AND the model initialisation, so the
    #: spread over seeds covers both sources of variation.
    seeds: tuple[int, ...] = (0, 1, 2)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Output folder (None: ``runs/<timestamp>``).
    out: str | None = None
    #: Independent (method, seed) runs executed at once, each in its own process.
    jobs: int = 1
    #: torch threads per run (None: all cores divided by ``jobs``).
    threads: int | None = None
    #: Never touch the network when loading data.
    offline: bool = True
    #: Let the data loader cache its parsed tables.
    use_cache: bool = True
    #: Convenience: set ``epochs`` of every method whose config has that key (None: leave alone).
    epochs: int | None = None
    #: NDCG cut-off and the clip length of the per-scenario clip-NDCG (appendix A.2.3).
    k: int = 3
    clip_size: int = 5
    #: Bootstrap resamples (over test users) for the confidence intervals, and their level.
    n_boot: int = 1000
    ci_level: float = 0.95
    #: Show the live progress display.
    progress: bool = True
    #: Keep each run's training checkpoints after it finished (they are deleted otherwise).
    keep_checkpoints: bool = False
    #: Overrides of :class:`metarec.data.ProtocolConfig` (e.g. ``n_support``).
    protocol: dict[str, Any] = field(default_factory=dict)
    #: Arguments of :func:`metarec.data.synthetic.make_synthetic` when ``dataset = "synthetic"``.
    synthetic: dict[str, Any] = field(default_factory=dict)
    #: Per-method preset and overrides, ``name -> MethodSettings``.
    method_settings: dict[str, MethodSettings] = field(default_factory=dict)
    #: Where tuned settings came from, ``name -> {study, trials, budget, pool, ...}`` (the
    #: ``[provenance.<name>]`` tables of a ``metarec tune`` best.toml); recorded with each run.
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty: name at least one method (see `metarec methods`)")
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ValueError(f"methods lists {', '.join(dupes)} more than once")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative integers, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds contain duplicates: {list(self.seeds)}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.epochs is not None and self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        for name in ("k", "clip_size", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"ci_level must be in (0, 1), got {self.ci_level}")

    # ------------------------------------------------------------------ per method
    def settings_for(self, method: str) -> MethodSettings:
        """The method's preset and overrides, with ``epochs`` applied when the learner has it."""
        return self.method_settings.get(method, MethodSettings())

    def learner_overrides(self, method: str, config_fields: Sequence[str]) -> dict[str, Any]:
        """Overrides for ``method``'s Config: bench-wide ``epochs`` (if it has the key) < its own."""
        out: dict[str, Any] = {}
        if self.epochs is not None and "epochs" in config_fields:
            out["epochs"] = self.epochs
        out.update(self.settings_for(method).overrides)
        return out

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (saved as ``config.json``; :meth:`from_dict` reads it back)."""
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        d["seeds"] = list(self.seeds)
        d["method_settings"] = {
            k: {"preset": v.preset, "overrides": jsonable(v.overrides)} for k, v in self.method_settings.items()
        }
        return jsonable(d)

    def settings_source(self, method: str, paper_presets: Sequence[str] = ("paper",)) -> dict[str, Any]:
        """Where ``method``'s settings come from: ``tuned`` (with its study), ``paper preset``,
        ``hand preset`` or ``defaults`` (the learner's Config), plus the preset and overrides."""
        s = self.settings_for(method)
        out: dict[str, Any] = {"preset": s.preset, "overrides": jsonable(s.overrides)}
        if method in self.provenance:
            return {"kind": "tuned", **out, **jsonable(self.provenance[method])}
        kind = "paper preset" if s.preset in paper_presets else ("hand preset" if s.preset else "defaults")
        return {"kind": kind, **out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchConfig":
        """Rebuild (and validate) a config from :meth:`to_dict` output."""
        d = dict(d)
        ms = d.pop("method_settings", {}) or {}
        cfg = build_config(cls, d, where="bench config")
        cfg.method_settings = {
            k: MethodSettings(preset=v.get("preset"), overrides=dict(v.get("overrides", {}))) for k, v in ms.items()
        }
        return cfg


# ---------------------------------------------------------------------------- parsing helpers

BENCH_FIELDS = tuple(f.name for f in dataclasses.fields(BenchConfig) if f.name not in ("method_settings", "provenance"))
#: Fields that change the numbers; a resumed run must not change them.
RESULT_FIELDS = (
    "dataset", "data_dir", "dataset_config", "offline", "epochs", "k", "clip_size", "n_boot", "ci_level",
    "protocol", "synthetic", "method_settings",
)


def parse_seeds(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,1,2"``, ``"0-4"``, ``"0-2,7"`` or a sequence of ints -> a tuple of seeds."""
    if not isinstance(text, str):
        return tuple(int(s) for s in text)
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"seed range {part!r} is empty (end before start)")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise ConfigError(f"cannot read seed {part!r} in {text!r}; use e.g. 0,1,2 or 0-4")
    if not seeds:
        raise ConfigError(f"no seeds in {text!r}")
    return tuple(seeds)


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"mamo,melu"`` or a sequence -> a tuple of method names."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(m.strip() for m in items if m and m.strip())
    if not names:
        raise ConfigError("no method names given; see `metarec methods` for the list")
    return names


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, merging nested tables instead of replacing them."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _method_table(name: str, table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: [methods.{name}] must be a table, got {table!r}")
    return dict(table)


def layer_from_file(path: str | Path) -> dict[str, Any]:
    """A config file as a layer ``{"bench": {...}, "methods": {name: {...}}}`` (validated keys)."""
    data = load_toml(path)
    unknown = sorted(set(data) - {"bench", "methods", "protocol", "provenance"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level table(s) {unknown}; a bench config has [bench], "
            "[bench.protocol] (or [protocol]), [methods.<name>] and (written by metarec tune) "
            "[provenance.<name>] tables"
        )
    bench = dict(data.get("bench", {}))
    if "protocol" in data:  # a top-level [protocol] table is accepted as a shorthand
        bench["protocol"] = deep_merge(bench.get("protocol", {}), data["protocol"])
    methods = {n: _method_table(n, t, str(path)) for n, t in dict(data.get("methods", {})).items()}
    provenance = {n: _method_table(n, t, f"{path} [provenance]") for n, t in dict(data.get("provenance", {})).items()}
    _check_bench_keys(bench, str(path))
    layer: dict[str, Any] = {"bench": bench, "methods": methods}
    if provenance:
        layer["provenance"] = provenance
    return layer


def tuned_layers(path: str | Path, earlier: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` layers followed by the best settings of a ``metarec tune`` folder (or its best.toml).

    A tuned method's table replaces its tables in the earlier layers (its trials were built from
    the tune's preset and values alone), and the tune's method list applies only when no earlier
    layer names the methods. Later layers (the command line) still win.
    """
    p = Path(path)
    file = p / "best.toml" if p.is_dir() else p
    if not file.exists():
        raise ConfigError(
            f"--tuned {path}: no best.toml there; a `metarec tune` folder has one as soon as a trial completed"
        )
    layer = layer_from_file(file)
    if not layer.get("provenance"):
        raise ConfigError(f"--tuned {file}: no [provenance.<method>] tables, so not written by `metarec tune`")
    tuned = set(layer["methods"])
    cleaned = [{**dict(lay), "methods": {m: t for m, t in (lay.get("methods") or {}).items() if m not in tuned}}
               for lay in earlier]
    if any("methods" in (lay.get("bench") or {}) for lay in earlier):
        layer["bench"].pop("methods", None)
    return [*cleaned, layer]


def check_tuned(cfg: BenchConfig, path: str | Path) -> None:
    """Fail when the bench would not test on the tune's data or would put pool users in its test sets."""
    p = Path(path)
    layer = layer_from_file(p / "best.toml" if p.is_dir() else p)
    want_ds = layer["bench"].get("dataset")
    if want_ds is not None and want_ds != cfg.dataset:
        raise ConfigError(f"--tuned {path}: the settings were tuned on {want_ds!r}, but the bench runs on {cfg.dataset!r}")
    want = layer["bench"].get("protocol") or {}
    for key in ("tuning_fraction", "tuning_seed"):
        if key in want and cfg.protocol.get(key, 0) != want[key]:
            raise ConfigError(
                f"--tuned {path}: protocol.{key} is {cfg.protocol.get(key, 0)!r} here but {want[key]!r} in the tune; "
                "keep the tune's value, or the bench's test users would include tuning-pool users"
            )


def layer_from_overrides(items: Sequence[str], known_methods: Sequence[str] = ()) -> dict[str, Any]:
    """``--set`` strings as a layer; the first key part says where each one goes.

    ``bench.X`` / ``X`` (a bench field) -> the bench; ``protocol.X`` / ``synthetic.X`` -> those
    tables of the bench;
    ``methods.M.X`` / ``M.X`` -> method ``M`` (``M.preset=name`` picks its preset).
    """
    bench: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    for item in items:
        parsed = parse_overrides([item])
        (head, value), = parsed.items()
        if head == "bench":
            bench = deep_merge(bench, value if isinstance(value, dict) else {})
            if not isinstance(value, dict):
                raise ConfigError(f"--set {item!r}: use bench.<key>=value")
        elif head in ("protocol", "synthetic"):
            if not isinstance(value, dict):
                raise ConfigError(f"--set {item!r}: use {head}.<key>=value")
            bench = deep_merge(bench, {head: value})
        elif head == "methods":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"--set {item!r}: use methods.<name>.<key>=value")
            for m, kv in value.items():
                methods[m] = deep_merge(methods.get(m, {}), kv)
        elif not isinstance(value, dict):
            if head not in BENCH_FIELDS:
                raise ConfigError(
                    f"--set {item!r}: {head!r} is not a bench setting; use <method>.<key>=value for a "
                    f"method's setting, or one of: {', '.join(BENCH_FIELDS)}"
                )
            bench[head] = value
        else:
            methods[head] = deep_merge(methods.get(head, {}), value)
    _check_bench_keys(bench, "--set")
    return {"bench": bench, "methods": methods}


def _check_bench_keys(bench: Mapping[str, Any], where: str) -> None:
    import difflib

    for key in bench:
        if key not in BENCH_FIELDS:
            hint = difflib.get_close_matches(key, BENCH_FIELDS, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: unknown bench key {key!r}{did}; valid keys: {', '.join(BENCH_FIELDS)}")


def resolve_config(*layers: Mapping[str, Any]) -> BenchConfig:
    """Merge layers ``{"bench": ..., "methods": ...}`` (later wins) into a :class:`BenchConfig`.

    ``seeds`` and ``methods`` may be strings (``"0-4"``, ``"a,b"``) in any layer.
    """
    bench: dict[str, Any] = {}
    methods: dict[str, dict[str, Any]] = {}
    provenance: dict[str, dict[str, Any]] = {}
    for layer in layers:
        if not layer:
            continue
        provenance.update(copy.deepcopy(dict(layer.get("provenance") or {})))
        if "epochs" in layer.get("bench", {}):
            # a bench-wide epochs beats every method's epochs of EARLIER layers (later ones win)
            for table in methods.values():
                table.pop("epochs", None)
        bench = deep_merge(bench, layer.get("bench", {}))
        for name, table in (layer.get("methods") or {}).items():
            methods[name] = deep_merge(methods.get(name, {}), table)
    if "seeds" in bench:
        bench["seeds"] = parse_seeds(bench["seeds"])
    if "methods" in bench:
        bench["methods"] = parse_methods(bench["methods"])
    cfg = build_config(BenchConfig, bench, where="bench config")
    settings: dict[str, MethodSettings] = {}
    for name, table in methods.items():
        table = dict(table)
        preset = table.pop("preset", None)
        if preset is not None and not isinstance(preset, str):
            raise ConfigError(f"methods.{name}.preset must be a string, got {preset!r}")
        settings[name] = MethodSettings(preset=preset, overrides=table)
    cfg.method_settings = settings
    cfg.provenance = provenance
    # Protocol keys are checked now, not after an hour of training.
    protocol_config(cfg)
    return cfg


def protocol_config(cfg: BenchConfig) -> Any:
    """The :class:`~metarec.data.ProtocolConfig` of this bench (defaults + ``cfg.protocol``)."""
    from metarec.data.protocol import ProtocolConfig

    return build_config(ProtocolConfig, cfg.protocol, where="protocol")


def differences(a: BenchConfig, b: BenchConfig, fields: Sequence[str] = RESULT_FIELDS) -> list[str]:
    """Human-readable differences of the result-relevant fields (for ``--resume`` checks)."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{f}: {da[f]!r} -> {db[f]!r}" for f in fields if da.get(f) != db.get(f)]


__all__ = [
    "BenchConfig",
    "CONFIG_FORMAT",
    "MethodSettings",
    "deep_merge",
    "differences",
    "layer_from_file",
    "layer_from_overrides",
    "parse_methods",
    "parse_seeds",
    "check_tuned",
    "protocol_config",
    "resolve_config",
    "tuned_layers",
]
