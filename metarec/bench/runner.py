"""Run a benchmark: every (method, seed) trained, evaluated and saved on its own.

One run = load the seed's split (the seed decides the train/test users), build the learner
under the same seed, ``meta_fit`` on the training users with a checkpoint after every epoch,
predict every test user's query ratings in test-user order, compute the metrics and their
bootstrap intervals, and write ``runs/<method>__seed<k>.json`` (+ its predictions) atomically.

Because each run's file is written only when it is complete, and training checkpoints are
written atomically too, a benchmark killed at any moment (Ctrl-C, ``kill -9``) resumes with
``--resume``: finished runs are skipped, a run killed mid-training continues from its last
epoch, and the aggregated files are rebuilt from the per-run files. A run that raises is
recorded with its traceback; the other runs go on.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from metarec.bench.config import CONFIG_FORMAT, RESULT_FIELDS, BenchConfig, differences, protocol_config
from metarec.bench.environment import cpu_model, environment_info, git_info  # noqa: F401  (re-exported)
from metarec.bench.progress import BenchProgress, ProgressCallback, Sink
from metarec.bench.results import (
    RUN_FORMAT,
    write_text,
    RunDir,
    build_results,
    predictions_csv_text,
    read_json,
    run_key,
    run_metrics,
    write_json,
)
from metarec.checkpoint import load_state, save_state
from metarec.config import ConfigError, build_config, jsonable
from metarec.learner import Callback
from metarec.schema import SCENARIOS


class BenchError(RuntimeError):
    """The benchmark cannot start (bad method name, bad settings, unusable output folder)."""


# ---------------------------------------------------------------------------- memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


class PeakMemory:
    """Peak memory of one run: host RSS (reset per run where Linux allows) and CUDA allocations."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.per_run = False

    def __enter__(self) -> "PeakMemory":
        import torch

        self.per_run = _reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def read(self) -> dict[str, Any]:
        """Peak memory since :meth:`__enter__`, in MiB, with what the RSS figure covers."""
        import torch

        out: dict[str, Any] = {
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "peak_rss_scope": "run" if self.per_run else "process (includes earlier runs in the same process)",
        }
        if self.device.type == "cuda":
            out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out

    def __exit__(self, *exc: Any) -> None:
        pass


# ---------------------------------------------------------------------------- checkpoints


class CheckpointCallback(Callback):
    """Saves ``learner.state_dict()`` after every epoch, so a killed run continues from there.

    Each epoch goes to its own folder and ``latest.json`` (written atomically, last) points to
    the newest complete one, so a kill in the middle of writing leaves the previous checkpoint
    usable; older folders are then removed.
    """

    def __init__(self, directory: Path, *, fit_seconds_before: float = 0.0, history: list | None = None) -> None:
        self.directory = Path(directory)
        self.fit_seconds_before = fit_seconds_before
        self.history = list(history or [])
        self._t0 = time.perf_counter()

    def on_fit_start(self, learner: Any, *, epochs: int, batches_per_epoch: int) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, learner: Any, *, epoch: int, logs: dict[str, float]) -> None:
        self.history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        name = f"epoch-{epoch + 1:05d}"
        save_state(self.directory / name / "state", learner.state_dict())
        elapsed = self.fit_seconds_before + time.perf_counter() - self._t0
        write_json(
            self.directory / "latest.json",
            {"epochs_done": epoch + 1, "path": name, "fit_seconds": elapsed, "history": self.history},
        )
        for old in self.directory.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def fit_seconds(self) -> float:
        """Training time so far, including the time before a resume."""
        return self.fit_seconds_before + time.perf_counter() - self._t0


def load_checkpoint(directory: Path) -> tuple[dict[str, Any], Any] | None:
    """``(latest.json, state)`` of a run's newest complete checkpoint, or None."""
    pointer = Path(directory) / "latest.json"
    if not pointer.exists():
        return None
    meta = read_json(pointer)
    return meta, load_state(Path(directory) / meta["path"] / "state")


# ---------------------------------------------------------------------------- data


_SPLIT_CACHE: dict[tuple, Any] = {}


