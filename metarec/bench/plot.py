"""Per-scenario bar charts of MAE, within-user NDCG@k and the paper's clip NDCG@k with error bars (matplotlib, an optional extra).

Error bars are the 95 % bootstrap intervals over test users when the results have them (our
runs), else ± one standard deviation over seeds; published single-run values have none.
Without matplotlib (``pip install metarec[plot]``) nothing is drawn and no error is raised:
the tables carry every number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from metarec.bench.results import CELLS, ResultsView


def plot_views(views: Sequence[ResultsView], stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Draw the comparison to ``<stem>.png`` / ``<stem>.svg`` (``<stem>-<dataset>.*`` when the
    views cover several datasets); returns the written paths."""
    from metarec.bench.report import group_views

    groups = group_views(views)
    if len(groups) > 1:
        stem = Path(stem)
        out: list[Path] = []
        for g in groups:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in g[0].dataset)
            out.extend(_plot(g, stem.with_name(f"{stem.name}-{safe}"), formats))
        return out
    return _plot(views, stem, formats)


def _plot(views: Sequence[ResultsView], stem: str | Path, formats: Sequence[str]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    import numpy as np

    series = [(v, m) for v in views for m in v.methods]
    if not series:
        return []
    many = len(views) > 1
    cells = [c for c in CELLS if any(v.cell(m, c) for v, m in series)]
    width_in = max(7.0, min(16.0, 2.0 + 0.3 * len(cells) * len(series)))
    panels = ((lambda v: "mae", "MAE (lower is better)"),
              (lambda v: v.ndcg_key, "NDCG@{k} within user (higher is better)"),
              (lambda v: v.clip_key, "clip NDCG@{k}, the paper's A.2.3 (higher is better)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 9.5), sharex=True)
    width = 0.8 / len(series)
    x = np.arange(len(cells))
    for ax, (key_of, title) in zip(axes, panels):
        for j, (v, m) in enumerate(series):
            key = key_of(v)
            means, lo, hi = [], [], []
            for c in cells:
                entry = v.cell(m, c).get(key) or {}
                mean = entry.get("mean")
                mean = float("nan") if mean is None else float(mean)
                ci = entry.get("ci")
                std = entry.get("std")
                if ci and ci[0] is not None and math.isfinite(mean):
                    lo.append(max(mean - float(ci[0]), 0.0))
                    hi.append(max(float(ci[1]) - mean, 0.0))
                elif std is not None:
                    lo.append(float(std))
                    hi.append(float(std))
                else:
                    lo.append(0.0)
                    hi.append(0.0)
                means.append(mean)
            label = f"{v.label}: {m}" if many else m
            hatch = "//" if v.published else None
            yerr = [lo, hi] if any(lo) or any(hi) else None  # published values carry no spread
            ax.bar(x + (j - (len(series) - 1) / 2) * width, means, width, yerr=yerr, capsize=2,
                   label=label, hatch=hatch, alpha=0.9)
        ax.set_xticks(x)
        ax.set_xticklabels(cells)
        ax.set_title(title.format(k=views[0].k))
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[1:]:
        ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    axes[0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    datasets = ", ".join(sorted({v.dataset for v in views}))
    fig.suptitle(f"metarec bench · {datasets} · error bars: 95 % bootstrap CI over test users "
                 "(else ± std over seeds)", fontsize="small")
    fig.tight_layout()
    stem = Path(stem)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=fmt, dpi=150)
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written


__all__ = ["plot_views"]
