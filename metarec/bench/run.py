"""One benchmark run: a (method, seed) trained, evaluated and saved on its own.

One run = load the seed's split (the seed decides the train/test users), build the learner
under the same seed, ``meta_fit`` on the training users with a checkpoint after every epoch,
predict every test user's query ratings in test-user order, compute the metrics and their
bootstrap intervals, and write ``runs/<method>__seed<k>.json`` (+ its predictions) atomically.

Isolation inside the run: the learner gets *private copies* of the split's tensors, and the
run's metrics are computed from the pristine split, so a learner that changes its TaskSets in
place cannot affect any other run or its own scores -- and it is caught: the run fails, naming
the tensors it changed. Predictions must be finite *before* the learner's clipping
(``postprocess``): NaN or +-inf fails the run. A run that raises, or calls ``sys.exit``, is
recorded as failed with its traceback. (A run that kills its process is recorded by the
executor, :mod:`metarec.bench.executor`.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from metarec.bench.config import BenchConfig, protocol_config, run_settings
from metarec.bench.environment import git_info
from metarec.bench.progress import ProgressCallback, Sink
from metarec.bench.results import (
    RUN_FORMAT,
    MetricSpec,
    mark_score_output,
    RunDir,
    predictions_csv_text,
    read_json,
    run_key,
    run_metrics,
    write_json,
    write_text,
)
from metarec.checkpoint import load_state, save_state
from metarec.config import ConfigError, jsonable
from metarec.learner import Callback
from metarec.schema import SCENARIOS

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

#: Complete checkpoints kept per unfinished run: the newest and the one before it, so a newest
#: one damaged on disk (a truncated file) still leaves a good one to continue from.
KEEP_CHECKPOINTS = 2


class CheckpointCallback(Callback):
    """Saves ``learner.state_dict()`` after every epoch, so a killed run continues from there.

    Each epoch goes to its own folder with its own ``checkpoint.json`` (written last), and
    ``latest.json`` (written atomically, after the folder) points to the newest complete one;
    the two newest folders are kept (:data:`KEEP_CHECKPOINTS`).
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
        meta = {"epochs_done": epoch + 1, "path": name, "fit_seconds": elapsed, "history": self.history}
        write_json(self.directory / name / "checkpoint.json", meta)
        write_json(self.directory / "latest.json", meta)
        folders = sorted(self.directory.glob("epoch-*"), reverse=True)
        for old in folders[KEEP_CHECKPOINTS:]:
            shutil.rmtree(old, ignore_errors=True)

    def fit_seconds(self) -> float:
        """Training time so far, including the time before a resume."""
        return self.fit_seconds_before + time.perf_counter() - self._t0


