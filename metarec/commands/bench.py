"""``metarec bench``: compare methods on the same splits, seeds and metrics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from metarec.runtime import DEVICE_CHOICES


def _latest_run_dir(root: Path = Path("runs")) -> Path | None:
    if not root.is_dir():
        return None
    dirs = [d for d in root.iterdir() if (d / "config.json").exists()]
    return max(dirs, key=lambda d: (d / "config.json").stat().st_mtime) if dirs else None


def _saved_layer(out: Path) -> dict[str, Any]:
    """The resolved config of an earlier run as the lowest layer of a resumed one."""
    from metarec.bench.config import CONFIG_FORMAT
    from metarec.bench.results import read_json

    path = out / "config.json"
    if not path.exists():
        raise click.ClickException(f"--resume: {out} holds no config.json; it is not a metarec bench folder")
    saved = read_json(path)
    if saved.get("format") != CONFIG_FORMAT:
        raise click.ClickException(f"{path}: unknown format {saved.get('format')!r}")
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


@click.command("bench")
@click.option("--methods", "-m", help="Comma-separated learner names (see `metarec methods`). [default: global-mean,baseline-predictor]")
@click.option("--dataset", "-d", help="ml-1m, book-crossing, synthetic, ... [default: ml-1m]")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the raw dataset files.")
@click.option("--dataset-config", type=click.Path(dir_okay=False),
              help="Loader TOML: a custom dataset's schema, or [loader] options of a built-in one.")
@click.option("--seeds", "-s", help="Run seeds: 0,1,2 or 0-4 (each decides the user split and the initialisation). [default: 0,1,2]")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), help="auto = CUDA when available. [default: auto]")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder. [default: runs/<timestamp>]")
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="TOML config file(s), e.g. benchmarks/configs/default.toml; later files win.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a setting: mamo.epochs=3, jobs=2, protocol.n_support=10 (repeatable).")
@click.option("--preset", "presets", multiple=True, metavar="METHOD=NAME", help="Use a named preset of a method (repeatable).")
@click.option("--tuned", "tuned", type=click.Path(exists=True),
              help="Run with the best settings of a `metarec tune` folder (its best.toml); results record the study.")
@click.option("--resume", is_flag=True, help="Continue an interrupted benchmark in --out (default: the latest under runs/), or extend a finished one with more --seeds/--methods.")
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
@click.option("--progress/--no-progress", default=None, help="Live progress display. [default: on]")
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
    jobs: int | None,
    threads: int | None,
    offline: bool | None,
    epochs: int | None,
    support_size: int | None,
    clip_size: int | None,
    n_boot: int | None,
    progress: bool | None,
    backend: str | None,
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
        check_tuned, layer_from_file, layer_from_overrides, parse_methods, parse_seeds, resolve_config, tuned_layers,
    )
    from metarec.bench.report import rich_tables, table_console, views_from_paths
    from metarec.bench.runner import BenchError, default_out_dir, run_bench
    from metarec.config import ConfigError

    console = table_console()
    err = Console(stderr=True)
    out_dir: Path | None = None
    try:
        layers: list[dict[str, Any]] = []
        if resume:
            out_path = Path(out) if out else _latest_run_dir()
            if out_path is None:
                raise click.ClickException("--resume: no earlier benchmark under runs/; name it with --out")
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
            ("n_boot", n_boot), ("progress", progress),
        ):
            if value is not None:
                cli[name] = value
        if support_size is not None:
            cli["protocol"] = {"n_support": support_size}
        preset_layer: dict[str, dict[str, Any]] = {}
        for item in presets:
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ConfigError(f"--preset {item!r} is not of the form METHOD=NAME")
            preset_layer.setdefault(name.strip(), {})["preset"] = value.strip()
        layers.append({"bench": cli, "methods": preset_layer})
        if backend is not None:
            selected = resolve_config(*layers, layer_from_overrides(sets)).methods
            layers.append(_backend_layer(selected, backend))
        layers.append(layer_from_overrides(sets))
        cfg = resolve_config(*layers)
        if tuned is not None:
            check_tuned(cfg, tuned)
        out_dir = Path(cfg.out) if cfg.out else default_out_dir()
        cfg.out = str(out_dir)
        results = run_bench(cfg, out=out_dir, resume=resume, console=err, command=["metarec", *sys.argv[1:]])
    except (ConfigError, BenchError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        err.print(
            f"\n[yellow]interrupted[/]: finished runs and training checkpoints are kept; continue with\n"
            f"  metarec bench --resume --out {out_dir}"
        )
        sys.exit(130)

    out_dir = Path(results["config"]["out"])
    if any(e.get("cells") for e in results["methods"].values()):
        for table in rich_tables(views_from_paths([out_dir]), width=console.width):
            console.print(table)
    failed = [r for r in results["runs"] if r.get("status") != "ok"]
    if not (out_dir / "plot.png").exists() and any(e.get("cells") for e in results["methods"].values()):
        err.print("no plot: matplotlib is not installed (pip install 'metarec[plot]')")
    err.print(f"results: {out_dir / 'results.json'} · predictions: {out_dir / 'predictions.csv'} · "
              f"summary: {out_dir / 'summary.md'} · wall time {results['wall_time_s']:.1f} s")
    if failed:
        for r in failed:
            err.print(f"[red]failed[/]: {r['method']} seed {r['seed']}: {r.get('error')}")
        err.print("tracebacks are in results.json (runs[].traceback)")
        sys.exit(1)
