"""Per-scenario bar charts of MAE, within-user NDCG@k and the paper's clip NDCG@k with error bars,
and the forest plot of every method's MAE against the best simple baseline's (matplotlib, an
optional extra).

Error bars are the 95 % bootstrap intervals over test users when the results have them (our
runs), else ± one standard deviation over seeds; published single-run values have none.
Without matplotlib (``pip install metarec[plot]``) nothing is drawn and no error is raised:
the tables carry every number.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from metarec.bench.results import CELLS, ResultsView, reported_holm_p


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
    return save_figure(fig, stem, formats)


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str], *, dated: bool = True) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, each through a temporary file (a reader
    never sees half a file), then close it. ``dated=False`` leaves the SVG's date out, so that
    re-rendering the same figure gives the same bytes (the committed forest and CD plots)."""
    import matplotlib.pyplot as plt

    stem = Path(stem)
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=fmt, dpi=150, metadata=None if dated or fmt != "svg" else {"Date": None})
        tmp.replace(path)
        written.append(path)
    plt.close(fig)
    return written


#: The significance level of the forest plot's marks (Holm-adjusted p of the baseline family).
FOREST_ALPHA = 0.05


def forest_plot(view: ResultsView, baseline_tests: Mapping[str, Any] | None, stem: str | Path,
                metric: str = "mae", formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Per cell, each method's ``metric`` (mean over seeds) with its 95 % interval, against the
    best simple baseline's interval (grey band) and mean (dashed line), to ``<stem>.png/.svg``.

    A method whose difference from the baseline has a Holm-adjusted p < 0.05 in the results'
    baseline family is drawn filled (green: lower error, red: higher), else hollow. Returns the
    written paths (none without matplotlib or without baseline tests). The SVG carries no date
    and fixed ids, so the same results draw the same file.
    """
    if not baseline_tests or not baseline_tests.get("baseline"):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    base = str(baseline_tests["baseline"])
    methods = [m for m in view.methods if m != base] + ([base] if base in view.methods else [])
    cells = [c for c in CELLS if any((view.cell(m, c).get(metric) or {}).get("mean") is not None for m in methods)]
    if not methods or not cells:
        return []
    marks = {(t["a"], t["cell"]): t for t in baseline_tests.get("tests", []) if t.get("metric") == metric}
    test_names = {reported_holm_p(t)[1] for t in marks.values() if reported_holm_p(t)[0] is not None}
    with matplotlib.rc_context({"svg.hashsalt": "metarec-forest"}):
        fig, axes = plt.subplots(1, len(cells), figsize=(2.6 * len(cells) + 2.2, 0.38 * len(methods) + 1.8),
                                 sharey=True, squeeze=False)
        y = list(range(len(methods)))[::-1]
        for ax, cell in zip(axes[0], cells):
            b = view.cell(base, cell).get(metric) or {}
            if b.get("mean") is not None:
                ci = b.get("ci")
                if ci and ci[0] is not None:
                    ax.axvspan(float(ci[0]), float(ci[1]), color="0.85", zorder=0)
                ax.axvline(float(b["mean"]), color="0.4", linestyle="--", linewidth=1, zorder=1)
            for yy, m in zip(y, methods):
                e = view.cell(m, cell).get(metric) or {}
                if e.get("mean") is None:
                    continue
                mean = float(e["mean"])
                ci = e.get("ci")
                err = None
                if ci and ci[0] is not None:
                    err = [[max(mean - float(ci[0]), 0.0)], [max(float(ci[1]) - mean, 0.0)]]
                p = reported_holm_p(marks.get((m, cell), {}))[0]
                color, face = "0.2", "white"
                if m == base:
                    color, face = "0.4", "0.4"
                elif p is not None and p < FOREST_ALPHA:
                    color = "tab:green" if mean < float(b.get("mean", mean)) else "tab:red"
                    face = color
                ax.errorbar([mean], [yy], xerr=err, fmt="o", color=color, markerfacecolor=face, capsize=2,
                            markersize=5, zorder=2)
            n = view.cell(base, cell).get("n")
            if isinstance(n, (int, float)):
                cell = f"{cell} (n={int(n) if float(n).is_integer() else round(float(n), 1)})"
            ax.set_title(cell, fontsize="small")
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize="x-small")
        axes[0][0].set_yticks(y)
        axes[0][0].set_yticklabels([f"{m} (baseline)" if m == base else m for m in methods], fontsize="small")
        how = ", ".join(sorted(test_names)) or "no test"
        fig.suptitle(f"{view.label} · {view.dataset} · {metric.upper()} (lower is better), mean over seeds with 95 % "
                     f"bootstrap CI; band: {base}'s CI; filled: Holm p < {FOREST_ALPHA:g} vs {base} ({how})",
                     fontsize="x-small")
        fig.tight_layout()
        return save_figure(fig, stem, formats, dated=False)


__all__ = ["forest_plot", "plot_views", "save_figure"]
