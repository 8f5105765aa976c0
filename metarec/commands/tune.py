"""``metarec tune``: search every method's settings with the same budget on the tuning pool."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from metarec.commands.options import device_option, executor_layer, executor_options


def _saved_layers(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bench layer and the tune fields of an earlier tune (the lowest layer of a resumed one)."""
    from metarec.bench.results import read_json
    from metarec.tuning.study import TUNE_FORMAT

    path = out / "tune.json"
    if not path.exists():
        raise click.ClickException(f"--resume: {out} holds no tune.json; it is not a metarec tune folder")
    saved = read_json(path)
    if saved.get("format") != TUNE_FORMAT:
        raise click.ClickException(f"{path}: unknown format {saved.get('format')!r}")
    config = dict(saved["config"])
    bench = dict(config.pop("bench"))
    methods = {
        name: {**({"preset": s["preset"]} if s.get("preset") is not None else {}), **s.get("overrides", {})}
        for name, s in bench.pop("method_settings", {}).items()
    }
    bench.pop("provenance", None)
    return {"bench": bench, "methods": methods}, config


@click.command("tune")
@click.option("--methods", "-m", help="Comma-separated learner names (see `metarec methods`).")
@click.option("--dataset", "-d", help="ml-1m, book-crossing, synthetic, ... [default: ml-1m]")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the raw dataset files.")
@click.option("--dataset-config", type=click.Path(dir_okay=False),
              help="Loader TOML: a custom dataset's schema, or [loader] options of a built-in one.")
@click.option("--trials", "-n", type=click.IntRange(min=1), help="Trials per method (the same budget for every method). [default: 20]")
@click.option("--trials-for", "trials_for", multiple=True, metavar="METHOD=N", help="Another budget for one method (repeatable).")
@click.option("--metric", type=click.Choice(["mae", "ndcg"]), help="Score on the pool: overall MAE (minimised) or NDCG@k (maximised). [default: mae]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per method after which no new trial starts.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Trials run at once (worker processes; Ray tasks with --executor ray), sharing each method's study. [default: 1]")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per trial. [default: cores / jobs]")
@click.option("--seed", type=click.IntRange(min=0), help="Seed of the sampler and of every trial's initialisation. [default: 0]")
@click.option("--split-seed", type=click.IntRange(min=0), help="Run seed whose training users the trials train on. [default: 0]")
@click.option("--pruner", type=click.Choice(["median", "halving", "none"]), help="Pruner fed by the per-epoch pool score. [default: median]")
@click.option("--startup-trials", type=click.IntRange(min=0), help="Random trials before TPE and the pruner act. [default: 5]")
@click.option("--epochs", type=click.IntRange(min=0), help="Fix epochs of every method that has the setting (not searched then).")
@click.option("--tuning-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of the users in the tuning pool (protocol.tuning_fraction). [default: 0.1]")
@device_option
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output folder. [default: runs/tune-<timestamp>]")
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="Bench TOML config file(s) (dataset, protocol, presets and fixed values); later files win.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Fix a setting (not searched): mamo.epochs=5, protocol.n_support=10 (repeatable).")
@click.option("--preset", "presets", multiple=True, metavar="METHOD=NAME", help="Start a method's trials from a preset (repeatable).")
@click.option("--resume", is_flag=True, help="Continue a stopped tune in --out (trials that were running run again), or raise its budget.")
@click.option("--offline/--online", default=None, help="Forbid / allow network access when loading data. [default: offline]")
@click.option("--progress/--no-progress", default=None, help="Live progress display. [default: on]")
@executor_options("trial", " (any executor: the trial is recorded as interrupted and its settings run again as a new trial)")
@click.option("--storage-host", metavar="HOST",
              help="With --executor ray: the address the driver serves the study on (Optuna's gRPC storage proxy), "
                   "reachable from every node. [default: 127.0.0.1 for a cluster on this machine, else the driver's "
                   "cluster address]")
