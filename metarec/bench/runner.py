"""Run a benchmark: plan the (method, seed) runs, hand them to an executor, aggregate the results.

The jobs are split over modules, one each:

* :mod:`metarec.bench.run` -- one run (train, predict, score, save; private data copies and
  the finite-prediction check);
* :mod:`metarec.bench.executor` -- where runs execute (worker processes that may die without
  taking the benchmark down; a Ray executor implements the same interface);
* :mod:`metarec.bench.rundir` -- the output folder (its lock, resume checks and repairs,
  dropped runs);
* this module -- the plan and the order of those steps.

Because each run's file is written only when it is complete, and training checkpoints are
written atomically too, a benchmark killed at any moment (Ctrl-C, ``kill -9``) resumes with
``--resume``: finished runs are verified and skipped, a run killed mid-training continues from
its last good checkpoint, and the aggregated files are rebuilt from the per-run files.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from metarec.bench.environment import cpu_model, environment_info, git_info  # noqa: F401  (re-exported)
from metarec.bench.executor import make_executor
from metarec.bench.progress import BenchProgress
from metarec.bench.results import RUN_FORMAT, RunDir, build_results, clean_json, write_json
from metarec.bench.run import (  # noqa: F401  (re-exported: the public names of the harness)
    CheckpointCallback,
    data_summary_line,
    PeakMemory,
    RunSpec,
    dataset_info,
    execute_run,
    load_bench_split,
    load_checkpoint,
)
from metarec.bench.rundir import (
    BenchError,
    OutDirLock,
    drop_failed,
    inspect_runs,
    prepare_out_dir,
    read_folder_config,
    remove_orphans,
    write_folder_config,
)
from metarec.bench.config import BenchConfig
from metarec.config import ConfigError, build_config
from metarec.errors import UserError


def default_out_dir() -> Path:
    """``runs/<timestamp>`` under the current folder."""
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_methods(cfg: BenchConfig) -> dict[str, str]:
    """Fail early on unknown names, clashes and bad settings; ``{method: import error}`` of broken plugins."""
    return resolve_methods(cfg)[0]


def resolve_methods(cfg: BenchConfig) -> tuple[dict[str, str], dict[str, Any]]:
    """Fail early on unknown names, clashes and bad settings.

    Returns ``({method: import error}, {method: registry entry})``: broken plugins become failed
    runs (the others go on); the entries say which class and distribution each method is.
    """
    import difflib

    from metarec.registry import LearnerImportError, UnknownLearnerError, learner_entries

    known = learner_entries()
    for name in cfg.method_settings:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BenchError(f"settings given for unknown method {name!r}{did}; known methods: {', '.join(known)}")
    broken: dict[str, str] = {}
    entries: dict[str, Any] = {}
    for name in cfg.methods:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            raise BenchError(f"unknown learner {name!r}.{did} Known learners: {', '.join(known)}")
        entry = known[name]
        try:
            cls = entry.load()  # a clash raises LearnerClashError (a UserError) here
        except UnknownLearnerError as exc:  # pragma: no cover - names checked above
            raise BenchError(str(exc)) from None
        except LearnerImportError as exc:
            cause = exc.__cause__ or exc
            broken[name] = f"{exc}\n\n" + "".join(traceback.format_exception(cause))
            continue
        if getattr(cls, "protocol", "user-cold") != "user-cold":
            raise BenchError(f"learner {name!r} follows the {cls.protocol} protocol, not user-cold; "
                             f"run it with metarec bench --protocol {cls.protocol}")
        entries[name] = entry
        settings = cfg.settings_for(name)
        if settings.preset is not None and settings.preset not in getattr(cls, "presets", {}):
            presets = getattr(cls, "presets", {}) or {}
            hint = difflib.get_close_matches(settings.preset, presets, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BenchError(f"{name}: unknown preset {settings.preset!r}{did}; known presets: "
                             f"{', '.join(presets) or '(none)'}")
        base = cls.presets.get(settings.preset, {}) if settings.preset else {}
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        try:
            build_config(cls.Config, base, cfg.learner_overrides(name, fields), where=f"{name} config")
        except ConfigError as exc:
            raise BenchError(str(exc)) from None
        except (TypeError, ValueError) as exc:  # a Config's own __post_init__ check
            raise BenchError(f"{name} config: {exc}") from None
    return broken, entries


def _spec_target(name: str, entry: Any, executor: str, *, work: str = "runs") -> str:
    """The ``module:attr`` a worker imports for ``name`` (refused when a worker cannot import it);
    ``work`` names what executes in the workers (bench runs, tune trials)."""
    module, _, attr = entry.target.partition(":")
    if executor != "inline" and (module in ("__main__", "__mp_main__") or "<locals>" in attr):
        raise BenchError(
            f"learner {name!r} is defined in {'__main__' if module.endswith('main__') else 'a function'} "
            f"({entry.target}); {work} execute in worker processes, which cannot import it: define it at module "
            "level of an importable module, or set executor = \"inline\" (--set executor=inline)"
        )
    return entry.target


def _write_failed_import(rd: RunDir, method: str, seed: int, error: str) -> None:
    first = error.split("\n", 1)[0]
    write_json(
        rd.run_json(method, seed),
        {"format": RUN_FORMAT, "method": method, "seed": seed, "status": "failed", "error": first,
         "failure": {"kind": "import"}, "traceback": error, "timings": {}},
    )


def data_flags(info: dict[str, Any]) -> list[str]:
    """Console lines that flag data which is not the canonical release."""
    lines = []
    if info.get("canonical") is False:
        files = info.get("non_canonical_files") or {}
        names = ", ".join(files) or "some files"
        lines.append(f"[yellow]non-canonical data[/]: {names} differ from the official release; every result "
                     "of this benchmark is flagged non-canonical")
    elif info.get("canonical") is None and info.get("name") not in ("synthetic", None):
        lines.append("[yellow]unverified data[/]: no published checksum to compare the files with")
    if info.get("unverified"):
        lines.append(f"[yellow]unverified download[/]: {info['unverified']}")
    return lines


def run_bench(
    cfg: BenchConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    drop_failed_runs: bool = False,
    console: Any = None,
    command: Sequence[str] | None = None,
    render: Callable[[dict, Path], None] | None = None,
) -> dict[str, Any]:
    """Run every (method, seed) of ``cfg`` not finished yet and rebuild the results files.

    Returns the results dict (also written to ``<out>/results.json``). ``render`` (default:
    :func:`metarec.bench.report.write_reports`) writes the tables and the plot.
    ``drop_failed_runs`` (``--drop-failed``, with ``resume``) removes failed runs from the
    benchmark instead of re-attempting them.
    """
    from rich.console import Console

    from metarec.runtime import resolve_device

    console = console or Console(stderr=True)
    out = Path(out or cfg.out or default_out_dir())
    cfg = dataclasses.replace(cfg, out=str(out))
    t_bench = time.perf_counter()
    if drop_failed_runs and not resume:
        raise BenchError("--drop-failed only applies to --resume (it drops the failed runs of an earlier invocation)")
    try:
        resolve_device(cfg.device)  # --device cuda without CUDA: one error now, not one per run
    except (RuntimeError, ValueError) as exc:
        raise BenchError(str(exc)) from None
    if cfg.executor == "ray":
        from metarec.bench.ray_executor import import_ray, is_local

        import_ray(local=is_local(cfg.ray_address))  # not installed: one line now, before the output folder is claimed
    if resume:
        cfg, _ = prepare_out_dir(cfg, out, resume=True)  # settings refused before any data is read
    broken, entries = resolve_methods(cfg)
    targets = {m: _spec_target(m, e, cfg.executor) for m, e in entries.items()}
    early = None
    try:
        if cfg.executor == "ray":  # Ray starts (and its workers import torch) while the data loads
            early = make_executor("ray", lambda event: None, cfg.jobs, **ray_options(cfg))
        return _run_planned(cfg, out, resume, drop_failed_runs, console, command, render, broken, entries, targets,
                            t_bench, early)
    finally:
        if early is not None:
            early.close()


def ray_options(cfg: BenchConfig) -> dict[str, Any]:
    """The bench settings that configure :class:`~metarec.bench.ray_executor.RayExecutor`."""
    return {"address": cfg.ray_address, "cpus_per_run": cfg.cpus_per_run, "gpus_per_run": cfg.gpus_per_run,
            "retries": cfg.retries}


def load_first_split(cfg: BenchConfig, early: Any = None) -> Any:
    """The first seed's split; with a Ray executor, loaded in a thread while Ray starts and warms
    its workers in this (the main) thread -- Ray's processes must be started from the main thread."""
    if early is None:
        return load_bench_split(cfg, cfg.seeds[0])
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(1, thread_name_prefix="metarec-data") as pool:
        loading = pool.submit(load_bench_split, cfg, cfg.seeds[0])
        try:
            early.ensure_connected(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.jobs)), warm=True)
        except BaseException:
            loading.cancel()
            raise
        return loading.result()


