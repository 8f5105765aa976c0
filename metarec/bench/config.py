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
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from metarec.config import ConfigError, ValidatedConfig, build_config, jsonable, load_toml, parse_overrides, setting

#: Format tag of the saved resolved configuration (``config.json`` of a run directory).
CONFIG_FORMAT = "metarec-bench-config-1"


@dataclass
class MethodSettings(ValidatedConfig):
    """How one method is built: a named preset of its learner plus key overrides."""

    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchConfig(ValidatedConfig):
    """Everything that decides what ``metarec bench`` runs and how it reports it."""

    #: Learner names (see ``metarec methods``), in table order.
    methods: tuple[str, ...] = setting(("global-mean", "baseline-predictor"), min_len=1, unique=True)
    #: ``ml-1m``, ``book-crossing`` (or any name ``metarec.data.load_split`` knows), or ``synthetic``.
    dataset: str = "ml-1m"
    #: Folder holding the raw dataset files (None: the loader's default).
    data_dir: str | None = None
    #: TOML file for the data loader: the schema of a ``custom`` dataset, or a ``[loader]``
    #: table of options for a built-in one (see :func:`metarec.data.load_split`).
    dataset_config: str | None = None
    #: Run seeds. A seed decides the train/test user split AND the model initialisation, so the
    #: spread over seeds covers both sources of variation.
    seeds: tuple[int, ...] = setting((0, 1, 2), ge=0, min_len=1, unique=True)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Output folder (None: ``runs/<timestamp>``).
    out: str | None = None
    #: Independent (method, seed) runs executed at once, each in its own process.
    jobs: int = setting(1, ge=1)
    #: torch threads per run (None: all cores divided by ``jobs``).
    threads: int | None = setting(None, ge=1)
    #: Never touch the network when loading data.
    offline: bool = True
    #: Let the data loader cache its parsed tables.
    use_cache: bool = True
    #: Convenience: set ``epochs`` of every method whose config has that key (None: leave alone).
    epochs: int | None = setting(None, ge=0)
    #: NDCG cut-off and the clip length of the per-scenario clip-NDCG (appendix A.2.3).
    k: int = setting(3, ge=1)
    clip_size: int = setting(5, ge=1)
    #: Ranking metrics on the query items (Precision / NDCG_rel / MAP at these cut-offs): a query
    #: item is relevant when its true rating is >= ``relevance_threshold``.
    ranking_ks: tuple[int, ...] = setting((3, 5), ge=1, min_len=1, unique=True)
    relevance_threshold: float = 4.0
    #: Bootstrap resamples (over test users) for the confidence intervals, and their level.
    n_boot: int = setting(1000, ge=1)
    ci_level: float = setting(0.95, gt=0, lt=1)
    #: ``query``: rank each test user's query items only (the protocol's NDCG). ``catalogue``:
    #: also rank the relevant query items (rating >= ``ranking_threshold``) among every catalogue
    #: item the user has not rated in support, per scenario (Recall@k / NDCG@k, k in {10, 20};
    #: :mod:`metarec.ranking`).
    ranking: Literal["query", "catalogue"] = "query"
    ranking_threshold: float = 4.0
    #: Show the live progress display.
    progress: bool = True
    #: Keep each run's training checkpoints after it finished (they are deleted otherwise).
    keep_checkpoints: bool = False
    #: Where runs execute: ``process`` (worker processes: a run that crashes or exits cannot take
    #: the benchmark down) or ``inline`` (the driver's process: for learners defined in a
    #: notebook or ``__main__``; survives exceptions and ``sys.exit``, not ``os._exit``).
    executor: Literal["process", "local", "inline", "ray"] = "process"
    #: ``executor = "ray"``: the cluster to use (``auto``, ``HOST:PORT``; None: a local Ray
    #: instance with ``jobs`` runs' worth of CPUs), the resources each run declares (None CPUs:
    #: ``threads``; fractional GPUs share a device) and how often Ray retries a run whose worker
    #: or node died before it is recorded as failed.
    ray_address: str | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float = 0.0
    retries: int = 2
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
        super().__post_init__()  # types, choices and the declared bounds (metarec.config)
        # bounds that depend on this machine (cores) or span fields: checked here
        if not self.methods:
            raise ValueError("methods is empty: name at least one method (see `metarec methods`)")
        dupes = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if dupes:
            raise ValueError(f"methods lists {', '.join(dupes)} more than once")
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed")
        if len(self.seeds) > MAX_SEEDS:
            raise ValueError(f"seeds: {len(self.seeds)} seeds given, at most {MAX_SEEDS} allowed")
        for s in self.seeds:
            _check_int("seeds", s, 0, MAX_SEED)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds contain duplicates: {list(self.seeds)}")
        for name, (lo, hi) in int_bounds().items():
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, lo, hi)
        if isinstance(self.ci_level, bool) or not isinstance(self.ci_level, (int, float)) or not (
            math.isfinite(self.ci_level) and 0.0 < self.ci_level < 1.0
        ):
            raise ValueError(f"ci_level = {self.ci_level!r} is out of range: allowed (0, 1), e.g. 0.95")
        cores4 = 4 * cpu_cores()
        for name, lo, hi in (("cpus_per_run", 0.0, float(cores4)), ("gpus_per_run", 0.0, 64.0)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not (
                lo <= value <= hi
            ):
                raise ValueError(f"{name} = {value!r} is out of range: allowed {lo:g}..{hi:g}")
        if self.cpus_per_run is not None and self.cpus_per_run <= 0:
            raise ValueError("cpus_per_run must be > 0 (fractions such as 0.5 are allowed)")
        if self.executor != "ray" and (self.ray_address is not None):
            raise ValueError("ray_address only applies with executor = \"ray\" (--executor ray)")

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
        d["ranking_ks"] = list(self.ranking_ks)
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


# ---------------------------------------------------------------------------- bounds

#: Largest seed (seeds feed numpy's and torch's generators) and most seeds per benchmark.
MAX_SEED = 2**31 - 1
MAX_SEEDS = 1000
#: Most bootstrap resamples (memory grows with resamples x test users).
MAX_N_BOOT = 100_000
MAX_EPOCHS = 100_000


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def int_bounds() -> dict[str, tuple[int, int]]:
    """Allowed ranges (inclusive) of the bench's integer settings; threads and jobs follow the cores."""
    cores4 = 4 * cpu_cores()
    return {
        "jobs": (1, cores4),
        "threads": (1, cores4),
        "epochs": (0, MAX_EPOCHS),
        "k": (1, 1000),
        "clip_size": (1, 100_000),
        "n_boot": (1, MAX_N_BOOT),
        "retries": (0, 100),
    }


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} = {value!r} must be a whole number in {lo}..{hi}")
    if not lo <= value <= hi:
        note = f" (4 x the {cpu_cores()} CPU cores)" if name in ("jobs", "threads") else ""
        raise ValueError(f"{name} = {value} is out of range: allowed {lo}..{hi}{note}")


