"""``metarec fit``'s work: train one method exactly as ``metarec bench`` does, then write a model folder.

The split, the learner and its settings are built by the benchmark's own functions
(:func:`~metarec.bench.run.load_bench_split`, the same layered :class:`BenchConfig`, the same
seeding), so with ``holdout=True`` the saved model is the one a benchmark run of that method and
seed evaluates, and its held-out metrics are the benchmark's. Without holdout, the model is
trained on every user the protocol keeps (training, validation and test users).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from metarec.bench.config import BenchConfig
from metarec.serving.catalogue import Catalogue, derive_policies
from metarec.tasks import FeatureTable, TaskSet


@dataclass
class FitResult:
    """What :func:`fit_model` did: where the folder is, the card, and the learner."""

    path: Path
    card: dict[str, Any]
    learner: Any


def concat_tasksets(parts: Sequence[TaskSet]) -> TaskSet:
    """One :class:`TaskSet` of several splits' tasks (same slots), in user-table order."""
    parts = [p for p in parts if p is not None and len(p)]
    first = parts[0]
    for p in parts[1:]:
        if p.n_support != first.n_support or p.n_query != first.n_query:
            raise ValueError("task sets differ in support/query size")
    cat = {name: torch.cat([getattr(p, name) for p in parts]) for name in (
        "user_index", "support_items", "support_ratings", "support_mask", "query_items", "query_ratings",
        "query_mask", "query_scenario")}
    order = torch.argsort(cat["user_index"], stable=True)
    info = {**first.info, "part": "+".join(str(p.info.get("part", "?")) for p in parts)}
    return TaskSet(schema=first.schema, users=first.users, items=first.items, info=info,
                   **{k: v[order] for k, v in cat.items()})