def load_bench_split(cfg: BenchConfig, seed: int) -> Any:
    """The seed's :class:`~metarec.data.Split` (cached per process: methods share splits)."""
    protocol = protocol_config(cfg)
    key = (cfg.dataset, cfg.data_dir, cfg.dataset_config, repr(protocol), repr(sorted(cfg.synthetic.items())), seed)
    if key in _SPLIT_CACHE:
        return _SPLIT_CACHE[key]
    if cfg.dataset == "synthetic" and cfg.dataset_config is None:
        from metarec.data.protocol import build_split
        from metarec.data.synthetic import make_synthetic

        try:
            data = make_synthetic(**cfg.synthetic)
        except TypeError as exc:
            raise ConfigError(f"bench.synthetic: {exc}") from None
        split = build_split(data, protocol, seed=seed)
    else:
        try:
            from metarec.data import load_split
        except ImportError:
            raise BenchError(
                f"dataset {cfg.dataset!r} needs metarec.data.load_split, which this installation "
                "does not provide; use --dataset synthetic"
            ) from None
        split = load_split(
            cfg.dataset, data_dir=cfg.data_dir, protocol=protocol, seed=seed,
            offline=cfg.offline, use_cache=cfg.use_cache, config_path=cfg.dataset_config,
        )
    # keep only the latest few splits: a bench over many seeds must not hold them all
    if len(_SPLIT_CACHE) >= 4:
        _SPLIT_CACHE.pop(next(iter(_SPLIT_CACHE)))
    _SPLIT_CACHE[key] = split
    return split


def dataset_info(split: Any) -> dict[str, Any]:
    """What results.json says about the data: name, checksum, canonical flag, drops, protocol."""
    info = dict(split.info)
    keep = (
        "title", "non_canonical_files", "data_notes", "notes", "file_status", "data_dir", "loader_options",
        "users_total", "users_kept", "items_in_trimmed_table", "split_time_utc", "paper_counts",
    )
    return {
        "name": info.get("dataset"),
        "checksum": info.get("checksum"),
        "canonical": info.get("canonical"),
        "load_drops": info.get("load_drops", info.get("drops")),
        "protocol": info.get("protocol"),
        **{k: info[k] for k in keep if k in info},
    }


# ---------------------------------------------------------------------------- one run


@dataclass
class RunSpec:
    """Everything a (possibly separate) process needs to execute one run."""

    method: str
    seed: int
    out_dir: str
    config: dict[str, Any]
    threads: int


def _query_rows(split: Any, pred: Any, method: str, seed: int) -> tuple[list[tuple], dict[str, np.ndarray]]:
    """One row per real query rating, in test-user order, and the same data as arrays."""
    test = split.test
    user_ids = test.users.ids[test.user_index.numpy()]
    item_ids = test.items.ids
    mask = test.query_mask.numpy()
    q_items = test.query_items.numpy()
    ratings = test.query_ratings.numpy().astype(np.float64)
    scen = test.query_scenario.numpy()
    p = pred.numpy().astype(np.float64)
    if p.shape != ratings.shape:
        raise ValueError(f"{method}: predict returned shape {list(p.shape)}, expected {list(ratings.shape)}")
    if not np.all(np.isfinite(p[mask])):
        bad = int((~np.isfinite(p[mask])).sum())
        raise ValueError(f"{method}: {bad} predictions are NaN or infinite")
    ii, jj = np.nonzero(mask)  # row-major: test-user order, then query position
    rows = [
        (method, seed, str(user_ids[i]), str(item_ids[q_items[i, j]]), float(ratings[i, j]), float(p[i, j]),
         SCENARIOS[scen[i, j]])
        for i, j in zip(ii, jj)
    ]
    arrays = {
        "user_id": np.asarray([str(user_ids[i]) for i in ii], dtype=object),
        "rating": ratings[ii, jj],
        "prediction": p[ii, jj],
        "scenario": np.asarray([SCENARIOS[c] for c in scen[ii, jj]], dtype=object),
    }
    return rows, arrays


