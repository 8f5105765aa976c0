"""Plot of an item warm-up run: AUC, F1 and log-loss against the stage (cold, a, b, c), one line per method.

Error bars are the item-bootstrap intervals of the mean over seeds stored in ``results.json``.
As for the user-cold plots (:mod:`metarec.bench.plot`), matplotlib is an optional extra
(``pip install metarec[plot]``): without it nothing is drawn and no error is raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

PANELS: tuple[tuple[str, str], ...] = (
    ("auc", "AUC (higher is better)"),
    ("f1", "F1 at 0.5 (higher is better)"),
    ("logloss", "log-loss (lower is better)"),
)


def plot_warmup(results: dict[str, Any], stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Draw ``results`` (an item warm-up ``results.json``) to ``<stem>.png`` / ``.svg``; returns the paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    stages = list(results["stages"])
    methods = [m for m, e in results["methods"].items() if e.get("seeds")]
    if not methods:
        return []
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 4.0))
    x = list(range(len(stages)))
    for ax, (key, title) in zip(axes, PANELS):
        for j, m in enumerate(methods):
            cells = [results["methods"][m]["stages"].get(s, {}).get(key) for s in stages]
            xs = [i + 0.03 * (j - len(methods) / 2) for i, c in enumerate(cells) if c]
            means = [c["mean"] for c in cells if c]
            lo = [c["mean"] - c["ci"][0] if c["ci"][0] is not None else 0.0 for c in cells if c]
            hi = [c["ci"][1] - c["mean"] if c["ci"][1] is not None else 0.0 for c in cells if c]
            ax.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=2, label=m)
        ax.set_xticks(x, stages)
        ax.set_xlabel("stage")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    name = (results.get("dataset") or {}).get("name", "")
    seeds = ", ".join(map(str, results.get("seeds", [])))
    fig.suptitle(f"Item warm-up: {name}, seeds {seeds} (bars: item-bootstrap interval of the mean)", fontsize=10)
    fig.tight_layout()
    stem = Path(stem)
    out = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=120, metadata={"Software": None} if fmt == "png" else {"Date": None})
        out.append(path)
    plt.close(fig)
    return out


__all__ = ["plot_warmup"]