def _run_planned(cfg: BenchConfig, out: Path, resume: bool, drop_failed_runs: bool, console: Any,
                 command: Sequence[str] | None, render: Callable[[dict, Path], None] | None, broken: dict,
                 entries: dict, targets: dict, t_bench: float, early: Any) -> dict[str, Any]:
    # Load the first split here: a wrong data folder fails now, with one clear error, and
    # before the output folder is claimed.
    first_split = load_first_split(cfg, early)
    data_info = dataset_info(first_split)
    rd = RunDir(out)
    with OutDirLock(out):
        cfg, dropped = prepare_out_dir(cfg, out, resume)  # again, under the lock
        saved_checksum = read_folder_config(rd).get("data_checksum") if resume else None
        for path in remove_orphans(out):
            console.print(f"removed an orphaned temporary file: {path}")
        dropped_keys = {(d["method"], int(d["seed"])) for d in dropped}
        inventory = inspect_runs(rd, cfg, data_checksum=data_info.get("checksum"), saved_checksum=saved_checksum,
                                 dropped=dropped_keys) if resume else None
        if inventory is not None:
            for line in inventory.repairs:
                console.print(f"[yellow]repair[/]: {line}")
            if drop_failed_runs and inventory.failed:
                newly = drop_failed(rd, inventory.failed)
                for d in newly:
                    console.print(f"dropped failed run {d['method']} seed {d['seed']}: {d['error']}")
                dropped = [*dropped, *newly]
                dropped_keys |= {(d["method"], int(d["seed"])) for d in newly}
        write_folder_config(rd, cfg, data_checksum=data_info.get("checksum"), dropped=dropped)
        # once every refusal is behind us: a refusal stays one line
        console.print(data_summary_line(first_split.info), soft_wrap=True, markup=False)
        for line in data_flags(data_info):
            console.print(line)

        plan: list[tuple[str, int]] = []
        for seed in cfg.seeds:  # seed-major: every method of a seed shares the (cached) split
            for m in cfg.methods:
                if (m, seed) in dropped_keys or (inventory is not None and (m, seed) in inventory.keep):
                    continue
                plan.append((m, seed))
        for m, s in plan:
            if m in broken:
                _write_failed_import(rd, m, s, broken[m])
        todo = [(m, s) for m, s in plan if m not in broken]
        total = len(cfg.methods) * len(cfg.seeds)
        if resume:
            retried = sum(1 for k in (inventory.failed if inventory else {}) if k not in dropped_keys)
            console.print(f"resuming {out}: {total - len(plan) - len(dropped_keys)} finished run(s) kept, "
                          f"{len(todo)} to run" + (f" ({retried} failed before, re-attempted)" if retried else "")
                          + (f", {len(dropped_keys)} dropped" if dropped_keys else ""))

        jobs = max(1, min(cfg.jobs, len(todo) or 1))
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
        specs = [
            RunSpec(m, s, str(out), cfg.to_dict(), threads, learner_target=targets[m],
                    learner_distribution={"name": entries[m].distribution, "version": entries[m].version})
            for m, s in todo
        ]
        env = environment_info(cfg.device)
        env["jobs"], env["threads_per_run"], env["executor"] = jobs, threads, cfg.executor

        with BenchProgress(len(specs), console=console, enabled=cfg.progress) as progress:
            executor = early if early is not None else make_executor(cfg.executor, progress.handle, jobs,
                                                                    **ray_options(cfg))
            executor.sink = progress.handle
            with executor:
                for spec in specs:
                    executor.submit(spec)
                for _ in executor.outcomes():
                    pass

        console.print("aggregating results (bootstrap intervals, paired tests) ...")
        results = build_results(
            rd, cfg.to_dict(), environment=env, dataset=data_info, wall_time_s=None, command=command,
            dropped=dropped,
        )
        results["wall_time_s"] = time.perf_counter() - t_bench
        results["wall_time_note"] = "this invocation only (resumed)" if resume else "whole benchmark"
        results["runs_time_s"] = sum(float(r.get("timings", {}).get("total_s", 0.0)) for r in results["runs"])
        write_json(rd.results, results)
        results = clean_json(results)  # what the caller gets is what results.json holds (NaN -> null)
        if render is None:
            from metarec.bench.report import write_reports

            render = write_reports
        render(results, out)
    return results


__all__ = [
    "BenchError",
    "CheckpointCallback",
    "RunSpec",
    "UserError",
    "check_methods",
    "environment_info",
    "execute_run",
    "load_bench_split",
    "run_bench",
]
