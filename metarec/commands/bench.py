"""``metarec bench``: compare methods on the same splits, seeds and metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from metarec.commands.options import device_option, executor_layer, executor_options


def _latest_run_dir(root: Path = Path("runs")) -> Path | None:
    if not root.is_dir():
        return None
    dirs = [d for d in root.iterdir() if (d / "config.json").exists()]
    return max(dirs, key=lambda d: (d / "config.json").stat().st_mtime) if dirs else None


def _saved_layer(out: Path) -> dict[str, Any]:
    """The resolved config of an earlier run as the lowest layer of a resumed one."""
    from metarec.bench.results import RunDir
    from metarec.bench.rundir import read_folder_config

    saved = read_folder_config(RunDir(out))
    bench = dict(saved["config"])
    methods = {
        name: {**({"preset": s["preset"]} if s.get("preset") is not None else {}), **s.get("overrides", {})}
        for name, s in bench.pop("method_settings", {}).items()
    }
    return {"bench": bench, "methods": methods, "provenance": bench.pop("provenance", None) or {}}


def _backend_layer(methods: tuple[str, ...], backend: str) -> dict[str, Any]:
    """``--backend NAME`` as ``--set M.backend=NAME`` for every selected method ``M`` with that setting.

    A method whose ``backend`` setting does not offer ``NAME`` is an error (not silently left on
    its default), as is a selection in which no method has the setting at all.
    """
    import dataclasses
    import typing

    from metarec.config import ConfigError
    from metarec.registry import LearnerImportError, UnknownLearnerError, get_learner

    chosen: dict[str, dict[str, Any]] = {}
    refused: list[str] = []
    for name in methods:
        try:
            config_cls = get_learner(name).Config
        except (UnknownLearnerError, LearnerImportError):
            continue  # reported, with the known names, when the runs start
        if "backend" not in {f.name for f in dataclasses.fields(config_cls)}:
            continue
        offered = typing.get_args(typing.get_type_hints(config_cls).get("backend"))
        if offered and backend not in offered:
            refused.append(f"{name} offers {', '.join(offered)}")
        else:
            chosen[name] = {"backend": backend}
    if refused:
        raise ConfigError(
            f"--backend {backend}: {'; '.join(refused)} (choose per method with --set METHOD.backend=NAME)"
        )
    if not chosen:
        raise ConfigError(f"--backend {backend}: none of the selected methods ({', '.join(methods)}) has a backend setting")
    return {"methods": chosen}


def _check_selected(selected: tuple[str, ...], given: dict[str, Any], resume: bool) -> None:
    """A ``--set``/``--preset`` for a method that is not selected is a mistake, not a no-op."""
    import difflib

    from metarec.config import ConfigError

    for name in given:
        if name in selected:
            continue
        hint = difflib.get_close_matches(name, selected, n=1, cutoff=0.3)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(
            f"--set/--preset for {name!r}, which is not among the selected methods ({', '.join(selected)}){did}; "
            f"add it to --methods or drop the setting"
        )


def _check_dataset(cfg: Any, *, explicit: bool, err: Any) -> None:
    """Wrong dataset invocations as errors that say what to type (before any work starts).

    ``--dataset-config SCHEMA`` without ``-d`` means ``-d custom`` (said on the console);
    ``-d custom`` needs ``--dataset-config``; a file name given as ``-d`` is pointed at ``-d custom``.
    """
    from metarec.config import ConfigError
    from metarec.data.catalog import UnknownDatasetError, unknown_dataset_message
    from metarec.data.load import CUSTOM_NEEDS_SCHEMA, available_datasets, is_schema_file

    if cfg.dataset_config and not explicit and cfg.dataset != "custom":
        if not Path(cfg.dataset_config).is_file():
            raise ConfigError(f"--dataset-config: file not found: {cfg.dataset_config}")
        if is_schema_file(cfg.dataset_config):
            err.print(f"--dataset-config {cfg.dataset_config} is a dataset schema: benchmarking it as -d custom", soft_wrap=True)
            cfg.dataset = "custom"
    if cfg.dataset == "custom" and not cfg.dataset_config:
        raise ConfigError(CUSTOM_NEEDS_SCHEMA)
    if cfg.dataset not in available_datasets():
        raise UnknownDatasetError(unknown_dataset_message(cfg.dataset))


@click.command("bench")
@click.option("--protocol", "protocol_name", type=click.Choice(["user-cold", "item-warmup"]), default="user-cold",
              show_default=True,
              help="user-cold: tasks are users, MAMO's four cells (MAE, NDCG). item-warmup: new items' ID embeddings, "
                   "cold stage + warm-up batches a, b, c (AUC, F1, log-loss); see docs/item-warmup.md.")
@click.option("--methods", "-m", help="Comma-separated learner names (see `metarec methods`). [default: global-mean,baseline-predictor]")
@click.option("--dataset", "-d", help="ml-1m, yelp, book-crossing, synthetic, or custom (your own data, with "
              "--dataset-config SCHEMA.toml; see docs/custom-data.md). [default: ml-1m]")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the raw dataset files.")
@click.option("--dataset-config", type=click.Path(dir_okay=False),
              help="Loader TOML: a custom dataset's schema (implies -d custom when -d is not given), "
                   "or [loader] options of a built-in one.")
@click.option("--seeds", "-s", help="Run seeds: 0,1,2 or 0-4 (each decides the user split and the initialisation). [default: 0,1,2]")
@device_option
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder. [default: runs/<timestamp>]")
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="TOML config file(s), e.g. benchmarks/configs/default.toml; later files win.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a setting: mamo.epochs=3, jobs=2, protocol.n_support=10 (repeatable).")
@click.option("--preset", "presets", multiple=True, metavar="METHOD=NAME", help="Use a named preset of a method (repeatable).")
@click.option("--tuned", "tuned", type=click.Path(exists=True),
              help="Run with the best settings of a `metarec tune` folder (its best.toml); results record the study.")
@click.option("--resume", is_flag=True, help="Continue an interrupted benchmark in --out (default: the latest under runs/), or extend a finished one with more --seeds/--methods. Failed runs are re-attempted.")
@click.option("--drop-failed", is_flag=True, help="With --resume: drop the failed runs from the benchmark instead of re-attempting them (listed in results.json).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Runs executed in parallel processes. [default: 1]")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per run. [default: cores / jobs]")
@click.option("--offline/--online", default=None, help="Forbid / allow network access when loading data. [default: offline]")
@click.option("--epochs", type=click.IntRange(min=0), help="Set epochs of every method that has the setting.")
@click.option("--support-size", type=click.IntRange(min=1), help="Support ratings per user (protocol n_support).")
@click.option("--clip-size", type=click.IntRange(min=1), help="Clip length of the per-scenario NDCG. [default: 5]")
@click.option("--n-boot", type=click.IntRange(min=1), help="Bootstrap resamples for the intervals. [default: 1000]")
@click.option("--backend", metavar="NAME",
              help="Inner-loop backend of every selected method that has one: torch.func, loop or learn2learn "
                   "(the last needs the optional learn2learn package).")
@click.option("--ranking", type=click.Choice(["query", "catalogue"]),
              help="catalogue: also rank each test user's relevant query items among the whole catalogue "
                   "(Recall@10/20, NDCG@10/20 per scenario). [default: query]")
@click.option("--progress/--no-progress", default=None, help="Live progress display. [default: on]")
@executor_options("run", " (--executor ray; a local run whose worker died is recorded as failed at once)")
def bench(
    methods: str | None,
    dataset: str | None,
    data_dir: str | None,
    dataset_config: str | None,
    seeds: str | None,
    device: str | None,
    out: str | None,
    config_files: tuple[str, ...],
    sets: tuple[str, ...],
    presets: tuple[str, ...],
    tuned: str | None,
    resume: bool,
    drop_failed: bool,
    jobs: int | None,
    threads: int | None,
    offline: bool | None,
    epochs: int | None,
    support_size: int | None,
    clip_size: int | None,
    n_boot: int | None,
    progress: bool | None,
    backend: str | None,
    executor: str | None,
    ray_address: str | None,
    cpus_per_run: float | None,
    gpus_per_run: float | None,
    retries: int | None,
    ranking: str | None = None,
    protocol_name: str = "user-cold",
) -> None:
    """Benchmark methods on the cold-start protocol: MAE and NDCG@3 per scenario, over seeds.

    Settings come from layers: defaults < --config files < options and --set. Results go to
    --out: results.json (every number and how it was made), predictions.csv (one row per test
    rating, to recompute any metric), summary.md, summary.tex and plot.png/svg.

    \b
    Examples:
      metarec bench --methods global-mean,baseline-predictor --dataset ml-1m --data-dir ../shared/data
      metarec bench -m mamo,melu --seeds 0-4 --jobs 2 --set mamo.epochs=10
      metarec bench --resume --out runs/20240101-120000
      metarec bench --tuned runs/tune-ml1m --seeds 0-2 --data-dir ../shared/data
    """
    from rich.console import Console

    from metarec.bench.config import (
        check_provenance, check_tuned, layer_from_file, layer_from_overrides, parse_methods, parse_seeds, resolve_config, tuned_layers,
        parse_presets,
    )
    # The runner and the report (torch, the metrics, SciPy) load only once the settings hold, so a
    # refused setting costs a fraction of a second, not the import of everything.
    err = Console(stderr=True, soft_wrap=True)  # one line per message, also in a log file
    out_dir: Path | None = None
    try:
        layers: list[dict[str, Any]] = []
        if resume:
            out_path = Path(out) if out else _latest_run_dir()
            if out_path is None:
                from metarec.bench.runner import BenchError

                raise BenchError("--resume: no earlier benchmark under runs/; name it with --out")
            out = str(out_path)
            layers.append(_saved_layer(out_path))
        layers.extend(layer_from_file(f) for f in config_files)
        if tuned is not None:
            layers = tuned_layers(tuned, layers)
        cli: dict[str, Any] = {}
        if methods is not None:
            cli["methods"] = parse_methods(methods)
        if seeds is not None:
            cli["seeds"] = parse_seeds(seeds)
        for name, value in (
            ("dataset", dataset), ("data_dir", data_dir), ("dataset_config", dataset_config), ("device", device), ("out", out), ("jobs", jobs),
            ("threads", threads), ("offline", offline), ("epochs", epochs), ("clip_size", clip_size),
            ("n_boot", n_boot), ("progress", progress), ("ranking", ranking),
        ):
            if value is not None:
                cli[name] = value
        cli.update(executor_layer({"executor": executor, "ray_address": ray_address, "cpus_per_run": cpus_per_run,
                                   "gpus_per_run": gpus_per_run, "retries": retries}))
        if support_size is not None:
            cli["protocol"] = {"n_support": support_size}
        preset_layer = parse_presets(presets)
        layers.append({"bench": cli, "methods": preset_layer})
        if backend is not None:
            selected = resolve_config(*layers, layer_from_overrides(sets)).methods
            layers.append(_backend_layer(selected, backend))
        set_layer = layer_from_overrides(sets)
        layers.append(set_layer)
        if protocol_name == "item-warmup":
            _item_warmup(layers, set_layer, preset_layer, methods is not None, resume, err)
            return
        cfg = resolve_config(*layers)
        _check_selected(cfg.methods, {**set_layer["methods"], **preset_layer}, resume)
        _check_dataset(cfg, explicit=any("dataset" in (layer.get("bench") or {}) for layer in layers), err=err)
        if tuned is not None:
            check_tuned(cfg, tuned)
        check_provenance(cfg)
        from metarec.bench.runner import default_out_dir, run_bench

        out_dir = Path(cfg.out) if cfg.out else default_out_dir()
        cfg.out = str(out_dir)
        results = run_bench(cfg, out=out_dir, resume=resume, drop_failed_runs=drop_failed, console=err,
                            command=["metarec", *sys.argv[1:]])
    except KeyboardInterrupt:
        err.print(
            f"\n[yellow]interrupted[/]: finished runs and training checkpoints are kept; continue with\n"
            f"  metarec bench --resume --out {out_dir}"
        )
        sys.exit(130)

    from metarec.bench.report import rich_tables, table_console, views_from_paths

    console = table_console()
    out_dir = Path(results["config"]["out"])
    if any(e.get("cells") for e in results["methods"].values()):
        for table in rich_tables(views_from_paths([out_dir]), width=console.width):
            console.print(table)
    failed = [r for r in results["runs"] if r.get("status") != "ok"]
    untrained = sorted({r["method"] for r in results["runs"] if r.get("untrained")})
    if untrained:
        err.print(f"[yellow]untrained[/]: {', '.join(untrained)} ran with epochs = 0 (initial parameters evaluated)")
    for d in results.get("dropped_runs", []):
        err.print(f"dropped: {d['method']} seed {d['seed']} (--drop-failed): {d.get('error')}")
    if not (out_dir / "plot.png").exists() and any(e.get("cells") for e in results["methods"].values()):
        err.print("no plot: matplotlib is not installed (pip install 'metarec[plot]')")
    err.print(f"results: {out_dir / 'results.json'} · predictions: {out_dir / 'predictions.csv'} · "
              f"summary: {out_dir / 'summary.md'} · wall time {results['wall_time_s']:.1f} s")
    if failed:
        for r in failed:
            err.print(f"[red]failed[/]: {r['method']} seed {r['seed']}: {r.get('error')}")
        err.print("tracebacks are in results.json (runs[].traceback)")
        sys.exit(1)


#: What ``--protocol item-warmup`` runs when ``--methods`` is not given.
WARMUP_DEFAULT_METHODS = ("deepfm", "feature-only", "dropoutnet", "metaemb", "mwuf", "cvar", "lwa", "nlba")


def _item_warmup(layers: list[dict[str, Any]], set_layer: dict[str, Any], preset_layer: dict[str, Any],
                 methods_given: bool, resume: bool, err: Any) -> None:
    """``metarec bench --protocol item-warmup``: the item warm-up harness (:mod:`metarec.warmup.bench`)."""
    from metarec.bench.config import resolve_config
    from metarec.bench.runner import BenchError, default_out_dir
    from metarec.warmup.bench import run_warmup_bench

    if resume:
        raise BenchError("--resume is not available with --protocol item-warmup (its runs take minutes): start again")
    warmup: dict[str, Any] = {}
    for layer in layers:  # protocol.X keys are the item warm-up protocol's (WarmupConfig), not ProtocolConfig's
        warmup.update((layer.get("bench") or {}).pop("protocol", None) or {})
    if not methods_given:
        layers.append({"bench": {"methods": list(WARMUP_DEFAULT_METHODS)}, "methods": {}})
    cfg = resolve_config(*layers)
    if cfg.executor == "ray":
        raise BenchError("--executor ray is not available with --protocol item-warmup (runs execute in this process)")
    _check_selected(cfg.methods, {**set_layer["methods"], **preset_layer}, resume)
    _check_dataset(cfg, explicit=any("dataset" in (layer.get("bench") or {}) for layer in layers), err=err)
    out_dir = Path(cfg.out) if cfg.out else default_out_dir()
    cfg.out = str(out_dir)
    results = run_warmup_bench(cfg, out=out_dir, protocol_overrides=warmup, console=err,
                               command=["metarec", *sys.argv[1:]])
    click.echo((out_dir / "summary.md").read_text())
    failed = [r for r in results["runs"] if r.get("status") != "ok"]
    err.print(f"results: {out_dir / 'results.json'} · predictions: {out_dir / 'predictions.csv.gz'} · "
              f"summary: {out_dir / 'summary.md'} · wall time {results['wall_time_s']:.1f} s")
    if failed:
        err.print("tracebacks are in runs/<method>__seed<k>.json")
        sys.exit(1)
