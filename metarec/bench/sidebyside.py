"""One Markdown table per dataset with several sources side by side: the paper's published Table 1,
a run with hand presets, a tuned run (any results views, in the order given).

Rows are (method, cell); columns are each metric -- MAE, RMSE, within-user NDCG@k, the paper's
clip NDCG@k -- once per source that has a value for it (published numbers first, then the
runs in the order given) (the paper has no RMSE and no
within-user NDCG), then the change of MAE from the second-to-last run to the last one (e.g.
tuned - hand). A run's MAE is marked where its baseline family (``baseline_tests`` of its
``results.json``) finds it different from the best simple baseline at a Holm-adjusted p < 0.05:
``▲`` lower MAE than the baseline, ``▼`` higher; ``(b)`` marks the baseline itself.
"""

from __future__ import annotations

import math
from typing import Sequence

from metarec.bench.report import group_views
from metarec.bench.results import CELLS, ResultsView, reported_holm_p

ALPHA = 0.05


def _metrics(view: ResultsView) -> list[tuple[str, str]]:
    return [("mae", "MAE"), ("rmse", "RMSE"), (view.ndcg_key, f"NDCG@{view.k} (user)"),
            (view.clip_key, f"clip NDCG@{view.k}")]


def _mark(view: ResultsView, method: str, cell: str) -> str:
    tests = view.baseline_tests or {}
    base = tests.get("baseline")
    if not base:
        return ""
    if method == base:
        return " (b)"
    for t in tests.get("tests", []):
        if t["a"] == method and t["cell"] == cell and t["metric"] == "mae":
            p, _, diff = reported_holm_p(t)
            if p is not None and p < ALPHA and diff is not None:
                return " ▲" if diff < 0 else " ▼"
    return ""


def _value(view: ResultsView, method: str, cell: str, key: str) -> str:
    mean, std = view.value(method, cell, key)
    if not math.isfinite(mean):
        return "–"
    if std is None:
        return f"{mean:.4f}" + ("†" if view.published else "")
    return f"{mean:.4f} ± {std:.4f}"


def side_by_side_markdown(views: Sequence[ResultsView]) -> str:
    """The tables, one per dataset (under a ``###`` heading), with their notes."""
    parts = []
    for group in group_views(views):
        parts.append(f"### {group[0].dataset}\n\n" + _table(group))
    return "\n\n".join(parts) + "\n"


def _table(views: Sequence[ResultsView]) -> str:
    views = sorted(views, key=lambda v: not v.published)  # the published numbers first, then the runs in order
    methods = list(dict.fromkeys(m for v in views for m in v.methods))
    runs = [v for v in views if not v.published]
    cols: list[tuple[ResultsView, str, str]] = []
    for key, label in _metrics(views[-1]):
        for v in views:
            if any(math.isfinite(v.value(m, c, key)[0]) for m in v.methods for c in CELLS):
                cols.append((v, key, f"{label} {v.label}"))
    delta = len(runs) >= 2
    head = "| method | cell | " + " | ".join(c[2] for c in cols)
    head += f" | Δ MAE ({runs[-1].label} − {runs[-2].label}) |" if delta else " |"
    lines = [head, "|---|---|" + "---:|" * (len(cols) + int(delta))]
    for m in methods:
        for cell in CELLS:
            vals = [_value(v, m, cell, key) + (_mark(v, m, cell) if key == "mae" and not v.published else "")
                    for v, key, _ in cols]
            if all(x == "–" for x in vals):
                continue
            row = f"| {m} | {cell} | " + " | ".join(vals)
            if delta:
                a, b = runs[-1].value(m, cell, "mae")[0], runs[-2].value(m, cell, "mae")[0]
                row += f" | {a - b:+.4f} |" if math.isfinite(a) and math.isfinite(b) else " | – |"
            else:
                row += " |"
            lines.append(row)
    notes = ["mean ± std over seeds (ddof = 1); † published single-run value (the paper's scenario NDCG is its "
             "clip NDCG, A.2.3); – no value"]
    if any(v.baseline_tests for v in runs):
        bases = "; ".join(f"{v.label}: {v.baseline_tests['baseline']}" for v in runs if v.baseline_tests)
        notes.append(f"▲ / ▼: MAE lower / higher than the run's best simple baseline (b) at Holm-adjusted p < {ALPHA:g} "
                     f"(unique-user Wilcoxon where the results have it, else per-user Wilcoxon combined over seeds) "
                     f"-- baselines: {bases}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


__all__ = ["side_by_side_markdown"]
