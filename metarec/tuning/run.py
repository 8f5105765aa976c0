"""Run a tune: check every method first, then run the studies (in-process or in spawned workers).

The driver alone writes the folder's summary files; workers write only to the journal and to
their own timing files. Workers are started with the ``spawn`` method, exactly like
``metarec bench --jobs``: ``--jobs N`` runs N workers per method, all sharing the method's study.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from metarec.bench.config import RESULT_FIELDS, BenchConfig, differences
from metarec.bench.results import read_json, write_json
from metarec.tuning import outputs
from metarec.tuning.study import (
    TUNE_FORMAT,
    TuneConfig,
    TuneError,
    WorkerSpec,
    _worker_entry,
    counted,
    create_study,
    effective_space,
    fixed_values,
    load_tuning_split,
    open_storage,
    recover_interrupted,
    require_optuna,
    run_worker,
)

#: Tune settings a resumed tune must keep (the budget, timeout and jobs may change).
TUNE_RESULT_FIELDS = ("metric", "seed", "split_seed", "pruner", "startup_trials")


class TuneProgress:
    """One bar per method (trials done of its budget, best so far) and one line per finished trial."""

    def __init__(self, budgets: Mapping[str, int], done: Mapping[str, int], *, console: Any, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, disable=not enabled)
        self.tasks = {m: self.progress.add_task(m, total=b, completed=min(done.get(m, 0), b)) for m, b in budgets.items()}
        self.best: dict[str, str] = {}
        self.running: dict[str, set[int]] = {m: set() for m in budgets}

    def __enter__(self) -> "TuneProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def _describe(self, method: str, extra: str = "") -> None:
        running = self.running[method]
        parts = [method]
        if method in self.best:
            parts.append(f"best {self.best[method]}")
        if running:
            parts.append(f"running #{', #'.join(map(str, sorted(running)))}")
        if extra:
            parts.append(extra)
        self.progress.update(self.tasks[method], description=" · ".join(parts))

    def handle(self, event: tuple) -> None:
        """Update the display for one worker event."""
        kind, method = event[0], event[1]
        if method not in self.tasks:
            return
        if kind == "start":
            self.running[method].add(event[2])
            self._describe(method)
        elif kind in ("phase", "note"):
            self._describe(method, event[2])
        elif kind == "trial":
            _, _, number, state, value, best, secs, error = event
            self.running[method].discard(number)
            if best is not None:
                self.best[method] = f"{best[1]:.4f} (#{best[0]})"
            self.progress.advance(self.tasks[method], 1)
            self._describe(method)
            mark = {"COMPLETE": "[green]✓[/]", "PRUNED": "[yellow]✂[/]"}.get(state, "[red]✗[/]")
            what = f"{value:.4f}" if value is not None else (error or state.lower())
            self.console.print(f"{mark} {method} #{number} {state.lower()}: {what} ({secs:.1f} s)"
                               + (f" · best {self.best[method]}" if method in self.best else ""))


def _check_resume(saved: Mapping[str, Any], cfg: TuneConfig, out: Path) -> TuneConfig:
    if saved.get("format") != TUNE_FORMAT:
        raise TuneError(f"{out / 'tune.json'}: unknown format {saved.get('format')!r}")
    old = TuneConfig.from_dict(saved["config"])
    diff = differences(old.bench, cfg.bench, [f for f in RESULT_FIELDS if f != "method_settings"])
    diff += [f"{f}: {getattr(old, f)!r} -> {getattr(cfg, f)!r}" for f in TUNE_RESULT_FIELDS if getattr(old, f) != getattr(cfg, f)]
    for m in old.bench.methods:
        if m in cfg.bench.methods:
            a, b = dataclasses.asdict(old.bench.settings_for(m)), dataclasses.asdict(cfg.bench.settings_for(m))
            if a != b:
                diff.append(f"settings of {m}: {a} -> {b}")
    if diff:
        raise TuneError(f"--resume: these settings differ from the tune in {out}: " + "; ".join(diff)
                        + ". Resume with the same settings, or start a new --out folder.")
    methods = (*old.bench.methods, *[m for m in cfg.bench.methods if m not in old.bench.methods])
    return dataclasses.replace(cfg, bench=dataclasses.replace(cfg.bench, methods=tuple(methods)))


def rebuild_outputs(out: str | Path, console: Any = None) -> list[dict[str, Any]]:
    """Rewrite every per-method file and the summaries of a tune folder from its journal."""
    optuna = require_optuna()
    from metarec.registry import get_learner

    out = Path(out)
    tune = read_json(out / "tune.json")
    cfg = TuneConfig.from_dict(tune["config"])
    storage = open_storage(out)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    rows = []
    for method in cfg.bench.methods:
        if method not in names:
            continue
        study = optuna.load_study(study_name=method, storage=storage)
        space = study.user_attrs.get("search_space") or {}
        cls = get_learner(method)
        rows.append(outputs.write_method_outputs(study, tune, method, space, fixed_values(cfg, method, cls),
                                                 cfg.bench.settings_for(method).preset, out))
    outputs.write_summary(rows, tune, out)
    return rows


def run_tune(cfg: TuneConfig, *, out: str | Path, resume: bool = False, console: Any = None,
             command: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Tune every method of ``cfg`` to its budget; returns the summary rows (also in ``<out>/summary.json``)."""
    from rich.console import Console

    from metarec.bench.runner import BenchError, check_methods
    from metarec.registry import get_learner
    from metarec.runtime import resolve_device

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = console or Console(stderr=True)
    out = Path(out)
    t_start = time.perf_counter()
    try:
        resolve_device(cfg.bench.device)
    except (RuntimeError, ValueError) as exc:
        raise TuneError(str(exc)) from None
    try:
        broken = check_methods(cfg.bench)
    except BenchError as exc:
        raise TuneError(str(exc)) from None
    if broken:
        first = {m: e.split("\n", 1)[0] for m, e in broken.items()}
        raise TuneError("cannot tune a learner that fails to import: " + "; ".join(f"{m}: {e}" for m, e in first.items()))
    tune_json = out / "tune.json"
    if resume:
        if not tune_json.exists():
            raise TuneError(f"--resume: {out} holds no tune.json; it is not a metarec tune folder")
        saved = read_json(tune_json)
        cfg = _check_resume(saved, cfg, out)
    elif tune_json.exists() or (out / "optuna.log").exists():
        raise TuneError(f"{out} already holds a tune; pass --resume to continue it or choose another --out")
    spaces = {m: effective_space(get_learner(m), cfg, m) for m in cfg.bench.methods}

    split = load_tuning_split(cfg)  # a wrong data folder fails now, before the folder is claimed
    info = split.info
    pool = {k: info.get(k) for k in ("tuning_users", "tuning_users_warm", "tuning_users_cold", "query_scenarios_tuning",
                                     "train_users", "test_users", "users_kept")}
    pool["split_seed"] = cfg.split_seed
    jobs = max(1, cfg.bench.jobs)
    threads = cfg.bench.threads or max(1, (os.cpu_count() or 1) // jobs)
    out.mkdir(parents=True, exist_ok=True)
    from metarec.bench.environment import environment_info

    invocations = list(saved.get("invocations", [])) if resume else []
    tune = {
        "format": TUNE_FORMAT,
        "out": str(out),
        "command": list(command) if command else None,
        "config": cfg.to_dict(),
        "pool": pool,
        "dataset": {k: info.get(k) for k in ("dataset", "checksum", "canonical")},
        "threads_per_trial": threads,
        "environment": environment_info(cfg.bench.device),
        "invocations": invocations,
    }
    write_json(tune_json, tune)

    budgets, done = {}, {}
    for m in cfg.bench.methods:
        study = create_study(cfg, m, out, spaces[m])
        if resume:
            lost = recover_interrupted(study)
            if lost:
                console.print(f"{m}: trial(s) {', '.join(f'#{n}' for n in lost)} were interrupted; their settings run again")
        budgets[m] = cfg.budget(m)
        done[m] = counted(study.get_trials(deepcopy=False))
    todo = [m for m in cfg.bench.methods if done[m] < budgets[m]]
    if resume:
        console.print(f"resuming {out}: {sum(min(done[m], budgets[m]) for m in budgets)} trial(s) kept, "
                      f"{sum(budgets[m] - done[m] for m in todo)} to run")

    specs = []
    for m in todo:
        for w in range(min(jobs, budgets[m] - done[m])):
            specs.append(WorkerSpec(m, str(out), cfg.to_dict(), w, threads))
    with TuneProgress(budgets, done, console=console, enabled=cfg.bench.progress) as progress:
        if jobs == 1:
            for spec in specs:
                run_worker(spec, sink=progress.handle)
        else:
            _run_parallel(specs, jobs, progress, console)
    for m in todo:  # every worker has stopped: a trial still marked running lost its worker
        lost = recover_interrupted(create_study(cfg, m, out, spaces[m]))
        if lost:
            console.print(f"[red]{m}: trial(s) {', '.join(f'#{n}' for n in lost)} lost their worker[/]; "
                          f"metarec tune --resume --out {out} runs them again")

    invocations.append({"wall_time_s": round(time.perf_counter() - t_start, 1), "resumed": resume, "jobs": jobs,
                        "threads_per_trial": threads, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    tune["invocations"] = invocations
    tune["wall_time_s"] = round(sum(i["wall_time_s"] for i in invocations), 1)
    write_json(tune_json, tune)
    return rebuild_outputs(out, console)


def _run_parallel(specs: Sequence[WorkerSpec], jobs: int, progress: TuneProgress, console: Any) -> None:
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_worker_entry, spec, queue): spec for spec in specs}
            pending = set(futures)

            def drain() -> None:
                while True:
                    try:
                        progress.handle(queue.get_nowait())
                    except queue_mod.Empty:
                        return

            while pending:
                finished, pending = cf.wait(pending, timeout=0.2)
                drain()
                for fut in finished:
                    spec = futures[fut]
                    try:
                        fut.result()
                    except Exception as exc:  # the worker itself died; its running trial is recovered on --resume
                        console.print(f"[red]worker {spec.worker} of {spec.method} stopped[/]: {type(exc).__name__}: {exc}")
            drain()


__all__ = ["TuneProgress", "rebuild_outputs", "run_tune"]
