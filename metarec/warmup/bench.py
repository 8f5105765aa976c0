"""The item warm-up benchmark: ``metarec bench --protocol item-warmup``.

For each seed the protocol's split is built once (:func:`~metarec.warmup.protocol.build_warmup_split`);
every method then runs the whole stream on it -- pre-train on the old items, cold stage, warm-up
batches a, b, c -- each run under its own seed-derived random streams, and the test rows are
scored after every stage. Outputs in ``--out``:

* ``runs/<method>__seed<k>.json``: one run's metrics per stage, item-bootstrap intervals, timings;
* ``predictions.csv.gz``: per seed, one row per test row (item, user, label) and one column per
  ``method|stage`` (6 decimals; the metrics are computed from these rounded values, so
  ``benchmarks/recompute_metrics.py`` reproduces them exactly);
* ``results.json`` (``protocol: item-warmup``): per method and stage, mean +- std over seeds and
  a bootstrap interval of that mean (items resampled within each seed, replicates averaged);
* ``summary.md``: the AUC / F1 / log-loss tables, and ``plot.png`` / ``plot.svg``: the metrics
  against the stage (``metarec report`` re-renders both; the plot needs ``metarec[plot]``).

Runs execute in this process, one after another, seed by seed (each is minutes at most on
ML-1M). The folder's files are rewritten after every seed, so a run stopped early holds complete
files for the seeds it finished (``seeds``, ``seeds_planned``, ``complete`` in ``results.json``);
there is no resume: a rerun starts over.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from metarec.bench.results import write_json
from metarec.errors import UserError
from metarec.runtime import derive_seed
from metarec.registry import learner_protocol
from metarec.warmup.learner import WarmupTrainData
from metarec.warmup.metrics import METRICS, bootstrap_replicates, percentile_interval, stage_metrics
from metarec.warmup.protocol import PROTOCOL_NAME, WarmupSplit, build_warmup_split, warmup_config_for

RESULTS_FORMAT = "metarec-item-warmup-results-1"
#: Decimals of the stored predictions (the metrics are computed from the rounded values).
DECIMALS = 6
METRIC_LABELS = {"auc": "AUC", "f1": "F1 (0.5)", "f1_mean": "F1 (test-mean threshold, CVAR)", "logloss": "log-loss"}


class WarmupBenchError(UserError):
    """A mistake in an item warm-up benchmark invocation (one line)."""


def resolve_warmup_methods(methods: Sequence[str]) -> dict[str, type]:
    """The learner class of each name, refusing unknown names and learners of the other protocol."""
    from metarec.registry import LearnerImportError, UnknownLearnerError, get_learner

    out: dict[str, type] = {}
    for name in methods:
        try:
            cls = get_learner(name)
        except (UnknownLearnerError, LearnerImportError) as exc:
            raise WarmupBenchError(str(exc)) from None
        if learner_protocol(cls) != PROTOCOL_NAME:
            raise WarmupBenchError(
                f"learner {name!r} follows the {learner_protocol(cls)} protocol, not item-warmup; item-warmup "
                "learners: " + ", ".join(item_warmup_learners()))
        out[name] = cls
    return out


def item_warmup_learners() -> list[str]:
    """Names of the registered learners that follow the item warm-up protocol."""
    from metarec.registry import learners_for_protocol

    return learners_for_protocol(PROTOCOL_NAME)


def load_data(cfg: Any) -> Any:
    """The dataset of the bench (parsed once per process)."""
    from metarec.data.load import load_dataset
    from metarec.data.synthetic import make_synthetic

    if cfg.dataset == "synthetic" and cfg.dataset_config is None:
        return make_synthetic(**cfg.synthetic)
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, offline=cfg.offline, config_path=cfg.dataset_config)


def _seed_phase(seed: int, method: str, phase: str) -> None:
    torch.manual_seed(derive_seed(seed, "item-warmup", method, phase) % (2**63))


def run_stream(cls: type, split: WarmupSplit, *, method: str, seed: int, preset: str | None,
               overrides: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """One (method, seed) run of the whole stream: predictions per stage and timings."""
    t0, c0 = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU time per phase: comparable across loads on a shared machine

    def phase(key: str, t: float, c: float) -> None:
        timings[key], cpu[key] = time.perf_counter() - t, time.process_time() - c

    with torch.random.fork_rng(devices=[]):
        learner = cls.from_settings(split.schema, n_users=len(split.users), n_items=len(split.items), preset=preset,
                                    overrides=overrides, device=device, seed=seed)
        _seed_phase(seed, method, "fit")
        t, c = time.perf_counter(), time.process_time()
        learner.fit(WarmupTrainData(split.users, split.items, split.base, split.old_items))
        phase("fit_s", t, c)
        hidden = split.test.without_labels()
        preds: dict[str, np.ndarray] = {}
        t, c = time.perf_counter(), time.process_time()
        _seed_phase(seed, method, "cold")
        learner.init_new_items(split.new_items)
        preds["cold"] = learner.predict(hidden).numpy()
        phase("cold_s", t, c)
        for stage, rows in zip(split.stage_names[1:], split.stages):
            t, c = time.perf_counter(), time.process_time()
            _seed_phase(seed, method, stage)
            learner.warm_up(rows, stage)
            preds[stage] = learner.predict(hidden).numpy()
            phase(f"warm_{stage}_s", t, c)
    phase("total_s", t0, c0)
    for stage, p in preds.items():
        if p.shape != (len(split.test),) or not np.isfinite(p).all():
            raise RuntimeError(f"{method}: stage {stage}: predictions must be {len(split.test)} finite probabilities")
        preds[stage] = np.round(p.astype(np.float64), DECIMALS)
    return {"predictions": preds, "timings": timings, "cpu_timings": cpu, "learner_info": learner.run_info(),
            "config": dataclasses.asdict(learner.config)}


def aggregate(runs: list[dict[str, Any]], replicates: dict[tuple[str, int, str], dict[str, np.ndarray]],
              methods: Sequence[str], stages: Sequence[str], level: float) -> dict[str, Any]:
    """Per method and stage: mean, sample std (n - 1) over seeds and the bootstrap interval of the mean."""
    out: dict[str, Any] = {}
    for m in methods:
        ok = [r for r in runs if r["method"] == m and r["status"] == "ok"]
        per_stage: dict[str, Any] = {}
        for st in stages:
            cell: dict[str, Any] = {}
            for k in METRICS:
                vals = [r["metrics"][st][k] for r in ok]
                if not vals:
                    continue
                reps = np.mean([replicates[(m, r["seed"], st)][k] for r in ok], axis=0)
                cell[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                           "per_seed": vals, "ci": percentile_interval(reps, level)}
            per_stage[st] = cell
        out[m] = {"seeds": [r["seed"] for r in ok], "stages": per_stage,
                  "settings": ok[0]["settings"] if ok else None}
    return out


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "n/a"
    std = "" if cell.get("std") is None else f" ± {cell['std']:.4f}"
    lo, hi = cell["ci"]
    ci = "" if lo is None else f" [{lo:.4f}, {hi:.4f}]"
    return f"{cell['mean']:.4f}{std}{ci}"


def markdown_summary(results: dict[str, Any]) -> str:
    """The summary tables (one per metric: methods x stages) as Markdown."""
    stages = results["stages"]
    d = results["dataset"]
    lines = [f"# Item warm-up benchmark: {d.get('name')}", ""]
    if results.get("command"):
        lines += ["```", " ".join(results["command"]), "```", ""]
    p = d.get("protocol") or {}
    lines += [
        f"Protocol: item warm-up ({d.get('label_rule')}; old items > {p.get('old_min_count')} ratings, "
        f"{d.get('old_items')} old / {d.get('new_items')} new items; {p.get('n_stages')} warm-up batches of "
        f"{p.get('stage_size')} ratings per new item, {d.get('order_rule')} order; {d.get('rows_test')} test rows). "
        f"Seeds: {', '.join(map(str, results['seeds']))}"
        + ("" if results.get("complete", True) else f" (of {', '.join(map(str, results['seeds_planned']))} planned: "
           "the run stopped early)") + ". Cells: mean ± std over seeds "
        f"[{results['ci_level']:.0%} item-bootstrap interval of the mean].", ""]
    for k in METRICS:
        lines += [f"## {METRIC_LABELS[k]}", "", "| method | " + " | ".join(stages) + " |",
                  "|---|" + "---|" * len(stages)]
        for m, e in results["methods"].items():
            lines.append(f"| {m} | " + " | ".join(_fmt(e["stages"].get(s, {}).get(k)) for s in stages) + " |")
        lines.append("")
    failed = [r for r in results["runs"] if r["status"] != "ok"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['method']} seed {r['seed']}: {r.get('error')}" for r in failed] + [""]
    lines += ["## Time per run (s, mean over seeds; CPU = process CPU time)", "",
              "| method | fit | cold | warm-up a+b+c | total | total CPU |", "|---|---|---|---|---|---|"]
    for m in results["methods"]:
        rs = [r for r in results["runs"] if r["method"] == m and r["status"] == "ok"]
        if rs:
            mean = lambda key, table="timings": np.mean([r.get(table, {}).get(key, np.nan) for r in rs])  # noqa: E731
            warm = np.mean([sum(v for k, v in r["timings"].items() if k.startswith("warm_")) for r in rs])
            lines.append(f"| {m} | {mean('fit_s'):.1f} | {mean('cold_s'):.1f} | {warm:.1f} | {mean('total_s'):.1f} | "
                         f"{mean('total_s', 'cpu_timings'):.1f} |")
    return "\n".join(lines) + "\n"


def write_predictions(path: Path, blocks: list[tuple[int, WarmupSplit, dict[str, dict[str, np.ndarray]]]],
                      methods: Sequence[str]) -> None:
    """``predictions.csv.gz``: seed, item, user, label, then ``method|stage`` columns."""
    stages = blocks[0][1].stage_names
    cols = [f"{m}|{s}" for m in methods for s in stages]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seed", "item", "user", "label", *cols])
    fmt = f"%.{DECIMALS}f"
    for seed, split, preds in blocks:
        items = split.items.ids[split.test.item.numpy()]
        users = split.users.ids[split.test.user.numpy()]
        labels = split.test.label.numpy().astype(int)
        mat = [preds.get(m, {}).get(s) for m in methods for s in stages]
        for i in range(len(split.test)):
            w.writerow([seed, items[i], users[i], labels[i], *("" if a is None else fmt % a[i] for a in mat)])
    path.write_bytes(gzip.compress(buf.getvalue().encode(), compresslevel=6, mtime=0))


def run_warmup_bench(cfg: Any, *, out: Path, protocol_overrides: dict[str, Any], console: Any,
                     command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every (method, seed) of the item warm-up protocol and write the results folder."""
    t_bench = time.perf_counter()
    classes = resolve_warmup_methods(cfg.methods)
    pcfg = warmup_config_for(cfg.dataset, protocol_overrides)
    for name, cls in classes.items():  # settings refused before any data is read
        s = cfg.settings_for(name)
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        try:
            from metarec.config import build_config

            if s.preset is not None and s.preset not in cls.presets:
                raise WarmupBenchError(f"{name}: unknown preset {s.preset!r}; known presets: {', '.join(cls.presets)}")
            build_config(cls.Config, cls.presets.get(s.preset, {}) if s.preset else {},
                         cfg.learner_overrides(name, fields), where=f"{name} config")
        except (TypeError, ValueError) as exc:
            raise WarmupBenchError(str(exc).splitlines()[0]) from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = "cpu" if cfg.device == "auto" and not torch.cuda.is_available() else ("cuda" if cfg.device == "auto" else cfg.device)
    from metarec.bench.environment import environment_info

    environment = environment_info(device)  # at the start: the code (git commit) that runs, not the one at the end
    data = load_data(cfg)
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    replicates: dict[tuple[str, int, str], dict[str, np.ndarray]] = {}
    blocks = []
    dataset_info: dict[str, Any] = {}
    for seed in cfg.seeds:
        split = build_warmup_split(data, pcfg, seed=seed)
        if not dataset_info:
            dataset_info = {"name": data.name, **{k: v for k, v in split.info.items() if k not in ("seed", "dataset")}}
            console.print(f"data {data.name}: {split.info['old_items']:,} old items ({split.info['rows_base']:,} rows), "
                          f"{split.info['new_items']:,} new items, warm-up batches of {pcfg.stage_size} per item "
                          f"({split.info['order_rule']} order), {split.info['rows_test']:,} test rows", markup=False)
        seed_preds: dict[str, dict[str, np.ndarray]] = {}
        for name, cls in classes.items():
            s = cfg.settings_for(name)
            overrides = cfg.learner_overrides(name, [f.name for f in dataclasses.fields(cls.Config)])
            record: dict[str, Any] = {"format": RESULTS_FORMAT, "protocol": PROTOCOL_NAME, "method": name, "seed": seed,
                                      "settings": {"preset": s.preset, "overrides": overrides}}
            try:
                res = run_stream(cls, split, method=name, seed=seed, preset=s.preset, overrides=overrides, device=device)
            except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the others go on
                import traceback

                record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                console.print(f"[red]failed[/]: {name} seed {seed}: {record['error']}")
                runs.append(record)
                write_json(out / "runs" / f"{name}__seed{seed}.json", record)
                continue
            label = split.test.label.numpy()
            metrics, ci = {}, {}
            for st, p in res["predictions"].items():
                metrics[st] = stage_metrics(p, label)
                reps = bootstrap_replicates(p, label, split.test.item.numpy(), n_boot=cfg.n_boot,
                                            seed=derive_seed(seed, "item-bootstrap", st) % (2**32))
                replicates[(name, seed, st)] = reps
                ci[st] = {k: percentile_interval(v, cfg.ci_level) for k, v in reps.items()}
            record.update(status="ok", metrics=metrics, ci=ci, timings=res["timings"], cpu_timings=res["cpu_timings"],
                          threads=torch.get_num_threads(), config=res["config"],
                          learner_info=res["learner_info"])
            seed_preds[name] = res["predictions"]
            runs.append(record)
            write_json(out / "runs" / f"{name}__seed{seed}.json", record)
            console.print(f"{name} seed {seed}: AUC " + " / ".join(f"{metrics[s]['auc']:.4f}" for s in split.stage_names)
                          + f" (cold/a/b/c) · {res['timings']['total_s']:.1f} s", markup=False)
        blocks.append((seed, split, seed_preds))
        # after every seed: a run stopped later (a time limit) keeps complete, consistent files for the seeds done
        results = _write_outputs(out, cfg, pcfg, classes, blocks, runs, replicates, dataset_info, environment, command,
                                 t_bench)
    return results


