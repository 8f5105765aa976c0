"""One tuning trial as a job of the bench executors (:mod:`metarec.bench.executor`).

The tune's driver (:func:`metarec.tuning.run.run_tune`) is the only process that *asks*: it
counts the budget, asks the method's study for a trial and draws its settings with the study's
one seeded sampler, then hands a :class:`TrialJob` (the trial's id and number, no settings) to
an executor -- inline, a local worker process, or a Ray task. The job trains and scores the
trial, reports every epoch's pool score to the trial so that the pruner (which runs where the
trial runs, reading the other trials from the study) can stop it, and *tells* the study the
result itself, so a finished trial is in the journal the moment it finishes.

Where the study lives, seen from the job:

* inline and local workers open the journal file ``<out>/optuna.log`` directly (one machine);
* a Ray task reaches it through Optuna's gRPC storage proxy (``GrpcStorageProxy``), served by
  the driver over the same journal (:class:`StorageProxy`): a cluster need not share a
  filesystem, and the journal on the driver stays the one record of the study.

A job whose process or node died (:meth:`TrialJob.died`, run by the driver): its trial is
marked failed and ``interrupted`` and its settings are queued again, exactly what ``--resume``
does for the trials of a killed tune -- at most ``retries`` times in a row, after which it is a
plain failed trial (which uses the budget) naming the cause. The study goes on either way.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metarec.bench.progress import Sink

#: Storages opened in this process, ``(out, proxy address) -> storage``: a worker that runs many
#: trials replays the journal once, and the driver's gRPC server and its own asks share one.
_STORAGES: dict[tuple[str, str | None], Any] = {}


def study_storage(out: str | Path, proxy: str | None = None) -> Any:
    """The tune's storage: the journal file in ``out``, or the driver's gRPC proxy at ``HOST:PORT``."""
    key = (str(Path(out).resolve()) if proxy is None else str(out), proxy)
    if key not in _STORAGES:
        if proxy is None:
            from metarec.tuning.study import open_storage

            _STORAGES[key] = open_storage(out)
        else:
            import warnings

            from optuna.exceptions import ExperimentalWarning
            from optuna.storages import GrpcStorageProxy

            host, _, port = proxy.rpartition(":")
            with warnings.catch_warnings():  # once per worker process, in every task's log otherwise
                warnings.simplefilter("ignore", ExperimentalWarning)
                storage = GrpcStorageProxy(host=host, port=int(port))
            storage.wait_server_ready(timeout=60)
            _STORAGES[key] = storage
    return _STORAGES[key]


class StorageProxy:
    """Optuna's gRPC storage proxy over the tune's journal, served by the driver while trials run.

    ``host``: the address the server listens on, which every worker must be able to reach --
    127.0.0.1 for a cluster on this machine, the driver's cluster address otherwise. ``port``:
    0 picks a free one. Needs ``grpcio`` (``pip install 'metarec[ray]'``).
    """

    def __init__(self, out: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        from metarec.tuning.study import TuneError

        try:
            import grpc  # noqa: F401
            from optuna.storages._grpc.server import make_server
        except ImportError:
            raise TuneError("tuning over Ray needs grpcio for Optuna's storage proxy: pip install 'metarec[ray]'") from None
        if not port:
            port = _free_port(host)
        self.host, self.port = host, int(port)
        self._server = make_server(study_storage(out), host, self.port)
        try:
            self._server.start()
        except RuntimeError as exc:
            raise TuneError(f"cannot serve the study on {host}:{port} (--storage-host/--storage-port): {exc}") from None

    @property
    def address(self) -> str:
        """``HOST:PORT`` as the workers dial it."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving (calls in flight get a second to finish)."""
        self._server.stop(grace=1.0).wait(timeout=5)

    def __enter__(self) -> "StorageProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class TrialJob:
    """One asked trial, to be trained, scored and told where an executor runs it."""

    method: str
    out_dir: str
    #: The tune's settings (:meth:`metarec.tuning.study.TuneConfig.to_dict`).
    config: dict[str, Any]
    trial_id: int
    number: int
    #: The parallel slot that runs it (``worker`` in trials.csv; its timings go to timing-worker<slot>.json).
    slot: int
    threads: int
    #: ``HOST:PORT`` of the driver's gRPC storage proxy; None: open the journal file in ``out_dir``.
    proxy: str | None = None
    #: Times this trial's settings already ran and lost their worker (0: the first run).
    attempt: int = 0
    #: How many times settings whose worker died run again before the trial counts as failed.
    retries: int = 2
    #: The driver's share of the trial's Optuna time (ask, sampling the settings).
    ask_s: float = 0.0
    suggest_s: float = 0.0
    #: ``module:attribute`` of the learner class as the driver resolved it (a worker process
    #: imports exactly that); None: resolve by name where the trial runs (inline).
    learner_target: str | None = None
    #: Modules to import first (where run-time registered learners live).
    imports: tuple[str, ...] = ()

    #: Ray must not re-run a trial in place: the driver re-queues its settings as a new trial.
    ray_retry = False

    @property
    def key(self) -> str:
        """``<method>#<trial number>``."""
        return f"{self.method}#{self.number}"

    # -------------------------------------------------- the executor's Job interface
    def run(self, sink: Sink | None = None) -> dict[str, Any]:
        """Train, score and tell this trial here; never raises for the trial's own failure."""
        return run_trial(self, study_storage(self.out_dir, self.proxy), sink)

    def split_source(self) -> tuple[Any, int]:
        """The split the trial trains on (the tune's ``split_seed``): a Ray driver puts it once."""
        from metarec.tuning.study import TuneConfig

        cfg = TuneConfig.from_dict(self.config)
        return cfg.bench, cfg.split_seed

    def run_remote(self, split: Any) -> dict[str, Any]:
        """In a Ray task: the split from the object store, the study through the driver's proxy."""
        if split is not None:
            from metarec.bench.run import prime_split_cache

            prime_split_cache(*self.split_source(), split)
        return self.run()

    def collect(self, payload: dict[str, Any]) -> dict[str, Any]:
        """In the driver: the trial told the study itself; its result is all there is to keep."""
        return payload

    def died(self, error: str, failure: dict[str, Any]) -> dict[str, Any]:
        """The trial's worker or node died: mark it interrupted and queue its settings again
        (up to ``retries`` times), or record it as failed with the cause."""
        import optuna
        from optuna.trial import TrialState

        storage = study_storage(self.out_dir)  # the driver's own journal
        frozen = storage.get_trial(self.trial_id)
        if frozen.state.is_finished():  # it told the study before its worker went
            return _result(self, frozen.state.name, frozen.value, frozen.user_attrs.get("error"), {}, 0.0)
        # a dead process runs its settings again; a job that raised outside its trial (a harness
        # error, e.g. the storage proxy unreachable) is a plain failure
        again = failure.get("kind") != "exception" and self.attempt < self.retries
        message = f"{error} (attempt {self.attempt + 1} of {self.retries + 1})"
        storage.set_trial_user_attr(self.trial_id, "error", message)
        storage.set_trial_user_attr(self.trial_id, "failure", failure)
        storage.set_trial_user_attr(self.trial_id, "worker", self.slot)
        if again:
            storage.set_trial_user_attr(self.trial_id, "interrupted", True)
        storage.set_trial_state_values(self.trial_id, TrialState.FAIL)
        if again and frozen.params:
            study = optuna.load_study(study_name=self.method, storage=storage)
            study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": self.number, "attempt": self.attempt + 1})
        res = _result(self, "FAIL", None, message, {}, 0.0)
        res.update(status="failed", interrupted=again, failure=failure)
        return res


