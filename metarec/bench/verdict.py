"""How often each method is significantly better or worse than the best simple baseline.

The headline question of a comparison ("does any meta-learner beat the best simple baseline,
and where?") is answered by the ``baseline_tests`` family of ``results.json``: one paired test
per method, cell and metric, each with three kinds of test (per seed t, per user Stouffer,
unique users Wilcoxon), Holm-adjusted within the family. This module counts, per method, the
comparisons each kind finds significant in the method's favour and against it, so the count a
paper or a README quotes comes from ``metarec report``, not from a script of the day.

Direction is each test's own mean difference ``a - baseline`` (the kinds average differently,
so their signs can differ): negative is better for MAE and RMSE, positive for every other
metric. "any" counts a comparison once when at least one kind is significant that way; a
comparison whose kinds disagree in sign would count on both sides (the table says how many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from metarec.bench.ranks import LOWER_IS_BETTER

#: (label, key of the test in a baseline_tests entry, its Holm-adjusted p-value)
KINDS: tuple[tuple[str, str, str], ...] = (
    ("per seed t", "per_seed", "ttest_p_holm"),
    ("per user", "per_user", "p_holm"),
    ("unique users", "per_unique_user", "p_holm"),
)


@dataclass(frozen=True)
class Verdict:
    """One method's significant wins and losses against the baseline."""

    method: str
    comparisons: int
    better: dict[str, int]
    worse: dict[str, int]
    better_any: int
    worse_any: int
    both: int  # comparisons with a kind significant each way


def _direction(test: Mapping[str, Any], key: str, pkey: str, alpha: float) -> int:
    """+1 significantly better than the baseline, -1 significantly worse, 0 neither."""
    part = test.get(key) or {}
    p, diff = part.get(pkey), part.get("mean_diff")
    if p is None or diff is None or not p < alpha or diff == 0:
        return 0
    lower = test["metric"] in LOWER_IS_BETTER
    return 1 if (diff < 0) == lower else -1


def verdicts(baseline_tests: Mapping[str, Any] | None, alpha: float = 0.05) -> list[Verdict]:
    """Per method of the family (in its order), the Holm-significant comparisons each way."""
    tests: Sequence[Mapping[str, Any]] = (baseline_tests or {}).get("tests") or []
    order: list[str] = []
    rows: dict[str, list[Mapping[str, Any]]] = {}
    for t in tests:
        if t["a"] not in rows:
            order.append(t["a"])
            rows[t["a"]] = []
        rows[t["a"]].append(t)
    out = []
    for method in order:
        better = {label: 0 for label, _, _ in KINDS}
        worse = dict(better)
        b_any = w_any = both = 0
        for t in rows[method]:
            signs = {label: _direction(t, key, pkey, alpha) for label, key, pkey in KINDS}
            for label, s in signs.items():
                better[label] += s > 0
                worse[label] += s < 0
            up, down = 1 in signs.values(), -1 in signs.values()
            b_any += up
            w_any += down
            both += up and down
        out.append(Verdict(method, len(rows[method]), better, worse, b_any, w_any, both))
    return out


def verdict_markdown(baseline_tests: Mapping[str, Any] | None, alpha: float = 0.05) -> list[str]:
    """Lines of the count table for ``summary.md`` (none without a baseline family)."""
    found = verdicts(baseline_tests, alpha)
    if not found:
        return []
    labels = [label for label, _, _ in KINDS]
    lines = [
        f"Of each method's comparisons (cells × metrics), how many are significant (Holm-adjusted p < {alpha:g}) "
        f"in its favour and against it, by kind of test ({' / '.join(labels)} / any of them):",
        "",
        "| method | comparisons | better than the baseline | worse than the baseline |",
        "|---|---:|---:|---:|",
    ]
    for v in found:
        b = " / ".join(str(v.better[x]) for x in labels) + f" / **{v.better_any}**"
        w = " / ".join(str(v.worse[x]) for x in labels) + f" / **{v.worse_any}**"
        lines.append(f"| {v.method} | {v.comparisons} | {b} | {w} |")
    mixed = sum(v.both for v in found)
    if mixed:
        lines += ["", f"{mixed} comparison(s) have kinds of test significant in opposite directions: counted on both sides."]
    return lines


__all__ = ["KINDS", "Verdict", "verdict_markdown", "verdicts"]