def item_rating_counts(parts: Sequence[TaskSet], n_items: int) -> np.ndarray:
    """Ratings per item row over the tasks of ``parts`` (support and query slots alike)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for p in parts:
        if p is None:
            continue
        for items, mask in ((p.support_items, p.support_mask), (p.query_items, p.query_mask)):
            counts += np.bincount(items[mask].numpy(), minlength=n_items)
    return counts


def read_titles(path: str | Path) -> dict[str, str]:
    """Item titles from a CSV (or TSV) file with a header row: the item id first, the title second."""
    path = Path(path)
    text = path.read_text("utf-8")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    rows = list(csv.reader(text.splitlines(), dialect=dialect))
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"{path}: line 1: expected a header with an item-id and a title column")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2:
            raise ValueError(f"{path}: line {n}: expected an item id and a title, got {row!r}")
        out[row[0].strip()] = row[1].strip()
    return out


def dataset_titles(cfg: BenchConfig) -> dict[str, str] | None:
    """Titles of a built-in dataset that ships them (ML-1M's ``movies.dat``), else None."""
    if cfg.dataset != "ml-1m":
        return None
    from metarec.data.catalog import dataset_dir, get_entry
    from metarec.data.readers import read_separated

    directory = dataset_dir(get_entry("ml-1m"), cfg.data_dir)
    movies = read_separated(Path(directory) / "movies.dat", ["item_id", "title", "genres"])
    return {str(i).strip(): str(t) for i, t in zip(movies.columns["item_id"], movies.columns["title"])}


def fit_model(
    cfg: BenchConfig,
    method: str,
    out: str | Path,
    *,
    seed: int = 0,
    holdout: bool = False,
    catalogue: str = "rated",
    titles: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> FitResult:
    """Train ``method`` on ``cfg``'s dataset and write the model folder ``out``."""
    from metarec.bench.environment import git_info
    from metarec.bench.results import MetricSpec, run_metrics
    from metarec.bench.run import _query_rows, dataset_info, load_bench_split
    from metarec.registry import get_learner
    from metarec.runtime import resolve_device, seed_everything
    from metarec.serving.persist import save_model

    if catalogue not in ("rated", "all"):
        raise ValueError(f"catalogue must be 'rated' or 'all', got {catalogue!r}")
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(seed)
    t0 = time.perf_counter()
    split = load_bench_split(cfg, seed)
    log(f"data: {split.info.get('dataset')} · {split.info.get('train_users')} training / {split.info.get('test_users')} test users")
    cls = get_learner(method)
    settings = cfg.settings_for(method)
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    learner = cls.from_settings(split.train.schema, preset=settings.preset,
                                overrides=cfg.learner_overrides(method, fields), device=device, seed=seed)
    parts = [split.train, split.validation, split.test]
    fit_on = split.train if holdout else concat_tasksets(parts)
    log(f"training {method} on {len(fit_on)} users ({'protocol training users; test users held out' if holdout else 'all kept users'})")
    t_fit = time.perf_counter()
    learner.meta_fit(fit_on, validation=split.validation if holdout else None)
    fit_seconds = time.perf_counter() - t_fit

    metrics = None
    if holdout:
        pred = learner.predict(split.test)
        _, arrays = _query_rows(split, pred, method, seed)
        scores = run_metrics(arrays["prediction"], arrays["rating"], arrays["user_id"], arrays["scenario"],
                             n_boot=cfg.n_boot, level=cfg.ci_level, seed=seed,
                             spec=MetricSpec.from_config(cfg.to_dict()))
        metrics = {"test_users": len(split.test), "k": cfg.k, **scores}
        o = scores["metrics"]["overall"]
        log(f"held-out: MAE {o['mae']:.4f} · NDCG@{cfg.k} {o[f'ndcg@{cfg.k}']:.4f} over {len(split.test)} test users")

    items: FeatureTable = split.train.items
    counts = item_rating_counts(parts, len(items))
    cold_max = split.info["protocol"]["item_cold_max_ratings"]
    rows = np.flatnonzero(counts > 0) if catalogue == "rated" else np.arange(len(items))
    idx = torch.as_tensor(rows, dtype=torch.long)
    table = FeatureTable(items.features, {k: v[idx] for k, v in items.columns.items()}, items.ids[rows])
    if titles is None:
        titles = dataset_titles(cfg)
    title_list = None if titles is None else [titles.get(str(i), "") for i in table.ids]
    cat = Catalogue(table, counts[rows] <= cold_max, counts[rows], title_list)
    fitted_rows = fit_on.user_index.unique().numpy()
    policies = derive_policies(learner.schema, fit_on.users, fitted_rows)

    data = dataset_info(split)
    git = git_info()
    info = {
        "preset": settings.preset,
        "overrides": dict(cfg.learner_overrides(method, fields)),
        # defaults / paper or hand preset / tuned, with the study of a `metarec tune` run (--tuned)
        "settings_source": cfg.settings_source(method, getattr(cls, "paper_presets", ("paper",))),
        "description": getattr(cls, "description", ""),
        "trained_on": "training users (test users held out)" if holdout else "all users kept by the protocol",
        "holdout": holdout,
        "fitted_users": int(len(fit_on)),
        "dataset": {k: data.get(k) for k in ("name", "checksum", "canonical", "protocol", "title")},
        "split_seed": seed,
        "git": git,
        "fit_seconds": round(fit_seconds, 2),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": list(command) if command else None,
    }
    card = model_card(method, learner, info, cat, metrics, cold_max)
    path = save_model(learner, out, method=method, catalogue=cat, policies=policies, info=info,
                      card=card, card_markdown=card_markdown(card))
    log(f"model folder: {path} ({time.perf_counter() - t0:.1f} s)")
    return FitResult(Path(path), card, learner)


def model_card(method: str, learner: Any, info: Mapping[str, Any], cat: Catalogue, metrics: Any, cold_max: int) -> dict[str, Any]:
    """The model card: what the model is, what it was trained on, how well it did on held-out users."""
    import metarec

    s = learner.schema
    return {
        "method": method,
        "description": info.get("description"),
        "learner_class": f"{type(learner).__module__}:{type(learner).__qualname__}",
        "preset": info.get("preset"),
        "settings_source": info.get("settings_source"),
        "config": dataclasses.asdict(learner.config),
        "seed": learner.seed,
        "dataset": info["dataset"],
        "trained_on": info["trained_on"],
        "fitted_users": info["fitted_users"],
        "rating_range": [s.rating_min, s.rating_max],
        "user_features": [f.name for f in s.user_features],
        "item_features": [f.name for f in s.item_features],
        "catalogue": {"items": len(cat), "warm": int((~cat.cold).sum()), "cold": int(cat.cold.sum()),
                      "rule": f"warm iff more than {cold_max} ratings among the protocol's ratings of all kept users",
                      "titles": cat.titles is not None},
        "held_out": metrics,
        "versions": {"metarec": metarec.__version__, "torch": torch.__version__},
        "git": info["git"],
        "fit_seconds": info["fit_seconds"],
        "created_utc": info["created_utc"],
        "command": info.get("command"),
        "intended_use": "recommending to a new user from their profile and first ratings (cold-start users)",
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """The model card as Markdown (``card.md``)."""
    d = card["dataset"]
    lines = [
        f"# Model card: {card['method']}",
        "",
        f"{card.get('description') or ''}",
        "",
        "| | |", "|---|---|",
        f"| method | `{card['method']}` ({card['learner_class']}) |",
        f"| preset | {card.get('preset') or '(none)'} |",
        f"| settings | {settings_line(card.get('settings_source'))} |",
        f"| seed | {card['seed']} |",
        f"| dataset | {d.get('name')} (checksum `{d.get('checksum') or 'n/a'}`, canonical: {d.get('canonical')}) |",
        f"| trained on | {card['trained_on']} ({card['fitted_users']} users) |",
        f"| rating range | {card['rating_range'][0]:g} to {card['rating_range'][1]:g} |",
        f"| user features | {', '.join(card['user_features']) or '(none)'} |",
        f"| item features | {', '.join(card['item_features']) or '(none)'} |",
        f"| catalogue | {card['catalogue']['items']} items ({card['catalogue']['warm']} warm, {card['catalogue']['cold']} cold; {card['catalogue']['rule']}) |",
        f"| versions | metarec {card['versions']['metarec']}, torch {card['versions']['torch']} |",
        f"| git commit | {(card.get('git') or {}).get('commit')}{' (dirty)' if (card.get('git') or {}).get('dirty') else ''} |",
        f"| training time | {card['fit_seconds']} s |",
        f"| created | {card['created_utc']} |",
        "",
    ]
    m = card.get("held_out")
    if m:
        k = m["k"]
        lines += ["## Held-out metrics", "", f"{m['test_users']} test users of the protocol (never seen in training).", "",
                  f"| scenario | MAE | NDCG@{k} | ratings |", "|---|---|---|---|"]
        for name, cell in m["metrics"].items():
            if not isinstance(cell, Mapping) or "mae" not in cell:
                continue
            n = cell.get("n_ratings", cell.get("n", ""))
            lines.append(f"| {name} | {cell['mae']:.4f} | {cell.get(f'ndcg@{k}', float('nan')):.4f} | {n} |")
        lines.append("")
    else:
        lines += ["## Held-out metrics", "", "None: the model was trained on every user (fit with `--holdout` to measure it).", ""]
    lines += ["## Settings", "", "```json", _json(card["config"]), "```", ""]
    if card.get("command"):
        lines += ["## Command", "", "```", " ".join(card["command"]), "```", ""]
    return "\n".join(lines)


def settings_line(source: Mapping[str, Any] | None) -> str:
    """Where the settings came from, in words: ``tuned (study melu of runs/t: best of 20 trials, pool mae 0.81)``."""
    if not source:
        return "(not recorded)"
    if source.get("kind") != "tuned":
        return str(source.get("kind"))
    value = source.get("best_value")
    best = f", {source.get('metric')} {value:.4f}" if isinstance(value, (int, float)) else ""
    tuned = (f"`metarec tune` study {source.get('study')} in {source.get('tune_dir')}, "
             f"best trial {source.get('best_trial')} of {source.get('trials')}{best}")
    if source.get("chosen") == "preset":  # the preset beat the study's best on the same pool
        return f"preset {source.get('preset')}, chosen on the tuning pool over the {tuned}"
    return f"tuned: {tuned}"


def _json(value: Any) -> str:
    import json

    from metarec.config import jsonable

    return json.dumps(jsonable(value), indent=2)


__all__ = ["FitResult", "card_markdown", "concat_tasksets", "fit_model", "item_rating_counts", "model_card", "read_titles", "settings_line"]
