"""``metarec fit``: train one method and write a self-contained model folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from metarec.commands.options import device_option


@click.command("fit")
@click.option("--method", "-m", required=True, help="Learner name (see `metarec methods`).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--dataset", "-d", help="ml-1m, book-crossing, synthetic, custom ... [default: ml-1m]")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the raw dataset files.")
@click.option("--dataset-config", type=click.Path(dir_okay=False),
              help="Loader TOML: a custom dataset's schema, or [loader] options of a built-in one.")
@click.option("--seed", "-s", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run seed: the user split (with --holdout) and the initialisation, as in `metarec bench`.")
@click.option("--config", "-c", "config_files", multiple=True, type=click.Path(dir_okay=False),
              help="Bench-style TOML config file(s), e.g. benchmarks/configs/mamo.toml; later files win.")
@click.option("--preset", help="A named preset of the method.")
@click.option("--tuned", "tuned", type=click.Path(exists=True),
              help="Fit with the best settings of a `metarec tune` folder (its best.toml); the model card records the study.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting: mamo.epochs=3 (repeatable).")
@click.option("--epochs", type=click.IntRange(min=0), help="Set the method's epochs.")
@click.option("--holdout", is_flag=True,
              help="Train on the protocol's training users only and report metrics on its test users (the bench's run).")
@click.option("--catalogue", type=click.Choice(["rated", "all"]), default="rated", show_default=True,
              help="Items to recommend from: those rated in the data (warm/cold known), or every item of the item table.")
@click.option("--titles", type=click.Path(dir_okay=False, exists=True),
              help="CSV (or .tsv) with a header, item id then title (ML-1M's titles are read from movies.dat).")
@device_option
@click.option("--threads", type=click.IntRange(min=1), help="torch threads.")
@click.option("--offline/--online", default=None, help="Forbid / allow network access when loading data. [default: offline]")
@click.option("--force", is_flag=True, help="Replace an existing model folder at --out.")
def fit(method: str, out: str, dataset: str | None, data_dir: str | None, dataset_config: str | None, seed: int,
        config_files: tuple[str, ...], preset: str | None, tuned: str | None, sets: tuple[str, ...], epochs: int | None, holdout: bool,
        catalogue: str, titles: str | None, device: str | None, threads: int | None, offline: bool | None,
        force: bool) -> None:
    """Train METHOD on a dataset and write a model folder for `metarec recommend` / `metarec serve`.

    Settings are layered exactly as in `metarec bench` (defaults < --config < --tuned < options
    and --set), and training is the bench's: with --holdout the folder holds the model a bench run
    of the same method and seed evaluates, and its model card holds that run's held-out metrics.

    \b
    Examples:
      metarec fit -m mamo --dataset ml-1m --data-dir ../shared/data -o models/mamo --holdout
      metarec fit -m melu -c benchmarks/configs/melu.toml --data-dir ../shared/data -o models/melu
      metarec fit -m melu --tuned runs/tune-ml1m --data-dir ../shared/data -o models/melu --holdout
    """
    from rich.console import Console

    from metarec.bench.config import check_tuned, layer_from_file, layer_from_overrides, resolve_config, tuned_layers
    from metarec.bench.runner import BenchError, check_methods
    from metarec.config import ConfigError
    from metarec.data.readers import DataNotFoundError
    from metarec.serving.fit import fit_model, read_titles
    from metarec.serving.folder import MANIFEST

    err = Console(stderr=True)
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        if not (target / MANIFEST).exists():
            raise click.ClickException(f"{target} holds files but is not a model folder; choose another --out "
                                       "(--force replaces model folders only)")
        if not force:
            raise click.ClickException(f"{target} already holds a model folder; pass --force to replace it or choose another --out")
    try:
        layers: list[dict[str, Any]] = [layer_from_file(f) for f in config_files]
        if tuned is not None:
            layers = tuned_layers(tuned, layers)
            in_tune = sorted(layers[-1]["methods"])
            if method not in in_tune:
                raise ConfigError(f"--tuned {tuned}: the tune holds no settings for {method!r} (it tuned "
                                  f"{', '.join(in_tune) or 'nothing'}); tune it first, or fit without --tuned")
        cli: dict[str, Any] = {"methods": [method], "seeds": [seed], "progress": False}
        for name, value in (("dataset", dataset), ("data_dir", data_dir), ("dataset_config", dataset_config),
                            ("device", device), ("threads", threads), ("offline", offline)):
            if value is not None:
                cli[name] = value
        method_layer: dict[str, Any] = {}
        if preset is not None:
            method_layer["preset"] = preset
        if epochs is not None:
            method_layer["epochs"] = epochs
        layers.append({"bench": cli, "methods": {method: method_layer} if method_layer else {}})
        layers.append(layer_from_overrides(sets))
        cfg = resolve_config(*layers)
        if tuned is not None:
            check_tuned(cfg, tuned)
        broken = check_methods(cfg)
        if method in broken:
            raise click.ClickException(broken[method].split("\n", 1)[0])
        title_map = read_titles(titles) if titles else None
        if target.exists() and force:
            import shutil

            shutil.rmtree(target)
        result = fit_model(cfg, method, target, seed=seed, holdout=holdout, catalogue=catalogue, titles=title_map,
                           command=["metarec", *sys.argv[1:]], log=lambda s: err.print(s, highlight=False))
    except (ConfigError, BenchError, DataNotFoundError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    card = result.card
    err.print(f"[green]wrote[/] {result.path}: {card['catalogue']['items']} items, "
              f"trained on {card['fitted_users']} users in {card['fit_seconds']} s; card: {result.path / 'card.md'}")
