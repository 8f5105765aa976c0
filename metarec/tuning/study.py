"""``metarec tune``'s engine: one Optuna study per method, trials trained on the tuning pool.

A trial draws settings from the method's :mod:`search space <metarec.tuning.space>`, builds the
learner (Config defaults < preset < drawn values < fixed ``--set`` values), meta-trains it on the
training users of the split at ``split_seed`` -- the pool's users are never among them -- and
scores it on the pool's query ratings (overall MAE by default, as ``metarec bench`` computes it).
After every epoch the same score is reported to the pruner, which stops trials that fall behind.

Storage is Optuna's journal file (``<out>/optuna.log``), appended to by the driver and every
trial (directly, or through the driver's gRPC storage proxy on a Ray cluster:
:mod:`metarec.tuning.trial`), so a tune killed at any moment (even ``kill -9``) keeps every
finished trial; ``--resume`` marks the
trials that were running as failed (``interrupted``), queues their settings again and runs until
the budget is met. The budget counts finished trials (complete, pruned, failed) and running ones;
interrupted trials do not count. A trial that raises, diverges (NaN loss) or runs out of memory
is recorded as failed with its error, and the study goes on.

The unit of parallel work is one trial, a :class:`~metarec.tuning.trial.TrialJob` run by the
same executors as ``metarec bench``'s runs (inline, local worker processes, Ray tasks); the
driver alone asks for trials and so counts the budget (:mod:`metarec.tuning.run`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from metarec.bench.config import BenchConfig
from metarec.config import ConfigError, build_config, jsonable
from metarec.learner import Callback
from metarec.runtime import derive_seed

#: Format tag of ``<out>/tune.json``.
TUNE_FORMAT = "metarec-tune-1"
#: The pool's share when the protocol does not set ``tuning_fraction``.
DEFAULT_TUNING_FRACTION = 0.1
JOURNAL = "optuna.log"
#: Metric -> Optuna direction.
METRICS: dict[str, str] = {"mae": "minimize", "ndcg": "maximize"}

Sink = Callable[[tuple], None]


class TuneError(RuntimeError):
    """The tune cannot start (bad settings, unusable output folder, missing Optuna)."""


def require_optuna() -> Any:
    """Import Optuna, or fail with the one line that installs it."""
    try:
        import optuna
    except ImportError:
        raise TuneError("metarec tune needs Optuna: pip install 'metarec[tune]'") from None
    return optuna


# ---------------------------------------------------------------------------- configuration


@dataclass
class TuneConfig:
    """What ``metarec tune`` searches, on which data, with which budget.

    ``bench`` carries everything shared with ``metarec bench``: methods, dataset, protocol (whose
    ``tuning_fraction`` defines the pool), per-method presets and fixed overrides, device, jobs,
    threads and a bench-wide ``epochs``.
    """

    bench: BenchConfig
    #: Trials per method (the same budget for every method unless ``trials_per_method`` says otherwise).
    trials: int = 20
    trials_per_method: dict[str, int] = field(default_factory=dict)
    #: ``mae`` (overall MAE on the pool, minimised) or ``ndcg`` (overall NDCG@k, maximised).
    metric: Literal["mae", "ndcg"] = "mae"
    #: Seconds per method after which no new trial starts (running ones finish); None = no limit.
    timeout: float | None = None
    #: Seed of the sampler and of every trial's model initialisation.
    seed: int = 0
    #: Run seed whose training users the trials train on (the pool is the same for every seed).
    split_seed: int = 0
    #: ``median`` (Optuna's MedianPruner), ``halving`` (successive halving) or ``none``.
    pruner: Literal["median", "halving", "none"] = "median"
    #: Trials drawn at random before TPE models the results, and before the pruner prunes.
    startup_trials: int = 5
    #: ``executor = "ray"``: the address the driver's Optuna storage proxy (gRPC) listens on, which
    #: every worker node must reach (None: 127.0.0.1 for a cluster on this machine, else the
    #: driver's address in the cluster), and its port (0: any free port).
    storage_host: str | None = None
    storage_port: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        bad = {m: n for m, n in self.trials_per_method.items() if not isinstance(n, int) or n < 1}
        if bad:
            raise ValueError(f"trials per method must be integers >= 1, got {bad}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.seed < 0 or self.split_seed < 0:
            raise ValueError("seed and split_seed must be non-negative")
        if self.startup_trials < 0:
            raise ValueError(f"startup_trials must be >= 0, got {self.startup_trials}")
        if not 0 <= self.storage_port <= 65535:
            raise ValueError(f"storage_port must be 0 (any free port) or 1..65535, got {self.storage_port}")
        if self.storage_host is not None and not self.storage_host.strip():
            raise ValueError("storage_host is empty: give an address the workers can reach, e.g. 10.0.0.5")

    def budget(self, method: str) -> int:
        """The number of trials ``method`` gets."""
        return int(self.trials_per_method.get(method, self.trials))

    @property
    def direction(self) -> str:
        """``minimize`` or ``maximize``."""
        return METRICS[self.metric]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``tune.json``); :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "bench"}
        return jsonable({"bench": self.bench.to_dict(), **d})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TuneConfig":
        """Rebuild (and validate) from :meth:`to_dict` output."""
        d = dict(d)
        bench = BenchConfig.from_dict(d.pop("bench"))
        cfg = build_config(cls, {"bench": bench, **d}, where="tune config")
        return cfg


def with_pool(bench: BenchConfig) -> BenchConfig:
    """``bench`` with ``protocol.tuning_fraction`` set to the default when it is not set; 0 is an error."""
    protocol = dict(bench.protocol)
    protocol.setdefault("tuning_fraction", DEFAULT_TUNING_FRACTION)
    if not protocol["tuning_fraction"] or protocol["tuning_fraction"] <= 0:
        raise ConfigError(
            "protocol.tuning_fraction must be > 0 for tuning: the pool is what trials are scored on "
            f"(default {DEFAULT_TUNING_FRACTION})"
        )
    return dataclasses.replace(bench, protocol=protocol)


def fixed_values(cfg: TuneConfig, method: str, cls: type) -> dict[str, Any]:
    """The method's values that are not searched: its ``--set``/file overrides and a bench-wide epochs."""
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    return cfg.bench.learner_overrides(method, fields)