def _write_outputs(out: Path, cfg: Any, pcfg: Any, classes: dict[str, type], blocks: list, runs: list[dict[str, Any]],
                   replicates: dict, dataset_info: dict[str, Any], environment: dict[str, Any],
                   command: Sequence[str] | None, t_bench: float) -> dict[str, Any]:
    """predictions.csv.gz, results.json, summary.md and the plot for the seeds finished so far."""
    from metarec.warmup.plot import plot_warmup

    stages = list(blocks[0][1].stage_names)
    done = [seed for seed, _, _ in blocks]
    runs_done = [r for r in runs if r["seed"] in done]
    write_predictions(out / "predictions.csv.gz", blocks, list(classes))
    results = {
        "format": RESULTS_FORMAT,
        "protocol": PROTOCOL_NAME,
        "command": list(command) if command else None,
        "config": cfg.to_dict(),
        "warmup_protocol": dataclasses.asdict(pcfg),
        "dataset": dataset_info,
        "environment": environment,
        "seeds": done,
        "seeds_planned": list(cfg.seeds),
        "complete": done == list(cfg.seeds),
        "stages": stages,
        "metrics": list(METRICS),
        "ci_level": cfg.ci_level,
        "n_boot": cfg.n_boot,
        "bootstrap_unit": "new items (all test rows of a drawn item), within each seed; the mean's interval averages "
                          "the seeds' replicates",
        "prediction_decimals": DECIMALS,
        "methods": aggregate(runs_done, replicates, list(classes), stages, cfg.ci_level),
        "runs": runs_done,
    }
    results["wall_time_s"] = time.perf_counter() - t_bench
    write_json(out / "results.json", results)
    saved = json.loads((out / "results.json").read_text())
    (out / "summary.md").write_text(markdown_summary(saved))
    plot_warmup(saved, out / "plot")
    return results


__all__ = ["RESULTS_FORMAT", "WarmupBenchError", "item_warmup_learners", "markdown_summary",
           "resolve_warmup_methods", "run_stream", "run_warmup_bench"]
