"""Average ranks across datasets and cells, the Friedman test and the Nemenyi critical difference
(Demšar, "Statistical comparisons of classifiers over multiple data sets", JMLR 7, 2006).

Each *block* (one dataset's cell, e.g. ``ml-1m W-C``) ranks the methods by a metric (rank 1 =
best; ties share their average rank); a method's average rank is the mean over blocks. The
Friedman test asks whether the average ranks differ more than chance would make them; the
Nemenyi post-hoc test says two methods differ when their average ranks differ by at least the
critical difference ``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` for k methods and N blocks, where
``q_alpha`` is the studentized range statistic at infinite degrees of freedom over ``sqrt(2)``
(Demšar's Table 5 lists these values; :func:`nemenyi_q` computes them with scipy's
``studentized_range``, and the tests check them against the table).

The test assumes independent blocks. The cells of one dataset share its training runs and
users, so blocks within a dataset are not independent: the diagram summarises where methods
stand across the whole comparison, and the per-cell paired tests against the best simple
baseline remain the claim of a difference. The default blocks are the four scenario cells of
each dataset (``overall`` is their union, so counting it too would count ratings twice).

Neither scikit-posthocs nor autorank is a metarec dependency; the computation is the few lines
below, drawn with matplotlib (the ``plot`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from metarec.schema import SCENARIOS

#: Lower is better for these metrics; every other one (NDCG, precision, MAP) is higher-is-better.
LOWER_IS_BETTER = ("mae", "rmse")


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the two-tailed Nemenyi test for ``k`` methods (Demšar 2006,
    Table 5a): the studentized range quantile at infinite degrees of freedom over sqrt(2)."""
    if int(k) != k or k < 2:
        raise ValueError(f"the Nemenyi test needs k >= 2 methods, got {k!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(stats.studentized_range.ppf(1.0 - alpha, int(k), np.inf) / math.sqrt(2.0))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for ``k`` methods over ``n`` blocks."""
    if int(n) != n or n < 1:
        raise ValueError(f"the critical difference needs n >= 1 blocks, got {n!r}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def rank_blocks(scores: Any, higher_is_better: bool = False) -> np.ndarray:
    """Ranks (1 = best) of each row's methods; ties get the mean of the ranks they span."""
    x = np.asarray(scores, dtype=float)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        raise ValueError(f"scores must be blocks x methods with >= 1 block and >= 2 methods, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite: every method needs a value in every block")
    return stats.rankdata(-x if higher_is_better else x, axis=1)


def friedman(ranks: Any) -> dict[str, float]:
    """Friedman's chi-square and the Iman-Davenport F (Demšar 2006, section 3.2.2) of a
    blocks x methods rank matrix, with their p-values (no tie correction, as in the paper)."""
    r = np.asarray(ranks, dtype=float)
    n, k = r.shape
    mean = r.mean(axis=0)
    chi2 = 12.0 * n / (k * (k + 1)) * (float(np.sum(mean ** 2)) - k * (k + 1) ** 2 / 4.0)
    out = {"chi2": chi2, "chi2_p": float(stats.chi2.sf(chi2, k - 1)), "df": k - 1}
    denom = n * (k - 1) - chi2
    if n > 1 and denom > 0:
        f = (n - 1) * chi2 / denom
        out.update(F=f, F_p=float(stats.f.sf(f, k - 1, (k - 1) * (n - 1))), F_df=[k - 1, (k - 1) * (n - 1)])
    else:  # every block ranks the methods identically: the F statistic is infinite
        out.update(F=math.inf if n > 1 else math.nan, F_p=0.0 if n > 1 else math.nan, F_df=[k - 1, (k - 1) * (n - 1)])
    return out


def cliques(avg_ranks: Sequence[float], cd: float) -> list[list[int]]:
    """Maximal groups of methods (indices, best first) whose average ranks all lie within ``cd``
    of each other -- the bars of a critical-difference diagram; groups of one are left out."""
    order = sorted(range(len(avg_ranks)), key=lambda i: avg_ranks[i])
    groups: list[list[int]] = []
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and avg_ranks[order[end + 1]] - avg_ranks[order[start]] < cd:
            end += 1
        if end > start and not (groups and order.index(groups[-1][-1]) >= end):
            groups.append(order[start:end + 1])
    return groups


@dataclass
class RankComparison:
    """The blocks, ranks and tests of one metric's comparison."""

    metric: str
    methods: list[str]
    blocks: list[str]
    scores: np.ndarray
    ranks: np.ndarray
    alpha: float = 0.05
    left_out: dict[str, list[str]] = field(default_factory=dict)

    @property
    def avg_ranks(self) -> np.ndarray:
        """Mean rank of each method over the blocks."""
        return self.ranks.mean(axis=0)

    @property
    def cd(self) -> float:
        """The Nemenyi critical difference at ``alpha``."""
        return critical_difference(len(self.methods), len(self.blocks), self.alpha)

    def as_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values (``ranks.json``)."""
        order = sorted(range(len(self.methods)), key=lambda i: self.avg_ranks[i])
        return {
            "metric": self.metric,
            "lower_is_better": self.metric in LOWER_IS_BETTER,
            "blocks": self.blocks,
            "methods": [self.methods[i] for i in order],
            "average_rank": {self.methods[i]: float(self.avg_ranks[i]) for i in order},
            "ranks": {b: {m: float(self.ranks[j, i]) for i, m in enumerate(self.methods)}
                      for j, b in enumerate(self.blocks)},
            "scores": {b: {m: float(self.scores[j, i]) for i, m in enumerate(self.methods)}
                       for j, b in enumerate(self.blocks)},
            "friedman": friedman(self.ranks),
            "nemenyi": {"alpha": self.alpha, "k": len(self.methods), "n": len(self.blocks),
                        "q_alpha": nemenyi_q(len(self.methods), self.alpha), "cd": self.cd,
                        "groups": [[self.methods[i] for i in g] for g in cliques(list(self.avg_ranks), self.cd)]},
            "left_out": self.left_out,
            "method": "Demšar (2006): ranks per block (1 = best, ties averaged), Friedman chi-square and "
                      "Iman-Davenport F, Nemenyi CD = q_alpha sqrt(k(k+1)/(6N)); blocks of one dataset are "
                      "not independent (shared runs and users)",
        }


def compare_views(views: Sequence[Any], metric: str = "mae", cells: Sequence[str] = SCENARIOS,
                  alpha: float = 0.05) -> RankComparison:
    """Rank the methods of results views (one per dataset) in every (dataset, cell) block.

    Methods without a value in some block are left out (named in ``left_out``), so that every
    method is ranked on the same blocks.
    """
    views = [v for v in views if not getattr(v, "published", False)]
    if not views:
        raise ValueError("nothing to rank: no run results")
    known = ("mae", "rmse", views[0].ndcg_key, views[0].clip_key)
    if metric not in known:
        raise ValueError(f"unknown metric {metric!r} to rank by; use one of {', '.join(known)}")
    datasets = [v.dataset for v in views]
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"two results of one dataset ({', '.join(datasets)}): rank one run per dataset")
    blocks = [(v, c) for v in views for c in cells]
    names = list(dict.fromkeys(m for v in views for m in v.methods))
    left_out: dict[str, list[str]] = {}
    keep = []
    for m in names:
        missing = [f"{v.dataset} {c}" for v, c in blocks if not math.isfinite(v.value(m, c, metric)[0])]
        if missing:
            left_out[m] = missing
        else:
            keep.append(m)
    if len(keep) < 2:
        raise ValueError(f"fewer than 2 methods have {metric} in every block ({len(blocks)} blocks); left out: "
                         + ", ".join(left_out))
    scores = np.array([[v.value(m, c, metric)[0] for m in keep] for v, c in blocks])
    ranks = rank_blocks(scores, higher_is_better=metric not in LOWER_IS_BETTER)
    return RankComparison(metric, keep, [f"{v.dataset} {c}" for v, c in blocks], scores, ranks, alpha, left_out)


def ranks_markdown(cmp: RankComparison) -> str:
    """``ranks.md``: the average ranks, every block's ranks, the Friedman test and the CD."""
    d = cmp.as_dict()
    fr, nem = d["friedman"], d["nemenyi"]
    better = "lowest" if d["lower_is_better"] else "highest"
    lines = [
        f"# Average ranks by {cmp.metric.upper()} ({len(cmp.methods)} methods, {len(cmp.blocks)} blocks)", "",
        f"Rank 1 = {better} {cmp.metric.upper()} in a block (one dataset's cell); ties share their average rank. "
        "Friedman chi-square = {:.2f} (df {}, p = {:.2g}); Iman-Davenport F = {:.2f} (df {}, {}; p = {:.2g}). "
        "Nemenyi critical difference at alpha = {:g}: q = {:.3f}, CD = {:.3f}: two methods whose average ranks "
        "differ by less are not told apart. The blocks of one dataset share its runs and users, so they are not "
        "the independent data sets the test assumes: read the diagram as a summary, and the per-cell paired "
        "tests against the best simple baseline as the evidence (Demšar 2006).".format(
            fr["chi2"], fr["df"], fr["chi2_p"], fr["F"], *fr["F_df"], fr["F_p"], nem["alpha"], nem["q_alpha"],
            nem["cd"]),
        "",
        "| method | average rank | " + " | ".join(cmp.blocks) + " |",
        "|---|---:|" + "---:|" * len(cmp.blocks),
    ]
    for m in d["methods"]:
        lines.append(f"| {m} | {d['average_rank'][m]:.2f} | "
                     + " | ".join(f"{d['ranks'][b][m]:g} ({d['scores'][b][m]:.4f})" for b in cmp.blocks) + " |")
    lines.append("")
    if nem["groups"]:
        lines.append("Groups not told apart (average ranks within CD): "
                     + "; ".join("{" + ", ".join(g) + "}" for g in nem["groups"]) + ".")
    for m, where in cmp.left_out.items():
        lines.append(f"- left out: {m} (no {cmp.metric} in {', '.join(where)})")
    return "\n".join(lines) + "\n"


def cd_diagram(cmp: RankComparison, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Draw Demšar's critical-difference diagram to ``<stem>.png/.svg`` (nothing without matplotlib).

    The axis runs over ranks 1..k, best on the left; each method hangs from its average rank;
    a thick bar joins methods whose average ranks lie within the CD, drawn above the axis.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    k = len(cmp.methods)
    avg = list(cmp.avg_ranks)
    order = sorted(range(k), key=lambda i: avg[i])
    half = (k + 1) // 2
    left, right = order[:half], order[half:][::-1]
    groups = cliques(avg, cmp.cd)
    rows = max(len(left), len(right))
    with matplotlib.rc_context({"svg.hashsalt": "metarec-cd"}):
        fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * k + 3.0), 1.6 + 0.32 * rows + 0.18 * len(groups)))
        ax.set_xlim(0.0, k + 1.0)
        ax.set_ylim(-(rows + 1.2), 1.6 + 0.25 * len(groups))
        ax.axis("off")
        ax.hlines(0, 1, k, color="black", linewidth=1)
        for r in range(1, k + 1):
            ax.vlines(r, 0, 0.15, color="black", linewidth=1)
            ax.text(r, 0.25, str(r), ha="center", va="bottom", fontsize="small")
        # the CD as a scale bar, top left
        top = 1.0 + 0.25 * len(groups)
        ax.hlines(top, 1, 1 + cmp.cd, color="black", linewidth=1.5)
        ax.vlines([1, 1 + cmp.cd], top - 0.08, top + 0.08, color="black", linewidth=1.5)
        ax.text(1 + cmp.cd / 2, top + 0.12, f"CD = {cmp.cd:.2f}", ha="center", va="bottom", fontsize="small")
        for side, members in (("left", left), ("right", right)):
            for j, i in enumerate(members):
                y = -(j + 0.8)
                x_end = 0.4 if side == "left" else k + 0.6
                ax.plot([avg[i], avg[i], x_end], [0, y, y], color="black", linewidth=0.8)
                ax.text(x_end - 0.05 if side == "left" else x_end + 0.05, y, f"{cmp.methods[i]} ({avg[i]:.2f})",
                        ha="right" if side == "left" else "left", va="center", fontsize="small")
        for g_i, g in enumerate(groups):
            y = 0.55 + 0.22 * g_i
            ax.hlines(y, avg[g[0]] - 0.05, avg[g[-1]] + 0.05, color="tab:blue", linewidth=3)
        ax.set_title(f"average rank by {cmp.metric.upper()} over {len(cmp.blocks)} blocks "
                     f"({', '.join(sorted({b.rsplit(' ', 1)[0] for b in cmp.blocks}))}); "
                     f"Nemenyi alpha = {cmp.alpha:g}", fontsize="small")
        fig.tight_layout()
        from metarec.bench.plot import save_figure

        return save_figure(fig, stem, formats, dated=False)


__all__ = ["RankComparison", "cd_diagram", "cliques", "compare_views", "critical_difference", "friedman",
           "nemenyi_q", "rank_blocks", "ranks_markdown"]