def execute_run(spec: RunSpec, sink: Sink | None = None) -> dict[str, Any]:
    """Train, evaluate and save one (method, seed); never raises for a failure inside the run."""
    import torch

    from metarec.registry import get_learner
    from metarec.runtime import resolve_device, seed_everything

    sink = sink or (lambda event: None)
    cfg = BenchConfig.from_dict(spec.config)
    rd = RunDir(spec.out_dir)
    key = run_key(spec.method, spec.seed)
    settings = cfg.settings_for(spec.method)
    record: dict[str, Any] = {
        "format": RUN_FORMAT,
        "method": spec.method,
        "seed": spec.seed,
        "status": "running",
        "preset": settings.preset,
        "threads": spec.threads,
        # a resumed benchmark mixes runs of different invocations: each run names its own code
        "git": git_info(),
    }
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        torch.set_num_threads(spec.threads)
        device = resolve_device(cfg.device)
        record["device"] = str(device)
        seed_everything(spec.seed)
        sink(("phase", key, "loading data"))
        t0 = time.perf_counter()
        split = load_bench_split(cfg, spec.seed)
        timings["load_s"] = time.perf_counter() - t0
        record["split"] = {
            k: v for k, v in split.info.items()
            if k in ("seed", "train_users", "test_users", "validation_users", "users_warm", "users_cold", "items_warm",
                     "items_cold", "query_scenarios_train", "query_scenarios_test", "cache", "load_seconds")
        }

        cls = get_learner(spec.method)
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        learner = cls.from_settings(
            split.train.schema,
            preset=settings.preset,
            overrides=cfg.learner_overrides(spec.method, fields),
            device=device,
            seed=spec.seed,
        )
        record["learner_config"] = dataclasses.asdict(learner.config)
        record["learner_class"] = f"{cls.__module__}:{cls.__qualname__}"

        ckpt_dir = rd.checkpoints(spec.method, spec.seed)
        prior = load_checkpoint(ckpt_dir)
        fit_before, history = 0.0, []
        if prior is not None:
            meta, state = prior
            learner.load_state_dict(state)
            fit_before, history = float(meta.get("fit_seconds", 0.0)), list(meta.get("history", []))
            record["resumed_from_epoch"] = int(meta["epochs_done"])
        ckpt = CheckpointCallback(ckpt_dir, fit_seconds_before=fit_before, history=history)

        with PeakMemory(device) as mem:
            sink(("phase", key, "training"))
            learner.meta_fit(split.train, callbacks=[ProgressCallback(sink, key), ckpt], validation=split.validation)
            timings["fit_s"] = ckpt.fit_seconds()
            sink(("phase", key, "predicting"))
            t0 = time.perf_counter()
            pred = learner.predict(split.test)
            timings["predict_s"] = time.perf_counter() - t0
            record["memory"] = mem.read()
        record["history"] = ckpt.history
        if info := learner.run_info():
            record["learner_info"] = info
        if hasattr(learner, "epochs_done"):
            record["epochs_done"] = int(learner.epochs_done)

        sink(("phase", key, "metrics"))
        t0 = time.perf_counter()
        rows, arrays = _query_rows(split, pred, spec.method, spec.seed)
        scores = run_metrics(
            arrays["prediction"], arrays["rating"], arrays["user_id"], arrays["scenario"],
            k=cfg.k, clip_size=cfg.clip_size, n_boot=cfg.n_boot, level=cfg.ci_level, seed=spec.seed,
        )
        timings["metrics_s"] = time.perf_counter() - t0
        record.update(scores)
        record["status"] = "ok"
        # predictions first, the run file last: a run file means a complete run
        write_text(rd.run_predictions(spec.method, spec.seed), predictions_csv_text(rows))
    except Exception as exc:  # one run's failure must not take the benchmark down
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    write_json(rd.run_json(spec.method, spec.seed), record)
    if record["status"] == "ok" and not cfg.keep_checkpoints:
        shutil.rmtree(rd.checkpoints(spec.method, spec.seed), ignore_errors=True)
        try:
            rd.checkpoints(spec.method, spec.seed).parent.rmdir()  # only when no other run left one
        except OSError:
            pass
    sink(("done", key, record["status"], _one_line(record, cfg.k)))
    return {"method": spec.method, "seed": spec.seed, "status": record["status"], "error": record.get("error")}


def _one_line(record: Mapping[str, Any], k: int) -> str:
    if record["status"] != "ok":
        return f"[red]{record.get('error')}[/]"
    o = record["metrics"]["overall"]
    return f"MAE {o['mae']:.4f} · NDCG@{k} {o[f'ndcg@{k}']:.4f} · {record['timings']['total_s']:.1f} s"


def _worker(spec: RunSpec, queue: Any) -> dict[str, Any]:
    """Entry point of a worker process (spawned: nothing is inherited but the arguments)."""
    import torch

    torch.set_num_threads(spec.threads)
    return execute_run(spec, sink=queue.put)


