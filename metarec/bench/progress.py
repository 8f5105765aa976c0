"""Live progress of a benchmark: one bar per running (method, seed), one for the whole bench.

Runs report through plain event tuples sent to a *sink* (a function in-process, a queue's
``put`` from worker processes), so the same :class:`ProgressCallback` drives the display
whether runs execute sequentially or in parallel:

* ``("phase", key, text)`` -- the run is loading data, predicting, ...
* ``("fit", key, total_batches, epochs_left, first_epoch)`` -- training starts
* ``("advance", key, n_batches)`` -- batches done since the last event
* ``("epoch", key, epoch, epochs_total, loss)`` -- an epoch finished
* ``("predict_start", key, n_users)`` / ``("predict", key, users_done)`` -- predicting the test users
* ``("note", key, text)`` -- something the user should know (a damaged checkpoint replaced, ...)
* ``("done", key, status, summary)`` -- the run finished (``status`` ok / failed)

Every finished run prints one line (also without the live display: ``--no-progress`` or
output that is not a terminal), and so does every note.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from metarec.learner import Callback

Sink = Callable[[tuple], None]


class ProgressCallback(Callback):
    """Forwards training progress of one run to a sink (batched to a few events per second)."""

    def __init__(self, sink: Sink, key: str, min_interval: float = 0.2) -> None:
        self.sink = sink
        self.key = key
        self.min_interval = min_interval
        self._pending = 0
        self._last = 0.0
        self._epochs_total = 0

    def on_fit_start(self, learner: Any, *, epochs: int, batches_per_epoch: int) -> None:
        done = int(getattr(learner, "epochs_done", 0))
        self._epochs_total = done + epochs
        self.sink(("fit", self.key, epochs * batches_per_epoch, epochs, done))

    def on_batch_end(self, learner: Any, *, epoch: int, batch: int, loss: float) -> None:
        self._pending += 1
        now = time.monotonic()
        if now - self._last >= self.min_interval:
            self.sink(("advance", self.key, self._pending))
            self._pending, self._last = 0, now

    def on_epoch_end(self, learner: Any, *, epoch: int, logs: dict[str, float]) -> None:
        if self._pending:
            self.sink(("advance", self.key, self._pending))
            self._pending = 0
        self.sink(("epoch", self.key, epoch + 1, self._epochs_total, float(logs.get("loss", float("nan")))))

    def on_fit_end(self, learner: Any) -> None:
        if self._pending:
            self.sink(("advance", self.key, self._pending))
            self._pending = 0


class BenchProgress:
    """The rich display; feed it events with :meth:`handle`. A no-op display when disabled."""

    def __init__(self, total_runs: int, *, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.overall = self.progress.add_task("[bold]benchmark runs", total=total_runs)
        self.tasks: dict[str, Any] = {}
        self.labels: dict[str, str] = {}

    def __enter__(self) -> "BenchProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _task(self, key: str) -> Any:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(self._label(key), total=None)
        return self.tasks[key]

    def handle(self, event: tuple) -> None:
        """Update the display for one event (see the module docstring for the kinds)."""
        kind, key = event[0], event[1]
        if kind == "phase":
            self.progress.update(self._task(key), description=f"{self._label(key)} · {event[2]}")
        elif kind == "fit":
            _, _, total, epochs_left, first = event
            task = self._task(key)
            self.progress.reset(task, total=max(int(total), 1) if total else None)
            if not total:
                self.progress.update(task, description=f"{self._label(key)} · fitting")
            else:
                self.progress.update(
                    task, description=f"{self._label(key)} · epoch {first + 1}/{first + epochs_left}"
                )
        elif kind == "predict_start":
            task = self._task(key)
            self.progress.reset(task, total=max(int(event[2]), 1))
            self.progress.update(task, description=f"{self._label(key)} · predicting test users")
        elif kind == "predict":
            self.progress.update(self._task(key), completed=int(event[2]))
        elif kind == "note":
            self.console.print(f"[yellow]note[/] {self._label(key)}: {event[2]}")
        elif kind == "advance":
            self.progress.advance(self._task(key), event[2])
        elif kind == "epoch":
            _, _, epoch, total, loss = event
            nxt = f"epoch {min(epoch + 1, total)}/{total}"
            self.progress.update(self._task(key), description=f"{self._label(key)} · {nxt} · loss {loss:.4f}")
        elif kind == "done":
            _, _, status, summary = event
            label = self._label(key)
            if key in self.tasks:
                self.progress.remove_task(self.tasks.pop(key))
            self.progress.advance(self.overall, 1)
            mark = "[green]✓[/]" if status == "ok" else "[red]✗[/]"
            self.console.print(f"{mark} {label}: {summary}")

    def _label(self, key: str) -> str:
        if key not in self.labels:
            method, _, seed = key.partition("__seed")
            self.labels[key] = f"{method} · seed {seed}"
        return self.labels[key]


__all__ = ["BenchProgress", "ProgressCallback", "Sink"]
