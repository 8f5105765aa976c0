"""Run a tune: check every method first, then run the studies' trials through a bench executor.

The driver asks every trial (so it alone counts the budget, and one seeded sampler per study
draws every setting), hands it to the executor that ``metarec bench`` uses -- in its own process
for ``--jobs 1``, local worker processes for ``--jobs N``, Ray tasks for ``--executor ray`` --
and keeps ``--jobs`` trials in flight, moving on to the next method's study when a method's
budget is all asked. Trials tell the study themselves (:mod:`metarec.tuning.trial`); the driver
alone writes the folder's files (timings, summaries).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from metarec.bench.config import RESULT_FIELDS, differences
from metarec.bench.results import read_json, write_json
from metarec.tuning import outputs
from metarec.tuning.study import (
    TUNE_FORMAT,
    TuneConfig,
    TuneError,
    counted,
    create_study,
    effective_space,
    fixed_values,
    load_tuning_split,
    open_storage,
    recover_interrupted,
    require_optuna,
)
from metarec.tuning.trial import StorageProxy, TrialJob, study_storage

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
    if cfg.bench.executor == "ray":  # not installed: one line now, before the output folder is claimed
        from metarec.bench.ray_executor import import_ray, is_local

        import_ray(local=is_local(cfg.bench.ray_address))
        try:
            import grpc  # noqa: F401  (Optuna's storage proxy)
        except ImportError:
            raise TuneError("tuning over Ray needs grpcio for Optuna's storage proxy: pip install 'metarec[ray]'") from None
    tune_json = out / "tune.json"
    if resume:
        if not tune_json.exists():
            raise TuneError(f"--resume: {out} holds no tune.json; it is not a metarec tune folder")
        saved = read_json(tune_json)
        cfg = _check_resume(saved, cfg, out)
    elif tune_json.exists() or (out / "optuna.log").exists():
        raise TuneError(f"{out} already holds a tune; pass --resume to continue it or choose another --out")
    spaces = {m: effective_space(get_learner(m), cfg, m) for m in cfg.bench.methods}
    targets = learner_targets(cfg)

    split = load_tuning_split(cfg)  # a wrong data folder fails now, before the folder is claimed
    info = split.info
    pool = {k: info.get(k) for k in ("tuning_users", "tuning_users_warm", "tuning_users_cold", "query_scenarios_tuning",
                                     "train_users", "test_users", "users_kept")}
    pool["split_seed"] = cfg.split_seed
    jobs = max(1, cfg.bench.jobs)
    threads = cfg.bench.threads or max(1, (os.cpu_count() or 1) // jobs)
    # One driver per folder: a second `--resume` while this one runs would mark its running trials
    # interrupted and finish them under it (Optuna then refuses the first driver's updates).
    from metarec.bench.rundir import OutDirLock

    with OutDirLock(out, what="metarec tune"):  # creates the folder
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
                    console.print(f"{m}: {_interrupted_note(lost)}")
            budgets[m] = cfg.budget(m)
            done[m] = counted(study.get_trials(deepcopy=False))
        todo = [m for m in cfg.bench.methods if done[m] < budgets[m]]
        if resume:
            console.print(f"resuming {out}: {sum(min(done[m], budgets[m]) for m in budgets)} trial(s) kept, "
                          f"{sum(budgets[m] - done[m] for m in todo)} to run")

        with TuneProgress(budgets, done, console=console, enabled=cfg.bench.progress) as progress:
            _run_trials(cfg, out, todo, budgets, spaces, targets, jobs, threads, progress, console)
        for m in todo:  # every worker has stopped: a trial still marked running lost its worker
            lost = recover_interrupted(create_study(cfg, m, out, spaces[m]))
            if lost:
                console.print(f"[red]{m}: trial(s) {', '.join(f'#{n}' for n in lost)} lost their worker[/]; "
                              f"metarec tune --resume --out {out} runs them again")

        invocations.append({"wall_time_s": round(time.perf_counter() - t_start, 1), "resumed": resume, "jobs": jobs,
                            "threads_per_trial": threads, "executor": executor_kind(cfg), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        tune["invocations"] = invocations
        tune["wall_time_s"] = round(sum(i["wall_time_s"] for i in invocations), 1)
        write_json(tune_json, tune)
        return rebuild_outputs(out, console)


def executor_kind(cfg: TuneConfig) -> str:
    """``inline`` for the local executor with one job (the trial runs in the driver, as always),
    else the bench setting (``process`` = local worker processes, ``ray``)."""
    kind = "process" if cfg.bench.executor == "local" else cfg.bench.executor
    return "inline" if kind == "process" and cfg.bench.jobs <= 1 else kind


def _proxy_host(cfg: TuneConfig, ray: Any) -> str:
    """Where the storage proxy listens: ``storage_host``, else loopback for a cluster on this
    machine, else the driver's address in the cluster (what every node reaches it by)."""
    if cfg.storage_host:
        return cfg.storage_host
    from metarec.bench.ray_executor import is_local

    if is_local(cfg.bench.ray_address):
        return "127.0.0.1"
    try:
        node = ray._private.worker.global_worker.node_ip_address  # the driver's node, as the cluster knows it
    except Exception:  # pragma: no cover - a Ray version without it
        node = None
    if not node:
        raise TuneError("cannot tell the driver's address in the Ray cluster: pass --storage-host HOST, "
                        "an address of this machine that every node reaches")
    return "127.0.0.1" if node == "localhost" else node