# ---------------------------------------------------------------------------- the benchmark


def default_out_dir() -> Path:
    """``runs/<timestamp>`` under the current folder."""
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_methods(cfg: BenchConfig) -> dict[str, str]:
    """Fail early on unknown names and bad settings; return ``{method: import error}`` for broken plugins."""
    from metarec.registry import LearnerImportError, UnknownLearnerError, get_learner

    from metarec.registry import learner_entries

    known = learner_entries()
    for name in cfg.method_settings:
        if name not in known:
            import difflib

            hint = difflib.get_close_matches(name, known, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise BenchError(
                f"settings given for unknown method {name!r}{did}; known methods: {', '.join(known)}"
            )
    broken: dict[str, str] = {}
    for name in cfg.methods:
        try:
            cls = get_learner(name)
        except UnknownLearnerError as exc:
            raise BenchError(str(exc)) from None
        except LearnerImportError as exc:
            cause = exc.__cause__ or exc
            broken[name] = f"{exc}\n\n" + "".join(traceback.format_exception(cause))
            continue
        settings = cfg.settings_for(name)
        if settings.preset is not None and settings.preset not in getattr(cls, "presets", {}):
            known = ", ".join(getattr(cls, "presets", {})) or "(none)"
            raise BenchError(f"{name}: unknown preset {settings.preset!r}; known presets: {known}")
        base = cls.presets.get(settings.preset, {}) if settings.preset else {}
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        try:
            build_config(cls.Config, base, cfg.learner_overrides(name, fields), where=f"{name} config")
        except ConfigError as exc:
            raise BenchError(str(exc)) from None
    return broken


def _write_failed_import(rd: RunDir, method: str, seed: int, error: str) -> None:
    first = error.split("\n", 1)[0]
    write_json(
        rd.run_json(method, seed),
        {"format": RUN_FORMAT, "method": method, "seed": seed, "status": "failed", "error": first,
         "traceback": error, "timings": {}},
    )


def prepare_out_dir(cfg: BenchConfig, out: Path, resume: bool) -> BenchConfig:
    """Check that the output folder is free (or, resuming, that it continues ``cfg``).

    Resuming may *extend* a benchmark with more seeds or methods (every run is independent and
    its record names the code it ran): the returned config holds the union, saved ones first.
    Result-relevant settings (data, protocol, method settings, ...) must not change.
    """
    rd = RunDir(out)
    if resume:
        if not rd.config.exists():
            raise BenchError(f"--resume: {out} holds no config.json; it is not a metarec bench folder")
        saved = read_json(rd.config)
        if saved.get("format") != CONFIG_FORMAT:
            raise BenchError(f"{rd.config}: unknown format {saved.get('format')!r}")
        saved_cfg = BenchConfig.from_dict(saved["config"])
        diff = differences(saved_cfg, cfg, [f for f in RESULT_FIELDS if f != "method_settings"])
        # a method already in the folder must keep its settings; added methods bring their own
        def settings(c: BenchConfig, m: str) -> dict[str, Any]:
            return jsonable(dataclasses.asdict(c.settings_for(m)))

        diff += [
            f"settings of {m}: {settings(saved_cfg, m)} -> {settings(cfg, m)}"
            for m in saved_cfg.methods
            if m in cfg.methods and settings(saved_cfg, m) != settings(cfg, m)
        ]
        if diff:
            raise BenchError(
                f"--resume: these settings differ from the interrupted run in {out}: " + "; ".join(diff)
                + ". Resume with the same settings, or start a new --out folder."
            )
        methods = (*saved_cfg.methods, *[m for m in cfg.methods if m not in saved_cfg.methods])
        seeds = (*saved_cfg.seeds, *[s for s in cfg.seeds if s not in saved_cfg.seeds])
        return dataclasses.replace(cfg, methods=tuple(methods), seeds=tuple(seeds))
    if rd.config.exists() or rd.run_files() or rd.results.exists() or (out / "checkpoints").exists():
        raise BenchError(
            f"{out} already holds a benchmark; pass --resume to continue it or choose another --out"
        )
    return cfg


def run_bench(
    cfg: BenchConfig,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    console: Any = None,
    command: Sequence[str] | None = None,
    render: Callable[[dict, Path], None] | None = None,
) -> dict[str, Any]:
    """Run every (method, seed) of ``cfg`` not finished yet and rebuild the results files.

    Returns the results dict (also written to ``<out>/results.json``). ``render`` (default:
    :func:`metarec.bench.report.write_reports`) writes the tables and the plot.
    """
    from rich.console import Console

    console = console or Console(stderr=True)
    out = Path(out or cfg.out or default_out_dir())
    cfg = dataclasses.replace(cfg, out=str(out))
    t_bench = time.perf_counter()
    from metarec.runtime import resolve_device

    try:
        resolve_device(cfg.device)  # --device cuda without CUDA: one error now, not one per run
    except (RuntimeError, ValueError) as exc:
        raise BenchError(str(exc)) from None
    broken = check_methods(cfg)
    cfg = prepare_out_dir(cfg, out, resume)
    # Load the first split here: a wrong data folder fails now, with one clear error, and
    # before the output folder is claimed.
    first_split = load_bench_split(cfg, cfg.seeds[0])
    data_info = dataset_info(first_split)
    rd = RunDir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(rd.config, {"format": CONFIG_FORMAT, "config": cfg.to_dict()})

    plan: list[tuple[str, int]] = []
    for seed in cfg.seeds:  # seed-major: every method of a seed shares the (cached) split
        for m in cfg.methods:
            path = rd.run_json(m, seed)
            if resume and path.exists() and read_json(path).get("status") == "ok":
                continue
            plan.append((m, seed))
    for m, s in plan:
        if m in broken:
            _write_failed_import(rd, m, s, broken[m])
    todo = [(m, s) for m, s in plan if m not in broken]
    skipped = len(cfg.methods) * len(cfg.seeds) - len(plan)
    if resume:
        console.print(f"resuming {out}: {skipped} finished run(s) kept, {len(todo)} to run")

    jobs = max(1, min(cfg.jobs, len(todo) or 1))
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // jobs)
    specs = [RunSpec(m, s, str(out), cfg.to_dict(), threads) for m, s in todo]
    env = environment_info(cfg.device)
    env["jobs"], env["threads_per_run"] = jobs, threads

    with BenchProgress(len(specs), console=console, enabled=cfg.progress) as progress:
        if jobs == 1:
            for spec in specs:
                execute_run(spec, sink=progress.handle)
        else:
            _run_parallel(specs, jobs, progress)

    def wall() -> float:
        return time.perf_counter() - t_bench

    console.print("aggregating results (bootstrap intervals, paired tests) ...")
    results = build_results(
        rd, cfg.to_dict(), environment=env, dataset=data_info, wall_time_s=None, command=command,
    )
    results["wall_time_s"] = wall()
    results["wall_time_note"] = "this invocation only (resumed)" if resume else "whole benchmark"
    results["runs_time_s"] = sum(float(r.get("timings", {}).get("total_s", 0.0)) for r in results["runs"])
    write_json(rd.results, results)
    if render is None:
        from metarec.bench.report import write_reports

        render = write_reports
    render(results, out)
    return results


def _run_parallel(specs: Sequence[RunSpec], jobs: int, progress: BenchProgress) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        # Workers are reused across runs; PeakMemory resets the peak-RSS counter per run.
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_worker, spec, queue): spec for spec in specs}
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.1)
                _drain(queue, progress)
                for fut in done:
                    spec = futures[fut]
                    try:
                        fut.result()
                    except Exception as exc:  # the worker process itself died
                        rd = RunDir(spec.out_dir)
                        write_json(
                            rd.run_json(spec.method, spec.seed),
                            {"format": RUN_FORMAT, "method": spec.method, "seed": spec.seed, "status": "failed",
                             "error": f"worker process failed: {type(exc).__name__}: {exc}",
                             "traceback": "".join(traceback.format_exception(exc)), "timings": {}},
                        )
                        progress.handle(("done", run_key(spec.method, spec.seed), "failed", str(exc)))
            _drain(queue, progress)


def _drain(queue: Any, progress: BenchProgress) -> None:
    import queue as queue_mod

    while True:
        try:
            progress.handle(queue.get_nowait())
        except queue_mod.Empty:
            return


__all__ = [
    "BenchError",
    "CheckpointCallback",
    "RunSpec",
    "check_methods",
    "environment_info",
    "execute_run",
    "load_bench_split",
    "run_bench",
]