def _result(job: TrialJob, state: str, value: float | None, error: str | None, timing: dict[str, Any],
            trial_s: float, node: dict[str, Any] | None = None) -> dict[str, Any]:
    node = node or {}
    return {"status": "ok", "method": job.method, "number": job.number, "slot": job.slot, "state": state,
            "value": value, "error": error, "trial_s": trial_s, "timing": timing, "node": node,
            "ray_node_id": node.get("ray_node_id")}


def run_trial(job: TrialJob, storage: Any, sink: Sink | None = None) -> dict[str, Any]:
    """Train and score the asked trial ``job.trial_id`` and tell the study its state and value."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from metarec.bench.run import learner_class, node_info
    from metarec.runtime import resolve_device
    from metarec.tuning.study import TuneConfig, _run_trial, effective_space, load_tuning_split, make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sink = sink or (lambda event: None)
    torch.set_num_threads(job.threads)
    cfg = TuneConfig.from_dict(job.config)
    # the settings were drawn by the driver's sampler: this sampler is never asked for a value
    study = optuna.load_study(study_name=job.method, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0),
                              pruner=make_pruner(cfg))
    trial = optuna.trial.Trial(study, job.trial_id)
    node = node_info()
    t_trial = time.perf_counter()
    timings: dict[str, float] = {}
    value: float | None = None
    try:
        # inside the trial: a node that cannot import the learner, or load the data, fails this trial only
        cls = learner_class(job)
        space = effective_space(cls, cfg, job.method)
        device = resolve_device(cfg.bench.device)
        sink(("phase", job.method, "loading data"))
        split = load_tuning_split(cfg)  # cached per process; a Ray task's comes from the object store
        value = _run_trial(trial, cls, job.method, cfg, space, split, device, timings)
        state, error = TrialState.COMPLETE, None
    except optuna.TrialPruned as exc:
        state, error = TrialState.PRUNED, str(exc)
    except Exception as exc:  # one trial's failure (error, NaN, out of memory) must not stop the study
        state, error = TrialState.FAIL, f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("error", error)
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
    trial_s = time.perf_counter() - t_trial
    trial.set_user_attr("trial_s", round(trial_s, 4))
    trial.set_user_attr("worker", job.slot)
    trial.set_user_attr("node", node)
    timings["suggest_s"] = job.suggest_s + timings.get("suggest_s", 0.0)
    t0 = time.perf_counter()
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    tell_s = time.perf_counter() - t0
    timing = {"trial": job.number, "state": state.name, "trial_s": trial_s, "ask_s": job.ask_s, "tell_s": tell_s,
              **timings}
    return _result(job, state.name, value, error, timing, trial_s, node)


__all__ = ["StorageProxy", "TrialJob", "run_trial", "study_storage"]