def learner_targets(cfg: TuneConfig) -> dict[str, str | None]:
    """The ``module:attr`` each worker imports per method (None inline: the driver's own registry);
    a learner that a worker process cannot import is refused now, in one line."""
    from metarec.bench.runner import BenchError, _spec_target
    from metarec.registry import learner_entries

    kind = executor_kind(cfg)
    if kind == "inline":
        return {m: None for m in cfg.bench.methods}
    entries = learner_entries()
    try:
        return {m: _spec_target(m, entries[m], kind, work="trials") for m in cfg.bench.methods}
    except BenchError as exc:
        raise TuneError(str(exc)) from None


def _interrupted_note(lost: Mapping[int, bool]) -> str:
    """What ``--resume`` did with the trials a stopped tune left running."""
    def names(ns: list[int]) -> str:
        return ", ".join(f"#{n}" for n in ns)

    queued = [n for n, q in lost.items() if q]
    note = f"trial(s) {names(list(lost))} were interrupted"
    if queued:
        note += f"; the settings of {names(queued)} run again"
    if len(queued) < len(lost):
        note += f"; {names([n for n, q in lost.items() if not q])} repeated settings already scored or queued, not run again"
    return note


def _run_trials(cfg: TuneConfig, out: Path, todo: Sequence[str], budgets: Mapping[str, int],
                spaces: Mapping[str, Any], targets: Mapping[str, str | None], jobs: int, threads: int,
                progress: TuneProgress, console: Any) -> None:
    """Ask, dispatch and record trials until every method in ``todo`` has its budget (or timeout)."""
    from metarec.bench.executor import make_executor
    from metarec.bench.results import write_json
    from metarec.bench.runner import ray_options
    from metarec.tuning.space import suggest
    from metarec.tuning.study import make_pruner, make_sampler

    optuna = require_optuna()
    if not todo:
        return
    kind = executor_kind(cfg)
    storage = study_storage(out)  # one journal instance: the driver's asks and the proxy's calls share it
    studies = {}
    for m in todo:
        study = optuna.load_study(study_name=m, storage=storage, pruner=make_pruner(cfg))
        study.sampler = make_sampler(cfg, m, 0, resumed_at=len(study.get_trials(deepcopy=False)))
        studies[m] = study
    closed: set[str] = set()
    started: dict[str, float] = {}
    free = list(range(jobs))
    timing_logs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    config = cfg.to_dict()
    proxy: StorageProxy | None = None

    def next_job(proxy_address: str | None) -> TrialJob | None:
        for m in todo:
            if m in closed:
                continue
            study = studies[m]
            if counted(study.get_trials(deepcopy=False)) >= budgets[m]:
                closed.add(m)
                continue
            now = time.perf_counter()
            if cfg.timeout is not None and m in started and now - started[m] > cfg.timeout:
                progress.handle(("note", m, f"timeout of {cfg.timeout:g} s reached"))
                closed.add(m)
                continue
            started.setdefault(m, now)
            t0 = time.perf_counter()
            trial = study.ask()
            t1 = time.perf_counter()
            suggest(trial, spaces[m])  # the study's one sampler draws the settings, here
            t2 = time.perf_counter()
            return TrialJob(m, str(out), config, trial._trial_id, trial.number, free.pop(0), threads,
                            proxy=proxy_address, attempt=int(trial.user_attrs.get("attempt", 0)),
                            retries=cfg.bench.retries, ask_s=t1 - t0, suggest_s=t2 - t1, learner_target=targets[m])
        return None

    with make_executor(kind, progress.handle, jobs, preload=("optuna", "metarec.tuning.trial"),
                       **ray_options(cfg.bench)) as executor:
        try:
            if kind == "ray":
                executor.ensure_connected(threads, warm=True)
                proxy = StorageProxy(out, _proxy_host(cfg, executor.ray), cfg.storage_port)
                console.print(f"trials reach the study through Optuna's storage proxy on {proxy.address}")

            def fill() -> None:
                while free:
                    job = next_job(proxy.address if proxy else None)
                    if job is None:
                        return
                    progress.handle(("start", job.method, job.number))
                    executor.submit(job)

            fill()
            for outcome in executor.outcomes():
                job, res = outcome.spec, outcome.result or {}
                free.append(job.slot)
                free.sort()
                if res.get("timing"):
                    path = out / job.method / f"timing-worker{job.slot}.json"
                    if (job.method, job.slot) not in timing_logs:  # a resumed tune keeps the earlier timings
                        timing_logs[(job.method, job.slot)] = read_json(path).get("trials", []) if path.exists() else []
                    log = timing_logs[(job.method, job.slot)]
                    log.append(res["timing"])
                    write_json(path, {"method": job.method, "worker": job.slot, "trials": log})
                if res.get("interrupted"):
                    console.print(f"[red]{job.method} #{job.number} lost its worker[/]: {res.get('error')}; "
                                  "its settings run again")
                try:
                    best = studies[job.method].best_trial
                    best_txt = (best.number, best.value)
                except ValueError:
                    best_txt = None
                progress.handle(("trial", job.method, job.number, res.get("state", "FAIL"), res.get("value"), best_txt,
                                 float(res.get("trial_s") or 0.0), res.get("error")))
                fill()
        finally:
            if proxy is not None:
                proxy.close()


__all__ = ["TuneProgress", "rebuild_outputs", "run_tune"]