def effective_space(cls: type, cfg: TuneConfig, method: str) -> dict[str, dict]:
    """The method's checked search space without the keys fixed by overrides (those are not searched)."""
    from metarec.tuning.space import SearchSpaceError, check_space

    settings = cfg.bench.settings_for(method)
    base = cls.presets.get(settings.preset, {}) if settings.preset else {}
    try:
        space = check_space(cls, base=base)
    except SearchSpaceError as exc:
        raise TuneError(str(exc)) from None
    fixed = fixed_values(cfg, method, cls)
    space = {k: v for k, v in space.items() if k not in fixed}
    if not space:
        why = "declares no search_space" if not getattr(cls, "search_space", None) else "has every searched key fixed by --set/--epochs"
        raise TuneError(f"{method}: nothing to tune: the learner {why}")
    return space


# ---------------------------------------------------------------------------- data and scores


def load_tuning_split(cfg: TuneConfig) -> Any:
    """The split at ``split_seed`` under the tune's protocol: ``train`` to fit, ``tuning`` to score."""
    from metarec.bench.runner import load_bench_split

    split = load_bench_split(cfg.bench, cfg.split_seed)
    if split.tuning is None or len(split.tuning) == 0:
        raise TuneError("the protocol gives an empty tuning pool; raise protocol.tuning_fraction")
    return split


def pool_score(learner: Any, pool: Any, metric: str, k: int) -> float:
    """Overall MAE (mean of per-user MAE, Eq. 13) or NDCG@k (Eq. 14) of ``learner`` on the pool's queries."""
    from metarec import metrics as M

    pred = learner.predict(pool)
    mask = pool.query_mask
    p = pred[mask].double().numpy()
    t = pool.query_ratings[mask].double().numpy()
    if not np.all(np.isfinite(p)):
        raise FloatingPointError(f"{int((~np.isfinite(p)).sum())} pool predictions are NaN or infinite")
    users = np.broadcast_to(np.arange(mask.shape[0])[:, None], tuple(mask.shape))[mask.numpy()]
    if metric == "mae":
        return M.user_mae(p, t, users)
    return M.user_ndcg(p, t, users, k)


class PoolReport(Callback):
    """After every epoch: score the pool, report it to the trial, prune when the pruner says so.

    The last epoch is reported but never pruned: its trial has cost all it will cost, and its
    value is a complete result.
    """

    def __init__(self, trial: Any, pool: Any, metric: str, k: int) -> None:
        self.trial, self.pool, self.metric, self.k = trial, pool, metric, k
        self.last_epoch = -1
        self.history: list[dict[str, float]] = []
        #: Seconds spent inside Optuna's report / should_prune (the pruning overhead).
        self.pruning_s = 0.0
        #: Seconds spent scoring the pool after each epoch (part of the trial's own work).
        self.scoring_s = 0.0

    def on_fit_start(self, learner: Any, *, epochs: int, batches_per_epoch: int) -> None:
        self.last_epoch = int(getattr(learner, "epochs_done", 0)) + epochs - 1

    def on_epoch_end(self, learner: Any, *, epoch: int, logs: dict[str, float]) -> None:
        import optuna

        loss = float(logs.get("loss", float("nan")))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} after epoch {epoch + 1}")
        t0 = time.perf_counter()
        value = pool_score(learner, self.pool, self.metric, self.k)
        t1 = time.perf_counter()
        self.history.append({"epoch": epoch + 1, "loss": loss, "value": value})
        self.trial.report(value, epoch + 1)
        prune = epoch < self.last_epoch and self.trial.should_prune()
        t2 = time.perf_counter()
        self.scoring_s += t1 - t0
        self.pruning_s += t2 - t1
        if prune:
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: pool {self.metric} {value:.4f}")