_LEARNING_RATE = re.compile(r"(^|_)lr($|_)|learning_rate")
#: Largest learning rate the harness accepts for any method setting named like one.
MAX_LEARNING_RATE = 10.0


def check_values(where: str, value: Any) -> None:
    """Refuse non-finite numbers anywhere in ``value`` and learning rates outside (0, 10].

    Applies to every method setting and the protocol/synthetic tables, whatever the method:
    the key is named in the error (``methods.mamo.lr = nan: ...``).
    """
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_values(f"{where}.{k}", v)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_values(f"{where}[{i}]", v)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} = {value!r}: must be a finite number")
    key = where.rsplit(".", 1)[-1]
    if _LEARNING_RATE.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 < value <= MAX_LEARNING_RATE:
            raise ConfigError(f"{where} = {value!r} is out of range: a learning rate must be in (0, {MAX_LEARNING_RATE:g}]")


# ---------------------------------------------------------------------------- parsing helpers

BENCH_FIELDS = tuple(f.name for f in dataclasses.fields(BenchConfig) if f.name not in ("method_settings", "provenance"))
#: Fields that change the numbers; a resumed run must not change them.
RESULT_FIELDS = (
    "dataset", "data_dir", "dataset_config", "offline", "epochs", "k", "clip_size", "n_boot", "ci_level",
    "ranking_ks", "relevance_threshold", "ranking", "ranking_threshold",
    "protocol", "synthetic", "method_settings",
)


def parse_presets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--preset METHOD=NAME`` options -> the ``methods`` layer ``{method: {"preset": name}}``."""
    layer: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--preset {item!r} is not of the form METHOD=NAME")
        layer.setdefault(name.strip(), {})["preset"] = value.strip()
    return layer


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
            if hi - lo + 1 + len(seeds) > MAX_SEEDS or hi > MAX_SEED:
                raise ConfigError(f"seeds {part!r}: at most {MAX_SEEDS} seeds, each in 0..{MAX_SEED}")
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


def check_provenance(cfg: BenchConfig) -> None:
    """Fail when a method's tuned settings (its ``[provenance.<method>]`` table) were tuned on
    another dataset or tuning pool than the bench tests on: its test users could then include
    the users its settings were chosen on."""
    for method, prov in cfg.provenance.items():
        if method not in cfg.methods:
            continue
        where = prov.get("study_path") or prov.get("tune_dir") or "its study"
        if prov.get("dataset") is not None and prov["dataset"] != cfg.dataset:
            raise ConfigError(f"[provenance.{method}]: tuned on {prov['dataset']!r} ({where}), but the bench runs on "
                              f"{cfg.dataset!r}; tune it on {cfg.dataset!r} or drop its tables")
        for key in ("tuning_fraction", "tuning_seed"):
            if key in prov and cfg.protocol.get(key, 0) != prov[key]:
                raise ConfigError(
                    f"[provenance.{method}]: protocol.{key} is {cfg.protocol.get(key, 0)!r} here but {prov[key]!r} in "
                    f"{where}; set [bench.protocol] {key} = {prov[key]!r}, or the test users would include tuning-pool users"
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
                import difflib

                hint = difflib.get_close_matches(head, BENCH_FIELDS, n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(
                    f"--set {item!r}: {head!r} is not a bench setting{did}; use <method>.<key>=value for a "
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
    check_values("protocol", cfg.protocol)
    check_values("synthetic", cfg.synthetic)
    for name, ms in settings.items():
        check_values(f"methods.{name}", ms.overrides)
    cfg.provenance = provenance
    # Protocol keys are checked now, not after an hour of training.
    protocol_config(cfg)
    return cfg


def protocol_config(cfg: BenchConfig) -> Any:
    """The :class:`~metarec.data.ProtocolConfig` of this bench (defaults + ``cfg.protocol``)."""
    from metarec.data.protocol import ProtocolConfig

    return build_config(ProtocolConfig, cfg.protocol, where="protocol")


def run_settings(cfg: BenchConfig, method: str) -> dict[str, Any]:
    """The settings that decide one run's numbers: the bench's result fields and the method's own.

    Stored in every run record; ``--resume`` keeps a finished run only when these still match.
    """
    d = cfg.to_dict()
    out = {f: d.get(f) for f in RESULT_FIELDS if f != "method_settings"}
    out["method"] = d["method_settings"].get(method, {"preset": None, "overrides": {}})
    return out


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
    "check_provenance",
    "check_tuned",
    "protocol_config",
    "resolve_config",
    "run_settings",
    "tuned_layers",
]