def load_checkpoint(directory: Path, notes: list[str] | None = None) -> tuple[dict[str, Any], Any] | None:
    """``(meta, state)`` of a run's newest *readable* checkpoint, or None.

    A damaged checkpoint (truncated array file, broken JSON) is reported in ``notes`` by path,
    removed, and the next older one is tried.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates: list[Path] = []
    pointer = directory / "latest.json"
    try:
        if pointer.exists():
            candidates.append(directory / read_json(pointer)["path"])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        if notes is not None:
            notes.append(f"{pointer}: damaged ({exc}); looking for an older checkpoint")
    candidates += [p for p in sorted(directory.glob("epoch-*"), reverse=True) if p not in candidates]
    for folder in candidates:
        try:
            meta_path = folder / "checkpoint.json"
            meta = read_json(meta_path) if meta_path.exists() else read_json(pointer)
            if meta.get("path") != folder.name:
                raise ValueError("the checkpoint record names another folder")
            state = load_state(folder / "state")
            return meta, state
        except Exception as exc:  # noqa: BLE001 - any damage means: not usable, try the older one
            if notes is not None:
                notes.append(f"checkpoint {folder} is damaged ({type(exc).__name__}: {exc}); removed")
            shutil.rmtree(folder, ignore_errors=True)
    if candidates and notes is not None:
        notes.append(f"no readable checkpoint left in {directory}; training starts again from epoch 1")
    return None


# ---------------------------------------------------------------------------- data

_SPLIT_CACHE: dict[tuple, Any] = {}


def split_key(cfg: BenchConfig, seed: int) -> tuple:
    """What decides a split: the data settings, the protocol and the seed (the cache's key)."""
    protocol = protocol_config(cfg)
    return (cfg.dataset, cfg.data_dir, cfg.dataset_config, repr(protocol), repr(sorted(cfg.synthetic.items())), seed,
            cfg.use_cache, cfg.offline)


def load_bench_split(cfg: BenchConfig, seed: int) -> Any:
    """The seed's :class:`~metarec.data.Split`, cached per process (read only: see :func:`private_split`)."""
    protocol = protocol_config(cfg)
    key = split_key(cfg, seed)
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
        from metarec.data import load_split

        split = load_split(
            cfg.dataset, data_dir=cfg.data_dir, protocol=protocol, seed=seed,
            offline=cfg.offline, use_cache=cfg.use_cache, config_path=cfg.dataset_config,
        )
    # keep only the latest few splits: a bench over many seeds must not hold them all
    if len(_SPLIT_CACHE) >= 4:
        _SPLIT_CACHE.pop(next(iter(_SPLIT_CACHE)))
    _SPLIT_CACHE[key] = split
    return split


def prime_split_cache(cfg: BenchConfig, seed: int, split: Any) -> None:
    """Make :func:`load_bench_split` return ``split`` for ``(cfg, seed)`` in this process.

    A distributed executor builds each seed's split once, in the driver, and ships it to the
    workers (Ray's object store) instead of having every task read and parse the data again.
    """
    key = split_key(cfg, seed)
    if len(_SPLIT_CACHE) >= 4 and key not in _SPLIT_CACHE:
        _SPLIT_CACHE.pop(next(iter(_SPLIT_CACHE)))
    _SPLIT_CACHE[key] = split


def node_info() -> dict[str, Any]:
    """Where this run executes: host and process, plus the Ray node id inside a Ray worker."""
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        try:
            info["ray_node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:  # pragma: no cover - not inside a Ray worker after all
            pass
    return info


#: Writes one final file of a run, ``(path, text)``: atomically on this machine by default; a
#: distributed executor collects them instead, so that only the driver writes the run folder.
FileWriter = Callable[[Path, str], None]


def json_text(data: Any) -> str:
    """The text :func:`~metarec.bench.results.write_json` writes for ``data``."""
    from metarec.bench.results import clean_json

    return json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n"


_TASK_TENSORS = ("user_index", "support_items", "support_ratings", "support_mask",
                 "query_items", "query_ratings", "query_mask", "query_scenario")


def _copy_table(t: Any) -> Any:
    return dataclasses.replace(t, columns={k: v.clone() for k, v in t.columns.items()}, ids=np.array(t.ids, copy=True))


def _copy_taskset(ts: Any, users: Any, items: Any) -> Any:
    import copy

    return dataclasses.replace(ts, users=users, items=items, info=copy.deepcopy(ts.info),
                               **{f: getattr(ts, f).clone() for f in _TASK_TENSORS})


def private_split(split: Any) -> Any:
    """A deep copy of ``split`` for one learner: its tensors share no memory with the original."""
    users, items = _copy_table(split.train.users), _copy_table(split.train.items)
    return dataclasses.replace(
        split,
        train=_copy_taskset(split.train, users, items),
        test=_copy_taskset(split.test, users, items),
        validation=None if split.validation is None else _copy_taskset(split.validation, users, items),
    )


def changed_tensors(pristine: Any, given: Any) -> list[str]:
    """Names of the tensors of ``given`` that no longer equal ``pristine`` (an in-place change)."""
    import torch

    out: list[str] = []
    for part in ("train", "test", "validation"):
        a, b = getattr(pristine, part), getattr(given, part)
        if a is None:
            continue
        for f in _TASK_TENSORS:
            x, y = getattr(a, f), getattr(b, f)
            if x.shape != y.shape or not torch.equal(x, y.to(x.device)):
                out.append(f"{part}.{f}")
    for table in ("users", "items"):
        a, b = getattr(pristine.train, table), getattr(given.train, table)
        for k, v in a.columns.items():
            w = b.columns.get(k)
            if w is None or v.shape != w.shape or not torch.equal(v, w.to(v.device)):
                out.append(f"{table}.{k}")
    return out


def data_summary_line(info: dict[str, Any]) -> str:
    """One console line: the data, what the protocol kept, and every record dropped (by reason)."""
    drops = {k: v for k, v in (info.get("load_drops") or {}).items() if v}
    short = info.get("users_dropped_too_few_ratings", 0)
    per_user = (info.get("protocol") or {}).get("ratings_per_user")
    parts = [f"data {info.get('dataset')}: {info.get('users_kept', 0):,} users kept"]
    parts.append(f"{short:,} with fewer than {per_user} ratings set aside" if short else "none set aside")
    dropped = ", ".join(f"{k} {v:,}" for k, v in drops.items())
    parts.append(f"dropped while loading: {dropped}" if dropped else "nothing dropped while loading")
    if info.get("canonical") is False:
        parts.append("NON-CANONICAL files")
    return "; ".join(parts)


def dataset_info(split: Any) -> dict[str, Any]:
    """What results.json says about the data: name, checksum, canonical flag, drops, protocol."""
    info = dict(split.info)
    keep = (
        "title", "non_canonical_files", "data_notes", "notes", "file_status", "data_dir", "loader_options",
        "users_total", "users_kept", "items_in_trimmed_table", "split_time_utc", "paper_counts", "unverified",
        "protocol_defaults_from", "time_source", "user_cold_fraction", "users_dropped_too_few_ratings",
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


class RunIntegrityError(RuntimeError):
    """The learner broke a rule of the harness (changed its data, returned non-finite values)."""


@dataclass
class RunSpec:
    """Everything a (possibly separate) process needs to execute one run."""

    method: str
    seed: int
    out_dir: str
    config: dict[str, Any]
    threads: int
    #: ``module:attribute`` of the learner class as the driver resolved it (after any clash
    #: choice), so a worker process builds exactly that class; None: resolve by name.
    learner_target: str | None = None
    #: Distribution that provides the learner, ``{"name": ..., "version": ...}``.
    learner_distribution: dict[str, Any] | None = None
    #: Modules to import first (where run-time registered learners live).
    imports: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """``<method>__seed<k>``."""
        return run_key(self.method, self.seed)

    # -------------------------------------------------- the executor's Job interface
    def run(self, sink: Sink | None = None) -> dict[str, Any]:
        """Execute the run here, writing its files (:func:`execute_run`)."""
        return execute_run(self, sink=sink)

    def died(self, error: str, failure: dict[str, Any]) -> dict[str, Any]:
        """The run's process or node died: write a failed run record naming the cause."""
        write_json(RunDir(self.out_dir).run_json(self.method, self.seed), failure_record(self, error, failure))
        return {"status": "failed", "error": error, "failure": failure}

    def split_source(self) -> tuple[BenchConfig, int]:
        """The settings and seed of the split this run reads (a Ray driver shares it once per seed)."""
        return BenchConfig.from_dict(self.config), self.seed

    def run_remote(self, split: Any) -> dict[str, Any]:
        """Execute the run where it was sent (a Ray task) and return its files instead of writing them."""
        import torch

        torch.set_num_threads(self.threads)
        if split is not None:
            prime_split_cache(*self.split_source(), split)
        root = Path(self.out_dir)
        files: list[tuple[str, str]] = []

        def collect(path: Path, text: str) -> None:
            files.append((str(Path(path).relative_to(root)), text))

        result = execute_run(self, write=collect)
        return {"result": result, "files": files}

    def collect(self, payload: dict[str, Any]) -> dict[str, Any]:
        """In the driver: write what :meth:`run_remote` returned -- predictions first, the record last."""
        for rel, text in payload["files"]:
            write_text(Path(self.out_dir) / rel, text)
        return payload["result"]


def preset_label(cls: type, preset: str | None, config: Any) -> str:
    """What a results row says a method ran: its preset, plus the keys set on top of it.

    With no preset named, the learner's defaults ran; they are its honest-best preset, so the
    label names the preset the defaults equal (``tuned``, ``paper``, ...), else ``defaults``.
    """
    from metarec.config import build_config

    presets = getattr(cls, "presets", {})
    if preset is None:
        defaults = cls.Config()
        same = [name for name, values in presets.items() if build_config(cls.Config, values) == defaults]
        label, base = (same[0] if same else "defaults"), defaults
    else:
        label, base = preset, build_config(cls.Config, presets.get(preset, {}))
    changed = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(base, f.name)]
    if changed:
        shown = ", ".join(f"{k}={getattr(config, k)!r}" for k in changed[:2])
        label += f" + {shown}" + (f" (+{len(changed) - 2} more)" if len(changed) > 2 else "")
    return label


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
        raise RunIntegrityError(f"{method}: {bad} predictions are NaN or infinite")
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


def guard_predictions(learner: Any, method: str, sink: Sink | None = None, key: str = "") -> None:
    """Check every batch's raw predictions before the learner's clipping; report prediction progress.

    Wraps ``adapt_and_predict`` on this learner instance: NaN or +-inf on a real query rating
    raises :class:`RunIntegrityError` (clipping would turn +inf into a perfect 5-star rating).
    """
    import torch

    inner = learner.adapt_and_predict
    state = {"users": 0, "last": 0.0}

    def checked(batch: Any) -> Any:
        pred = inner(batch)
        if not isinstance(pred, torch.Tensor):
            raise RunIntegrityError(f"{method}: adapt_and_predict returned {type(pred).__name__}, not a tensor")
        real = pred.detach()[batch.query_mask] if pred.shape == batch.query_mask.shape else pred.detach()
        if not bool(torch.isfinite(real).all()):
            n_nan = int(torch.isnan(real).sum())
            n_inf = int(torch.isinf(real).sum())
            raise RunIntegrityError(
                f"{method}: {n_nan} NaN and {n_inf} infinite prediction(s) before clipping "
                f"(users {state['users']}-{state['users'] + len(batch) - 1} of the test set)"
            )
        state["users"] += len(batch)
        now = time.monotonic()
        if sink is not None and now - state["last"] >= 0.2:
            state["last"] = now
            sink(("predict", key, state["users"]))
        return pred

    learner.adapt_and_predict = checked


def learner_class(spec: RunSpec) -> type:
    """The learner class of ``spec``: the driver's resolved target, else the registry by name."""
    import importlib

    from metarec.registry import LearnerEntry, get_learner

    for module in spec.imports:
        importlib.import_module(module)
    if spec.learner_target:
        return LearnerEntry(spec.method, spec.learner_target, "", "resolved").load()
    return get_learner(spec.method)


def predictions_digest(text: str) -> str:
    """``sha256:<hex>`` of a predictions file's text (recorded in the run file, checked on resume)."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def execute_run(spec: RunSpec, sink: Sink | None = None, write: FileWriter | None = None) -> dict[str, Any]:
    """Train, evaluate and save one (method, seed); never raises for a failure inside the run.

    ``write`` receives the run's final files (predictions, then the run record); by default they
    are written atomically here. Training checkpoints are always written where the run executes.
    """
    import torch

    import metarec
    from metarec.runtime import resolve_device, seed_everything

    sink = sink or (lambda event: None)
    write = write or write_text
    cfg = BenchConfig.from_dict(spec.config)
    rd = RunDir(spec.out_dir)
    key = spec.key
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
        "metarec_version": metarec.__version__,
        "settings": run_settings(cfg, spec.method),
        "learner_distribution": spec.learner_distribution,
        "node": node_info(),
    }
    notes: list[str] = []
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        torch.set_num_threads(spec.threads)
        device = resolve_device(cfg.device)
        record["device"] = str(device)
        seed_everything(spec.seed)
        sink(("phase", key, "loading data"))
        t0 = time.perf_counter()
        pristine = load_bench_split(cfg, spec.seed)
        split = private_split(pristine)
        timings["load_s"] = time.perf_counter() - t0
        record["data_checksum"] = pristine.info.get("checksum")
        record["split"] = {
            k: v for k, v in pristine.info.items()
            if k in ("seed", "train_users", "test_users", "validation_users", "tuning_users", "users_warm", "users_cold", "items_warm",
                     "items_cold", "query_scenarios_train", "query_scenarios_test", "cache", "load_seconds")
        }

        cls = learner_class(spec)
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        learner = cls.from_settings(
            split.train.schema,
            preset=settings.preset,
            overrides=cfg.learner_overrides(spec.method, fields),
            device=device,
            seed=spec.seed,
        )
        record["learner_config"] = dataclasses.asdict(learner.config)
        record["preset_label"] = preset_label(cls, settings.preset, learner.config)
        record["learner_class"] = f"{cls.__module__}:{cls.__qualname__}"
        record["output"] = getattr(cls, "output", "rating")
        record["settings_source"] = cfg.settings_source(spec.method, getattr(cls, "paper_presets", ("paper",)))
        epochs = record["learner_config"].get("epochs")
        if epochs == 0:
            record["untrained"] = True
            notes.append("epochs = 0: the model was never trained (its initial parameters were evaluated)")

        ckpt_dir = rd.checkpoints(spec.method, spec.seed)
        prior = load_checkpoint(ckpt_dir, notes)
        fit_before, history = 0.0, []
        if prior is not None:
            meta, state = prior
            learner.load_state_dict(state)
            fit_before, history = float(meta.get("fit_seconds", 0.0)), list(meta.get("history", []))
            record["resumed_from_epoch"] = int(meta["epochs_done"])
        for note in notes:
            sink(("note", key, note))
        ckpt = CheckpointCallback(ckpt_dir, fit_seconds_before=fit_before, history=history)

        with PeakMemory(device) as mem:
            sink(("phase", key, "training"))
            learner.meta_fit(split.train, callbacks=[ProgressCallback(sink, key), ckpt], validation=split.validation)
            timings["fit_s"] = ckpt.fit_seconds()
            sink(("phase", key, "predicting"))
            sink(("predict_start", key, len(split.test)))
            guard_predictions(learner, spec.method, sink, key)
            t0 = time.perf_counter()
            # The learner gets the test users' query items, never their ratings (NaN slots).
            pred = learner.predict(split.test.without_query_ratings())
            timings["predict_s"] = time.perf_counter() - t0
            record["memory"] = mem.read()
        changed = changed_tensors(pristine, split)
        if changed:
            raise RunIntegrityError(
                f"{spec.method} changed its input data in place ({', '.join(changed)}); learners must treat "
                "TaskSets as read-only (no other run was affected: each run gets private copies)"
            )
        record["history"] = ckpt.history
        if info := learner.run_info():
            record["learner_info"] = info
        # the learner's own JSON counters (e.g. ColdNAS's searched architecture)
        record["learner_state"] = jsonable(learner.extra_state())
        if hasattr(learner, "epochs_done"):
            record["epochs_done"] = int(learner.epochs_done)

        sink(("phase", key, "metrics"))
        t0 = time.perf_counter()
        rows, arrays = _query_rows(pristine, pred, spec.method, spec.seed)  # the true ratings: pristine
        scores = run_metrics(
            arrays["prediction"], arrays["rating"], arrays["user_id"], arrays["scenario"],
            n_boot=cfg.n_boot, level=cfg.ci_level, seed=spec.seed, spec=MetricSpec.from_config(cfg.to_dict()),
        )
        if record["output"] == "score":
            scores = mark_score_output(scores)
        timings["metrics_s"] = time.perf_counter() - t0
        if cfg.ranking == "catalogue":
            from metarec.ranking import catalogue_ranking

            sink(("phase", key, "catalogue ranking"))
            t1 = time.perf_counter()
            scores["catalogue_ranking"] = catalogue_ranking(
                learner, split, threshold=cfg.ranking_threshold, seed=spec.seed
            )
            timings["catalogue_s"] = time.perf_counter() - t1
        record.update(scores)
        record["status"] = "ok"
        # predictions first, the run file last: a run file means a complete run
        text = predictions_csv_text(rows)
        record["predictions_digest"] = predictions_digest(text)
        write(rd.run_predictions(spec.method, spec.seed), text)
    except SystemExit as exc:  # a method must not end the benchmark
        record["status"] = "failed"
        record["error"] = f"SystemExit: the method called sys.exit({exc.code!r})"
        record["failure"] = {"kind": "sys.exit", "code": exc.code if isinstance(exc.code, int) else str(exc.code)}
        record["traceback"] = traceback.format_exc()
    except Exception as exc:  # one run's failure must not take the benchmark down
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["failure"] = {"kind": "exception", "type": type(exc).__name__}
        record["traceback"] = traceback.format_exc()
    if notes:
        record["notes"] = notes
    timings["total_s"] = time.perf_counter() - t_start
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    write(rd.run_json(spec.method, spec.seed), json_text(record))
    if record["status"] == "ok" and not cfg.keep_checkpoints:
        remove_checkpoints(rd, spec.method, spec.seed)
    summary = one_line_summary(record, cfg.k)
    sink(("done", key, record["status"], summary))
    return {"method": spec.method, "seed": spec.seed, "status": record["status"], "error": record.get("error"),
            "summary": summary}


def remove_checkpoints(rd: RunDir, method: str, seed: int) -> None:
    """Delete a run's checkpoint folder (and ``checkpoints/`` when no other run left one)."""
    shutil.rmtree(rd.checkpoints(method, seed), ignore_errors=True)
    try:
        rd.checkpoints(method, seed).parent.rmdir()
    except OSError:
        pass


def one_line_summary(record: Mapping[str, Any], k: int) -> str:
    """``MAE ... · NDCG@k ... · seconds`` of a finished run, or its error."""
    if record["status"] != "ok":
        return f"[red]{record.get('error')}[/]"
    o = record["metrics"]["overall"]
    untrained = " · [yellow]untrained (epochs = 0)[/]" if record.get("untrained") else ""
    mae = "n/a" if o.get("mae") is None else f"{o['mae']:.4f}"
    return f"MAE {mae} · NDCG@{k} {o[f'ndcg@{k}']:.4f} · {record['timings']['total_s']:.1f} s{untrained}"


def failure_record(spec: RunSpec, error: str, failure: dict[str, Any], tb: str = "") -> dict[str, Any]:
    """The record of a run whose process died before it could write one."""
    return {"format": RUN_FORMAT, "method": spec.method, "seed": spec.seed, "status": "failed", "error": error,
            "failure": failure, "traceback": tb, "timings": {}, "learner_distribution": spec.learner_distribution}


__all__ = [
    "CheckpointCallback",
    "PeakMemory",
    "RunIntegrityError",
    "RunSpec",
    "changed_tensors",
    "dataset_info",
    "execute_run",
    "failure_record",
    "guard_predictions",
    "load_bench_split",
    "load_checkpoint",
    "node_info",
    "prime_split_cache",
    "split_key",
    "private_split",
]
