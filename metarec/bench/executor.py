"""Where jobs execute: a small interface, and the local process-pool implementation.

A driver hands :class:`Job` objects to an executor and reads back one :class:`RunOutcome` per
job, whatever happened to it. Two drivers use it: :func:`metarec.bench.runner.run_bench` (a job
is one (method, seed) run, :class:`~metarec.bench.run.RunSpec`) and ``metarec tune``'s
:func:`metarec.tuning.run.run_tune` (a job is one trial of a study,
:class:`~metarec.tuning.trial.TrialJob`). A job is a picklable object that knows how to run
itself (:meth:`Job.run`) and what to record when its process died (:meth:`Job.died`); the
executor knows only where it runs. An executor must

* run each job (:meth:`Job.run`, which writes or records its own results),
* forward the job's progress events to the driver's sink,
* turn a job whose process died (``os._exit``, a segfault, the out-of-memory killer's SIGKILL)
  into a failed outcome naming the cause -- exit code or signal -- recorded by :meth:`Job.died`,
* replace a dead worker, so that every other job still executes,
* accept :meth:`~RunExecutor.submit` between the outcomes it yields (a tune asks for its next
  trial when one finishes), and run what was submitted so.

:class:`ProcessExecutor` does this with local worker processes (``--jobs`` of them, also one
for ``--jobs 1``: a method that ends its process cannot end the benchmark). Workers are forked
from a ``forkserver`` that has already imported torch and metarec (a fresh, single-threaded
process: safe to fork, CUDA never initialised in it), so replacing a dead worker costs
milliseconds, not an interpreter start; ``spawn`` where forkserver does not exist. Each worker
talks to the driver over its own pipe, so a worker killed mid-message corrupts nothing shared,
and a worker whose driver died exits at once without writing anything (the run's checkpoints
stay for ``--resume``). :class:`InlineExecutor` runs in the driver's process (``executor = "inline"``: for
learners registered in a notebook or ``__main__``, which a worker cannot import; it survives
``sys.exit`` and exceptions, not ``os._exit``). A Ray executor implements the same interface.
"""

from __future__ import annotations

import abc
import collections
import multiprocessing as mp
import os
import signal
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Iterator, Protocol, runtime_checkable

from metarec.bench.progress import Sink


@runtime_checkable
class Job(Protocol):
    """One unit of work an executor runs: picklable (sent to worker processes and Ray tasks).

    ``run`` executes in a worker (or the driver, inline) and returns a result dict with at least
    ``status``; ``died`` executes in the driver when the job's process or node died, records
    what the job leaves behind and returns the result dict that stands for it. The optional
    Ray hooks (see :mod:`metarec.bench.ray_executor`) let a job read a split shared through the
    object store and hand its files to the driver instead of writing them where it ran.
    """

    key: str
    threads: int

    def run(self, sink: Sink | None = None) -> dict[str, Any]:
        """Execute the job where it was sent; report progress to ``sink``; never raise for its own failure."""
        ...

    def died(self, error: str, failure: dict[str, Any]) -> dict[str, Any]:
        """In the driver: the job's process or node died (``error``, ``failure``); record that."""
        ...


@dataclass
class RunOutcome:
    """What became of one submitted job."""

    spec: Any  # the Job
    status: str  # "ok" or "failed" (a tune's trial: "ok" also when the trial itself failed or was pruned)
    error: str | None = None
    #: Why a job failed: ``{"kind": "exception" | "sys.exit" | "exit-code" | "signal" | "ray", ...}``.
    failure: dict[str, Any] | None = None
    #: The job's whole result dict (what :meth:`Job.run` returned, or :meth:`Job.died`).
    result: dict[str, Any] | None = None


def describe_exit(exitcode: int | None) -> tuple[str, dict[str, Any]]:
    """The cause of a worker's death as a sentence and as data (exit code or signal name)."""
    if exitcode is None:
        return "the worker process vanished", {"kind": "unknown"}
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {
            "SIGKILL": " (the out-of-memory killer, or kill -9)",
            "SIGSEGV": " (a segmentation fault in native code)",
            "SIGABRT": " (an abort in native code)",
            "SIGBUS": " (a bus error in native code)",
        }.get(name, "")
        return f"the worker process was killed by {name}{hint}", {"kind": "signal", "signal": name, "exitcode": exitcode}
    return (
        f"the worker process exited with code {exitcode} before the run finished (os._exit or a fatal error)",
        {"kind": "exit-code", "exitcode": exitcode},
    )


