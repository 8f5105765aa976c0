"""Jobs as Ray tasks: the same benchmark (or tune) on a Ray cluster (or a local Ray instance).

:class:`RayExecutor` implements :class:`~metarec.bench.executor.RunExecutor`, so a driver
(:func:`metarec.bench.runner.run_bench`, :func:`metarec.tuning.run.run_tune`) plans, resumes and
aggregates exactly as with the local process pool; only where a job executes changes. For a
benchmark's runs:

* each (method, seed) run is one Ray task declaring its resources (``cpus_per_run``,
  ``gpus_per_run`` -- fractional GPUs let several small runs share a device);
* each seed's split is built once, in the driver, and shared through the object store, so no
  task reads or parses the data files again;
* a task returns its run's final files (predictions, run record) and the driver alone writes
  them into the run folder, atomically, as the local executor does -- so ``--resume``,
  ``predictions.csv`` and ``results.json`` are the same whichever executor ran them;
* a task whose worker process or node dies is retried by Ray up to ``retries`` times, then
  recorded as failed with its cause; the other runs go on. A method that raises or calls
  ``sys.exit`` is isolated inside the task exactly as locally (:func:`~metarec.bench.run.execute_run`);
* Ctrl-C (or any error) in the driver cancels the outstanding tasks; runs without a record are
  simply not done yet, and ``--resume`` completes the folder.

Training checkpoints are written by the task where it executes (``<out>/checkpoints``): on one
machine, or a cluster with a shared filesystem, a retried or resumed run continues from its
last epoch; without a shared filesystem it restarts from scratch.

A tune's trials (:class:`metarec.tuning.trial.TrialJob`) use the same shared split and reach
their study through the driver's Optuna storage proxy; a dead one is re-queued in the study by
the driver (``ray_retry = False``) rather than retried in place by Ray.

Start-up: a local instance is started from the driver's main thread (Ray's processes die with
the thread that started them) while the first split loads in another thread, and ``jobs``
warm-up tasks import torch and metarec in the workers meanwhile (:meth:`RayExecutor.ensure_connected`).

Ray is an optional dependency: ``pip install 'metarec[ray]'``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

from metarec.bench.executor import RunExecutor, RunOutcome
from metarec.bench.progress import Sink
from metarec.bench.results import RunDir
from metarec.errors import UserError

#: What `metarec bench --executor ray` says when Ray is not installed.
INSTALL_HINT = "the ray executor needs Ray: pip install 'metarec[ray]'"


class RayUnavailableError(UserError, RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


#: Ray's switch between "this machine only" (services on 127.0.0.1) and "part of a cluster"
#: (services on the host's outward address). Ray reads it when it is imported.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(*, local: bool = False) -> Any:
    """The ``ray`` module, or a one-line error saying how to install it.

    ``local``: this process will start its own single-machine Ray instance, whose services must
    listen on the loopback interface only.
    """
    if local:
        os.environ.setdefault(_LOCAL_ONLY_ENV, "0")
        # an instance on this machine reports nothing to Ray's usage-statistics server
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(INSTALL_HINT) from None
    if local:
        # imported earlier (a notebook): Ray has read the switch already; the same switch again
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(_LOCAL_ONLY_ENV, "0") not in ("0", "false", "False")
    return ray


def cluster_address(address: str | None) -> str | None:
    """The cluster to use: ``address``, else ``$RAY_ADDRESS`` (Ray's own convention, set for a
    driver that a Ray job submits, or by hand), else None -- a local instance of our own."""
    return address or os.environ.get("RAY_ADDRESS") or None


def is_local(address: str | None) -> bool:
    """A local instance (no address) or a cluster on this machine (a loopback ``HOST:PORT``)."""
    address = cluster_address(address)
    if address is None:
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: float | None = None) -> bool:
    """Connect to the cluster at ``address`` (``auto``, ``HOST:PORT``), or start a local instance.

    Returns True when this call started Ray (and so must shut it down). A local instance binds
    to the loopback interface only and gets ``num_cpus`` CPUs (the benchmark's parallelism).
    No ``address``: ``$RAY_ADDRESS`` when set (:func:`cluster_address`).
    """
    address = cluster_address(address)
    ray = import_ray(local=is_local(address))
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address is None:
        # Ray starts its workers at niceness 15 by default (to keep its own services responsive);
        # here the workers *are* the benchmark, and the local pool's workers run at the driver's
        # priority: on a machine shared with other work, niceness 15 starves them
        # "local": a new instance even when `ray start` left a cluster on this machine, which
        # ray.init() would otherwise join (it reads /tmp/ray/ray_current_cluster)
        kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _system_config={"worker_niceness": 0})
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailableError(f"cannot start or reach {where}: {first}") from None
    return True


def _run_task(job: Any, split: Any) -> dict[str, Any]:
    """Body of one Ray task: the job runs where Ray placed it (:meth:`Job.run_remote`)."""
    return job.run_remote(split)


def _warm_task(modules: tuple[str, ...]) -> float:
    """Body of a warm-up task: import what every job imports (torch, metarec's run module) in a
    fresh worker process, so that the first real task on it starts at once. Returns seconds."""
    import importlib

    t0 = time.perf_counter()
    for name in ("torch", "metarec.bench.run", *modules):
        try:
            importlib.import_module(name)
        except ImportError:  # an optional module this node lacks: the job that needs it will say so
            pass
    return time.perf_counter() - t0


class RayExecutor(RunExecutor):
    """Every submitted job as a Ray task; the driver writes (or records) what the tasks return.

    A job may share a split through the object store (``split_source()``: built once in the
    driver per split, put once) and says whether Ray may re-run it in place when its worker or
    node died (``ray_retry``, default True: a benchmark run; a tune's trial is re-queued in the
    study by the driver instead, as a new trial).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        jobs: int,
        address: str | None = None,
        cpus_per_run: float | None = None,
        gpus_per_run: float = 0.0,
        retries: int = 2,
        preload: tuple[str, ...] = (),
    ) -> None:
        super().__init__(sink)
        self.ray = import_ray(local=is_local(address))
        self.preload = tuple(preload)
        self._warming: list[Any] = []
        self.cpus_per_run = float(cpus_per_run) if cpus_per_run is not None else None
        self.gpus_per_run = float(gpus_per_run)
        self.retries = int(retries)
        self.jobs = max(1, int(jobs))
        self.address = cluster_address(address)
        self._pending: list[Any] = []
        self._running: dict[Any, Any] = {}
        self._splits: dict[tuple, Any] = {}
        self._started = False
        self.nodes_used: set[str] = set()

    # ---------------------------------------------------------------- setup
    def ensure_connected(self, threads: int = 1, *, warm: bool = False) -> None:
        """Connect (or start the local instance) now; a driver may call it early, from its main
        thread, to overlap Ray's start with its own work. ``warm``: also start ``jobs`` warm-up
        tasks (not waited for), so the workers' imports overlap with that work too."""
        if not self.ray.is_initialized():  # else already connected (a notebook, a test's cluster, an earlier call)
            cpus = self.cpus_per_run if self.cpus_per_run is not None else threads
            n_cpus = max(1, int(round(self.jobs * cpus)))
            n_gpus = self.jobs * self.gpus_per_run if self.gpus_per_run else None
            self._started = connect(self.address, num_cpus=n_cpus, num_gpus=n_gpus)
        if warm and not self._warming:
            cpus = self.cpus_per_run if self.cpus_per_run is not None else float(threads)
            task = self.ray.remote(_warm_task)
            self._warming = [task.options(num_cpus=cpus, num_gpus=self.gpus_per_run, name="metarec:warm-up").remote(
                self.preload) for _ in range(self.jobs)]

    def _split_ref(self, job: Any) -> Any:
        """The object-store reference of the job's split, built (once per split) in the driver."""
        source = getattr(job, "split_source", None)
        if source is None:
            return None
        from metarec.bench.run import load_bench_split, split_key

        cfg, seed = source()
        key = split_key(cfg, seed)
        if key not in self._splits:
            self._splits[key] = self.ray.put(load_bench_split(cfg, seed))
        return self._splits[key]

    # ---------------------------------------------------------------- interface
    def submit(self, spec: Any) -> None:
        self._pending.append(spec)

    def _launch(self, job: Any) -> None:
        if not hasattr(self, "_task"):
            self._task = self.ray.remote(_run_task)
        cpus = self.cpus_per_run if self.cpus_per_run is not None else float(job.threads)
        ref = self._task.options(
            num_cpus=cpus, num_gpus=self.gpus_per_run, max_retries=self.retries if getattr(job, "ray_retry", True) else 0,
            retry_exceptions=False, name=f"metarec:{job.key}",
        ).remote(job, self._split_ref(job))
        self._running[ref] = job
        self.sink(("phase", job.key, "queued on ray"))

    def outcomes(self) -> Iterator[RunOutcome]:
        while self._pending or self._running:
            if self._pending:
                self.ensure_connected(self._pending[0].threads)
                for job in self._pending:
                    self._launch(job)
                self._pending.clear()
            ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=0.5)
            for ref in ready:
                job = self._running.pop(ref)
                yield self._collect(ref, job)

    def _collect(self, ref: Any, job: Any) -> RunOutcome:
        try:
            payload = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the job's own code raised (a harness error)
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            first = next((ln for ln in reversed(str(cause).splitlines()) if ln.strip()), type(cause).__name__)
            error = f"{type(cause).__name__}: {first}" if not first.startswith(type(cause).__name__) else first
            return self.job_died(job, error, {"kind": "exception", "type": type(cause).__name__})
        except self.ray.exceptions.RayError as exc:  # the worker or its node died (retries used up)
            kind = type(exc).__name__
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), kind)
            retries = self.retries if getattr(job, "ray_retry", True) else 0
            error = f"WorkerDied: the Ray task failed after {retries} retr{'y' if retries == 1 else 'ies'} ({kind}: {first})"
            return self.job_died(job, error, {"kind": "ray", "type": kind, "retries": retries})
        result = job.collect(payload)
        node = result.get("ray_node_id") or (_node_of(job) if hasattr(job, "seed") else None)
        if node:
            self.nodes_used.add(node)
        self.sink(("done", job.key, result["status"], result.get("summary", "")))
        return RunOutcome(job, result["status"], result.get("error"), result.get("failure"), result)

    def close(self) -> None:
        for ref in list(self._running):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already finished or its node is gone
                pass
        self._running.clear()
        self._splits.clear()
        self._warming.clear()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def _node_of(spec: Any) -> str | None:
    from metarec.bench.results import read_json

    try:
        return read_json(RunDir(spec.out_dir).run_json(spec.method, spec.seed)).get("node", {}).get("ray_node_id")
    except (OSError, ValueError):
        return None


def wait_for_cluster(ray: Any, nodes: int, timeout_s: float = 60.0) -> None:
    """Block until ``nodes`` alive nodes are registered (tests and scripts start clusters)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for n in ray.nodes() if n.get("Alive")) >= nodes:
            return
        time.sleep(0.2)
    raise RayUnavailableError(f"the Ray cluster did not reach {nodes} nodes within {timeout_s:.0f} s")


__all__ = ["INSTALL_HINT", "RayExecutor", "RayUnavailableError", "cluster_address", "connect", "import_ray", "is_local"]