@click.option("--storage-port", type=click.IntRange(0, 65535), help="Port of that server (0: any free port). [default: 0]")
def tune(
    methods: str | None, dataset: str | None, data_dir: str | None, dataset_config: str | None, trials: int | None,
    trials_for: tuple[str, ...], metric: str | None, timeout: float | None, jobs: int | None, threads: int | None,
    seed: int | None, split_seed: int | None, pruner: str | None, startup_trials: int | None, epochs: int | None,
    tuning_fraction: float | None, device: str | None, out: str | None, config_files: tuple[str, ...],
    sets: tuple[str, ...], presets: tuple[str, ...], resume: bool, offline: bool | None, progress: bool | None,
    executor: str | None = None, ray_address: str | None = None, cpus_per_run: float | None = None,
    gpus_per_run: float | None = None, retries: int | None = None, storage_host: str | None = None,
    storage_port: int | None = None,
) -> None:
    """Tune methods with Optuna (TPE + pruning) on a tuning pool that is never a test user.

    Every method gets the same number of trials. A trial trains on the training users of one
    split and scores on the pool (protocol.tuning_fraction, default 0.1 of the users, the same
    for every run seed). Per method, --out gets best.toml (what `metarec bench -c` reads),
    trials.csv/json and history.png; the folder gets best.toml for all methods (`metarec bench
    --tuned DIR`), summary.md and the Optuna journal (optuna.log), which --resume continues.

    \b
    Examples:
      metarec tune --methods baseline-predictor,melu --trials 20 --dataset ml-1m --data-dir ../shared/data
      metarec tune -m mamo --trials 30 --jobs 2 --epochs 5 --out runs/tune-mamo
      metarec tune -m melu --trials 40 --jobs 8 --executor ray --ray-address auto --out runs/tune-melu
      metarec tune --resume --out runs/tune-mamo
      metarec bench --tuned runs/tune-mamo --seeds 0-4
    """
    from rich.console import Console

    from metarec.bench.config import layer_from_file, layer_from_overrides, parse_methods, parse_presets, resolve_config
    from metarec.config import ConfigError, build_config
    from metarec.tuning.outputs import rich_summary
    from metarec.tuning.study import TuneConfig, TuneError, with_pool

    err = Console(stderr=True)
    out_dir: Path | None = None
    try:
        layers: list[dict[str, Any]] = []
        tune_fields: dict[str, Any] = {}
        if resume:
            if not out:
                raise click.ClickException("--resume needs --out: the tune folder to continue")
            bench_layer, tune_fields = _saved_layers(Path(out))
            layers.append(bench_layer)
        layers.extend(layer_from_file(f) for f in config_files)
        cli: dict[str, Any] = {}
        if methods is not None:
            cli["methods"] = parse_methods(methods)
        for name, value in (("dataset", dataset), ("data_dir", data_dir), ("dataset_config", dataset_config),
                            ("device", device), ("jobs", jobs), ("threads", threads), ("offline", offline),
                            ("epochs", epochs), ("progress", progress)):
            if value is not None:
                cli[name] = value
        cli.update(executor_layer({"executor": executor, "ray_address": ray_address, "cpus_per_run": cpus_per_run,
                                   "gpus_per_run": gpus_per_run, "retries": retries}))
        if tuning_fraction is not None:
            cli["protocol"] = {"tuning_fraction": tuning_fraction}
        preset_layer = parse_presets(presets)
        layers.append({"bench": cli, "methods": preset_layer})
        layers.append(layer_from_overrides(sets))
        if not resume and methods is None and not any("methods" in layer.get("bench", {}) for layer in layers):
            raise click.ClickException("name the methods to tune: --methods a,b (see `metarec methods`)")
        bench_cfg = with_pool(resolve_config(*layers))
        bench_cfg.seeds = (0,)
        for name, value in (("trials", trials), ("metric", metric), ("timeout", timeout), ("seed", seed),
                            ("split_seed", split_seed), ("pruner", pruner), ("startup_trials", startup_trials),
                            ("storage_host", storage_host), ("storage_port", storage_port)):
            if value is not None:
                tune_fields[name] = value
        per_method = dict(tune_fields.get("trials_per_method") or {})
        for item in trials_for:
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit() or int(value) < 1:
                raise ConfigError(f"--trials-for {item!r} is not of the form METHOD=N with N >= 1")
            per_method[name.strip()] = int(value)
        unknown = sorted(set(per_method) - set(bench_cfg.methods))
        if unknown:
            raise ConfigError(f"--trials-for names method(s) not being tuned: {', '.join(unknown)}")
        tune_fields["trials_per_method"] = per_method
        cfg = build_config(TuneConfig, {"bench": bench_cfg, **tune_fields}, where="tune config")
        out_dir = Path(out) if out else Path("runs") / time_stamp()
        bench_cfg.out = str(out_dir)
        from metarec.tuning.run import run_tune

        rows = run_tune(cfg, out=out_dir, resume=resume, console=err, command=["metarec", *sys.argv[1:]])
    except (ConfigError, TuneError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        err.print(f"\n[yellow]interrupted[/]: finished trials are in the journal; continue with\n"
                  f"  metarec tune --resume --out {out_dir}")
        sys.exit(130)
    from metarec.bench.report import table_console

    console = table_console()
    console.print(rich_summary(rows, cfg.metric, title=f"metarec tune: {cfg.bench.dataset} ({out_dir})"))
    err.print(f"best settings: {out_dir / 'best.toml'} (metarec bench --tuned {out_dir}) · trials: "
              f"{out_dir}/<method>/trials.csv · summary: {out_dir / 'summary.md'}")


def time_stamp() -> str:
    """``tune-<timestamp>``: the default output folder's name."""
    import time

    return time.strftime("tune-%Y%m%d-%H%M%S")