# ---------------------------------------------------------------------------- the study


def open_storage(out: str | Path) -> Any:
    """The study's journal storage, ``<out>/optuna.log`` (created on first use)."""
    require_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(out) / JOURNAL)))


def make_sampler(cfg: TuneConfig, method: str, worker: int, resumed_at: int = 0) -> Any:
    """TPE seeded from the tune's seed, the method and the worker (one stream per worker).

    ``resumed_at`` is the number of trials the study already holds when a driver loads it. A
    resumed driver must not restart the stream a fresh one started with: its random start-up
    draws would repeat the first trials' settings one by one, spending the budget on copies. A
    fresh study (0 trials) keeps the original seed, so its trials do not depend on this rule.
    """
    import optuna

    names: tuple[str | int, ...] = ("tpe", method, worker) + (("resumed-at", resumed_at) if resumed_at else ())
    return optuna.samplers.TPESampler(seed=derive_seed(cfg.seed, *names), n_startup_trials=cfg.startup_trials)


def make_pruner(cfg: TuneConfig) -> Any:
    """The pruner named by ``cfg.pruner``."""
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=1)
    if cfg.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def create_study(cfg: TuneConfig, method: str, out: str | Path, space: Mapping[str, Any]) -> Any:
    """Create (or load) ``method``'s study in the journal and record what it searches."""
    optuna = require_optuna()
    study = optuna.create_study(storage=open_storage(out), study_name=method, direction=cfg.direction,
                                sampler=make_sampler(cfg, method, 0), pruner=make_pruner(cfg), load_if_exists=True)
    for key, value in {"method": method, "metric": cfg.metric, "budget": cfg.budget(method),
                       "search_space": jsonable(dict(space))}.items():
        study.set_user_attr(key, value)
    return study


def counted(trials: Any) -> int:
    """Trials that use the budget: finished or running, but not those a kill interrupted."""
    from optuna.trial import TrialState

    n = 0
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            n += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
            n += 1
    return n


def recover_interrupted(study: Any) -> dict[int, bool]:
    """Mark trials left running by a killed tune as failed (``interrupted``) and queue their settings again.

    Settings that a finished trial already scored, or that are queued already, are not queued a
    second time: a trial is seeded, so running the same settings again would only repeat its value.
    Returns each interrupted trial's number and whether its settings were queued. Call only when
    no worker of this study is alive (``--resume`` of a stopped tune).
    """
    from optuna.trial import TrialState

    storage = study._storage
    trials = study.get_trials(deepcopy=False)
    settled = {_settings_key(t.params) for t in trials if t.params and t.state != TrialState.RUNNING
               and not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted"))}
    lost: dict[int, bool] = {}
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_user_attr(t._trial_id, "error", "interrupted: the tune was stopped while this trial ran")
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        lost[t.number] = bool(t.params) and _settings_key(t.params) not in settled
        if lost[t.number]:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            settled.add(_settings_key(t.params))
    return lost


def _settings_key(params: Mapping[str, Any]) -> str:
    """One trial's drawn settings as a comparable key."""
    return json.dumps(dict(params), sort_keys=True, default=str)


def _run_trial(trial: Any, cls: type, method: str, cfg: TuneConfig, space: Mapping[str, Any], split: Any,
               device: Any, timings: dict[str, float]) -> float:
    """Train and score one trial and return its value; fills ``timings`` (also when it raises
    TrialPruned or the trial's own error)."""
    from metarec.tuning.space import suggest

    t0 = time.perf_counter()
    params = suggest(trial, space)
    timings["suggest_s"] = time.perf_counter() - t0
    settings = cfg.bench.settings_for(method)
    t0 = time.perf_counter()
    learner = cls.from_settings(split.train.schema, preset=settings.preset,
                                overrides={**params, **fixed_values(cfg, method, cls)}, device=device, seed=cfg.seed)
    trial.set_user_attr("learner_config", jsonable(dataclasses.asdict(learner.config)))
    report = PoolReport(trial, split.tuning, cfg.metric, cfg.bench.k)
    try:
        learner.meta_fit(split.train, callbacks=[report])
        t1 = time.perf_counter()
        value = report.history[-1]["value"] if report.history else pool_score(learner, split.tuning, cfg.metric, cfg.bench.k)
    finally:
        timings["pruning_s"] = report.pruning_s
        timings["scoring_s"] = report.scoring_s
        trial.set_user_attr("history", report.history)
        trial.set_user_attr("epochs_done", int(getattr(learner, "epochs_done", 0)))
    timings["train_s"] = t1 - t0
    return float(value)


__all__ = [
    "DEFAULT_TUNING_FRACTION",
    "METRICS",
    "TUNE_FORMAT",
    "PoolReport",
    "TuneConfig",
    "TuneError",
    "counted",
    "create_study",
    "effective_space",
    "load_tuning_split",
    "open_storage",
    "pool_score",
    "recover_interrupted",
    "with_pool",
]