class RunExecutor(abc.ABC):
    """Executes jobs; :meth:`outcomes` yields one :class:`RunOutcome` per submitted job."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    @abc.abstractmethod
    def submit(self, spec: Job) -> None:
        """Queue one job (also while :meth:`outcomes` is being iterated)."""

    @abc.abstractmethod
    def outcomes(self) -> Iterator[RunOutcome]:
        """Yield outcomes as jobs finish, until every submitted job has one."""

    def close(self) -> None:
        """Stop every worker (runs still executing are abandoned; their checkpoints stay)."""

    def __enter__(self) -> "RunExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def record_death(self, spec: Job, exitcode: int | None) -> RunOutcome:
        """Record a job whose process died (:meth:`Job.died`), report it, and return its outcome."""
        message, failure = describe_exit(exitcode)
        return self.job_died(spec, f"WorkerDied: {message}", failure)

    def job_died(self, spec: Job, error: str, failure: dict[str, Any]) -> RunOutcome:
        """The outcome of a job that could not finish: :meth:`Job.died` records it."""
        result = spec.died(error, failure)
        self.sink(("done", spec.key, "failed", f"[red]{error}[/]"))
        return RunOutcome(spec, result.get("status", "failed"), result.get("error", error), failure, result)


class InlineExecutor(RunExecutor):
    """Runs in the driver's own process, one after another."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self._queue: collections.deque[Job] = collections.deque()

    def submit(self, spec: Job) -> None:
        self._queue.append(spec)

    def outcomes(self) -> Iterator[RunOutcome]:
        while self._queue:
            spec = self._queue.popleft()
            res = spec.run(self.sink)
            yield RunOutcome(spec, res["status"], res.get("error"), res.get("failure"), res)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when its parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _worker_main(conn: Any) -> None:
    """A worker process: execute the jobs the driver sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _die_with_parent()

    def sink(event: tuple) -> None:
        try:
            conn.send(("event", event))
        except (BrokenPipeError, EOFError, OSError):
            os._exit(70)  # the driver is gone: abandon the run, write nothing (checkpoints stay)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        spec, environ, cwd = message
        # the forkserver froze the environment and folder of its start: use the driver's now
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        try:
            res = spec.run(sink)
        except BaseException:  # a job records its own failures; this is a harness bug
            res = {"status": "failed", "error": traceback.format_exc()}
        conn.send(("result", res))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.spec: Job | None = None


class ProcessExecutor(RunExecutor):
    """``jobs`` local worker processes; a dead one is replaced and its run recorded as failed."""

    def __init__(self, sink: Sink, jobs: int, preload: tuple[str, ...] = ()) -> None:
        super().__init__(sink)
        self.jobs = max(1, int(jobs))
        self._ctx = worker_context(preload)
        self._pending: collections.deque[Job] = collections.deque()
        self._workers: list[_Worker] = []
        self.replaced = 0  # dead workers replaced (for the record)

    def submit(self, spec: Job) -> None:
        self._pending.append(spec)

    def _dispatch(self) -> None:
        for w in [w for w in self._workers if w.spec is None and not w.process.is_alive()]:
            self._workers.remove(w)  # an idle worker that died (nothing to record)
            w.conn.close()
        while self._pending:
            idle = next((w for w in self._workers if w.spec is None), None)
            if idle is None:
                if len(self._workers) >= self.jobs:
                    return
                idle = _Worker(self._ctx)
                self._workers.append(idle)
            idle.spec = self._pending.popleft()
            idle.conn.send((idle.spec, dict(os.environ), os.getcwd()))

    def _receive(self, w: _Worker) -> RunOutcome | None:
        """Handle every message waiting on ``w``'s pipe; the run's outcome if it finished."""
        outcome = None
        while w.conn.poll():
            kind, payload = w.conn.recv()
            if kind == "event":
                self.sink(payload)
            elif kind == "result" and w.spec is not None:
                outcome = RunOutcome(w.spec, payload["status"], payload.get("error"), payload.get("failure"), payload)
                w.spec = None
        return outcome

    def outcomes(self) -> Iterator[RunOutcome]:
        self._dispatch()
        while any(w.spec is not None for w in self._workers):
            busy = [w for w in self._workers if w.spec is not None]
            ready = set(wait([x for w in busy for x in (w.conn, w.process.sentinel)], timeout=0.5))
            for w in busy:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                try:
                    outcome = self._receive(w)
                except (EOFError, OSError):
                    outcome = None
                    w.process.join(timeout=5)
                if outcome is not None:
                    yield outcome
                    continue
                if not w.process.is_alive():
                    w.process.join()
                    spec, w.spec = w.spec, None
                    self._workers.remove(w)
                    w.conn.close()
                    if spec is not None:
                        self.replaced += 1
                        yield self.record_death(spec, w.process.exitcode)
            self._dispatch()

    def close(self) -> None:
        for w in self._workers:
            try:
                if w.spec is None and w.process.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.process.join(timeout=5 if w.spec is None else 0)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=5)
            w.conn.close()
        self._workers = []


def worker_context(preload: tuple[str, ...] = ()) -> Any:
    """``forkserver`` (preloading torch, the run module and ``preload``) where available, else ``spawn``.

    The forkserver is started once per driver process, with the preload list of its first use.
    """
    try:
        ctx = mp.get_context("forkserver")
    except ValueError:  # pragma: no cover - Windows
        return mp.get_context("spawn")
    ctx.set_forkserver_preload(["torch", "metarec.bench.run", "metarec.bench.executor", *preload])
    return ctx


def make_executor(kind: str, sink: Sink, jobs: int, preload: tuple[str, ...] = (), **ray_options: Any) -> RunExecutor:
    """The executor named by the bench setting ``executor`` (``local`` is ``process``).

    ``ray_options`` (``address``, ``cpus_per_run``, ``gpus_per_run``, ``retries``) configure
    :class:`metarec.bench.ray_executor.RayExecutor`; other executors ignore them. ``preload``:
    modules the local workers import before their first job (``metarec tune``: Optuna).
    """
    if kind == "inline":
        return InlineExecutor(sink)
    if kind in ("process", "local"):
        return ProcessExecutor(sink, jobs, preload)
    if kind == "ray":
        from metarec.bench.ray_executor import RayExecutor

        return RayExecutor(sink, jobs=jobs, preload=preload, **ray_options)
    raise ValueError(f"unknown executor {kind!r}; use 'process' (alias 'local'), 'inline' or 'ray'")


__all__ = ["InlineExecutor", "Job", "ProcessExecutor", "RunExecutor", "RunOutcome", "describe_exit", "make_executor"]
