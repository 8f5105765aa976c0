"""Tables of benchmark results: the rich console table, ``summary.md`` and ``summary.tex``.

Layout (as the paper's Table 1): one row per method and metric -- MAE, RMSE, the within-user
NDCG@k and the paper's clip NDCG@k (appendix A.2.3) -- one column per cell (overall, W-W,
W-C, C-W, C-C), ``mean ± std`` over seeds. The best value of each column (lowest MAE/RMSE,
highest NDCG, compared at the 4 decimals shown, ties all marked) is bold, and in the console
also followed by ``*`` so it survives a terminal without styles. Several results (runs, or the
paper's published numbers) can be shown side by side: their rows are prefixed with their
label, and "best" is taken over all rows shown; a metric a view has no number for (the
paper's RMSE) gets no rows. ``summary.md`` adds the intervals, the ranking metrics on the
query items (P / NDCG_rel / MAP@K) and the two families of paired tests with raw and
Holm-adjusted p.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from metarec.bench.results import CELLS, ResultsView, load_views
from metarec.bench.verdict import verdict_markdown

DECIMALS = 4


def group_views(views: Sequence[ResultsView]) -> list[list[ResultsView]]:
    """Views split by dataset (matching any of their names), in first-seen order: one table each."""
    groups: list[tuple[set[str], list[ResultsView]]] = []
    for v in views:
        for names, members in groups:
            if names & v.aliases:
                names |= v.aliases
                members.append(v)
                break
        else:
            groups.append((set(v.aliases), [v]))
    return [members for _, members in groups]


def _fmt(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{DECIMALS}f}"


#: A metric row of a table: (results key, label, higher is better).
MetricRow = tuple[str, str, bool]


def _metrics(view: ResultsView) -> list[MetricRow]:
    """The main table's metrics: MAE, RMSE, within-user NDCG@k and the paper's clip NDCG@k."""
    return [("mae", "MAE", False), ("rmse", "RMSE", False), (view.ndcg_key, f"NDCG@{view.k} (per user)", True),
            (view.clip_key, f"clip NDCG@{view.k} (paper A.2.3)", True)]


def ranking_metrics_of(view: ResultsView) -> list[MetricRow]:
    """The ranking table's metrics: Precision / NDCG_rel / MAP at every ranking cut-off present."""
    ks = sorted({int(key.split("@")[1]) for e in view.methods.values() for c in e.get("cells", {}).values()
                 for key in c if isinstance(key, str) and key.startswith("precision@")})
    return [row for kk in ks for row in ((f"precision@{kk}", f"P@{kk}", True), (f"ndcg_rel@{kk}", f"NDCG_rel@{kk}", True),
                                         (f"map@{kk}", f"MAP@{kk}", True))]


class Table:
    """The numbers of one comparison table, with the best cell of each column found once.

    ``metrics``: which rows each view gets (default: :func:`_metrics`); a metric that no
    method of a view has a value for (e.g. the paper's RMSE) gets no rows for that view.
    """

    def __init__(self, views: Sequence[ResultsView], cells: Sequence[str] = CELLS, pm: str = " ± ",
                 metrics: Any = None) -> None:
        self.pm = pm
        if not views:
            raise ValueError("nothing to show: no results")
        self.views = list(views)
        self.metrics_of = metrics or _metrics
        self.cells = [c for c in cells if any(v.cell(m, c) for v in views for m in v.methods)]
        self.many = len(views) > 1
        # rows: (view, method, metric key, metric label)
        self.rows: list[tuple[ResultsView, str, str, str]] = []
        self.higher: dict[str, bool] = {}
        for v in self.views:
            shown = [(key, label, higher) for key, label, higher in self.metrics_of(v)
                     if any(math.isfinite(v.value(m, c, key)[0]) for m in v.methods for c in self.cells)]
            for m in v.methods:
                for key, label, higher in shown:
                    self.rows.append((v, m, key, label))
                    self.higher[label] = higher
        self.labels = list(dict.fromkeys(r[3] for r in self.rows))
        self.best: set[tuple[int, str]] = set()
        for label in self.labels:
            for cell in self.cells:
                idx = [i for i, r in enumerate(self.rows) if r[3] == label]
                vals = {i: round(self.rows[i][0].value(self.rows[i][1], cell, self.rows[i][2])[0], DECIMALS) for i in idx}
                finite = {i: x for i, x in vals.items() if math.isfinite(x)}
                if len(finite) < 2:
                    continue
                target = max(finite.values()) if self.higher[label] else min(finite.values())
                self.best |= {(i, cell) for i, x in finite.items() if x == target}

    def last_of_method(self, i: int) -> bool:
        """Whether row ``i`` is the last row of its (view, method)."""
        return i == len(self.rows) - 1 or self.rows[i + 1][:2] != self.rows[i][:2]

    def row_label(self, i: int) -> str:
        """The method name, prefixed by the results' label when several are compared."""
        v, m, _, _ = self.rows[i]
        return f"{v.label}: {m}" if self.many else m

    def text(self, i: int, cell: str) -> str:
        """``mean ± std`` of row ``i`` in ``cell`` (``†`` marks a published single value)."""
        v, m, key, _ = self.rows[i]
        mean, std = v.value(m, cell, key)
        if not math.isfinite(mean):
            return "n/a" if (v.cell(m, cell).get(key) or {}).get("na") else "–"
        if std is None:
            return _fmt(mean) + ("†" if v.published else "")
        return f"{_fmt(mean)}{self.pm}{_fmt(std)}"

    def is_best(self, i: int, cell: str) -> bool:
        """Whether row ``i`` holds the best value of the column (ties: all of them)."""
        return (i, cell) in self.best

    def header(self, cell: str) -> str:
        """Cell name with its number of query ratings, when every real run agrees on it."""
        ns = set()
        for v in self.views:
            if v.published:
                continue
            for m in v.methods:
                n = v.cell(m, cell).get("n")
                if n is not None:
                    ns.add(round(float(n), 1))
        if len(ns) == 1:
            return f"{cell} (n={_count(ns.pop())})"
        return cell

    def notes(self) -> list[str]:
        """Footnotes that explain the table's marks."""
        out = ["best per column in bold (lowest MAE/RMSE, highest NDCG/P/MAP; at 4 decimals)"]
        if any(not v.published and any((v.cell(m, "overall").get("mae") or {}).get("std") is None for m in v.methods)
               for v in self.views):
            out.append("no ± std where a method has a single seed")
        if any(v.published for v in self.views):
            out.append("† published single-run value (no std); the paper's scenario NDCG is its clip NDCG")
        if any(not v.published for v in self.views):
            out.append("n = query ratings per seed; mean ± std over seeds (ddof=1)")
            if self.metrics_of is _metrics:
                out.append("NDCG@k: within-user, mean over users with >= 2 query ratings in the cell; clip NDCG: "
                           "the paper's, over clips of consecutive ratings that mix users; ties averaged in both")
        return out


# ---------------------------------------------------------------------------- console


def table_console() -> Any:
    """A console for the results table: wide enough not to wrap when writing to a file or pipe."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    return console


def _label_width(views: Sequence[ResultsView]) -> int:
    name = max(len(f"{v.label}: {m}") if len(views) > 1 else len(m) for v in views for m in v.methods)
    preset = max(len(_preset_label(v, m)) for v in views for m in v.methods)
    return name + (min(preset, 40) + 3 if preset else 0)


def _preset_label(view: ResultsView, method: str) -> str:
    """The preset a method's runs used (``tuned``, ``paper + epochs=3``), or ``""`` if unknown."""
    if view.published:
        return "published"
    entry = view.methods.get(method, {})
    return str(entry.get("preset_label") or entry.get("preset") or "")


def rich_tables(views: Sequence[ResultsView], width: int | None = None) -> list[Any]:
    """Rich tables, one per dataset; on a console narrower than one row needs (``width``),
    one table per metric with ``± std`` under the mean, so that nothing is cut off."""
    out = []
    for g in group_views(views):
        if width is None or width >= _label_width(g) + 34 + 19 * len(CELLS):
            out.append(rich_table(g))
        else:
            out.extend(rich_table(g, compact=True, metric=label) for label in Table(g).labels)
    return out


def rich_table(
    views: Sequence[ResultsView], title: str | None = None, *, compact: bool = False, metric: str | None = None
) -> Any:
    """The comparison table of views of ONE dataset (see :func:`rich_tables` for several).

    ``compact``: ``± std`` on a second line, narrow method column; ``metric``: only the rows of
    that metric label (e.g. ``"MAE"``).
    """
    from rich.table import Table as RichTable

    t = Table(views, pm="\n±" if compact else "±")
    notes = ["* (bold) = best per column: lowest MAE/RMSE, highest NDCG, at 4 decimals", *t.notes()[1:]]
    rows = [i for i, r in enumerate(t.rows) if metric is None or r[3] == metric]
    what = ""
    if metric is not None:
        what = f" · {metric} ({'higher' if t.higher.get(metric) else 'lower'} is better)"
    table = RichTable(
        title=title or f"metarec bench · {views[0].dataset}{what}", caption="; ".join(notes), show_lines=compact
    )
    if compact:
        table.add_column("method", style="bold", overflow="fold", max_width=16)
    else:
        table.add_column("method", style="bold", no_wrap=True)
    show_presets = any(_preset_label(v, m) for v in t.views for m in v.methods)
    if show_presets:
        table.add_column("preset", overflow="fold", max_width=24 if compact else 40)
    if metric is None:
        table.add_column("metric", no_wrap=True)
    for c in t.cells:
        table.add_column(t.header(c).replace(" (", "\n(") if compact else t.header(c), justify="right", no_wrap=True)
    for i in rows:
        v, m, key, label = t.rows[i]
        cells = []
        for c in t.cells:
            s = t.text(i, c)
            cells.append(f"[bold green]{s} *[/]" if t.is_best(i, c) else s)
        first = metric is not None or i == 0 or t.rows[i - 1][:2] != (v, m)
        lead = [t.row_label(i) if first else ""]
        if show_presets:
            lead.append(_preset_label(v, m) if first else "")
        lead += [label] if metric is None else []
        table.add_row(*lead, *cells, end_section=(metric is None and t.last_of_method(i)))
    return table


# ---------------------------------------------------------------------------- markdown


def markdown_table(views: Sequence[ResultsView], metrics: Any = None) -> str:
    """Markdown table(s): one per dataset, each under a heading when there are several."""
    groups = group_views(views)
    if len(groups) == 1:
        return _markdown_table(groups[0], metrics)
    return "\n\n".join(f"### {g[0].dataset}\n\n" + _markdown_table(g, metrics) for g in groups)


def _markdown_table(views: Sequence[ResultsView], metrics: Any = None) -> str:
    t = Table(views, metrics=metrics)
    lines = [
        "| method | metric | " + " | ".join(t.header(c) for c in t.cells) + " |",
        "|---|---|" + "---:|" * len(t.cells),
    ]
    for i, (v, m, key, label) in enumerate(t.rows):
        cells = [f"**{t.text(i, c)}**" if t.is_best(i, c) else t.text(i, c) for c in t.cells]
        lines.append(f"| {t.row_label(i)} | {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- {n}" for n in t.notes())
    return "\n".join(lines)


def _count(x: float) -> str:
    """A count averaged over seeds: an integer when it is one, else one decimal."""
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _ci(entry: Mapping[str, Any]) -> str:
    ci = entry.get("ci")
    if not ci or ci[0] is None:
        return "–"
    return f"[{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]"


def _p(x: Any) -> str:
    if x is None:
        return "–"
    if x < 1e-300:  # below what a double holds: the combined z of the per-user tests is > 37
        return "< 1e-300"
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


def _avg(values: Sequence[int] | None) -> str:
    """The mean of per-seed counts ('–' without them)."""
    values = list(values or [])
    return _count(sum(values) / len(values)) if values else "–"


def _with_ci(entry: Mapping[str, Any] | None) -> str:
    """``mean [lo, hi]`` of one metric of one cell ('–' when absent)."""
    if not entry or entry.get("mean") is None or not math.isfinite(float(entry["mean"])):
        return "–"
    ci = _ci(entry)
    return _fmt(float(entry["mean"])) + ("" if ci == "–" else f" {ci}")


def _metric_label(metric: str) -> str:
    if metric in ("mae", "rmse"):
        return metric.upper()
    if metric.startswith("clip_ndcg@"):
        return "clip NDCG@" + metric.split("@")[1]
    return metric.upper()


def _tests_table(tests: Sequence[Mapping[str, Any]], k: int) -> list[str]:
    """Rows of a paired-test table: raw and Holm-adjusted p of each kind of test the results hold
    (results written before the unique-user test render as they were)."""
    unique = any("p" in (t.get("per_unique_user") or {}) for t in tests)
    lines = [
        "per seed: paired t-test on the per-seed cell values; per user: one Wilcoxon signed-rank test per "
        "seed on per-user values (MAE; squared error for RMSE; within-user NDCG), seeds combined by "
        "Stouffer's z, so a user who recurs across seeds is not counted as independent users (clip NDCG "
        "has no per-user units)."
        + (" Unique users: each user's a − b averaged over the seeds where the user is a test user, then one "
           "two-sided Wilcoxon signed-rank test over the unique users (users = unique users). Mean diff: of the "
           "cell's values, mean over seeds." if unique else "")
        + " Holm: adjusted within this table, per kind of test.",
        "",
    ]
    if unique:
        lines += [
            "| a | b | cell | metric | mean diff | p (t, per seed) | Holm | p (per user, Stouffer) | Holm "
            "| p (unique users) | Holm | users |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        lines += [
            "| a | b | cell | metric | mean diff | p (t, per seed) | Holm | p (per user, Stouffer) | Holm | users |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
    for t in tests:
        ps, pu, uu = t.get("per_seed", {}), t.get("per_user", {}), t.get("per_unique_user") or {}
        diff = ps.get("mean_diff", pu.get("mean_diff"))
        row = (f"| {t['a']} | {t['b']} | {t['cell']} | {_metric_label(t['metric'])} | "
               f"{'–' if diff is None else f'{diff:+.4f}'} | {_p(ps.get('ttest_p'))} | {_p(ps.get('ttest_p_holm'))} | "
               f"{_p(pu.get('p'))} | {_p(pu.get('p_holm'))} | ")
        if unique:
            row += f"{_p(uu.get('p'))} | {_p(uu.get('p_holm'))} | {uu.get('n', '–')} |"
        else:
            row += f"{pu.get('n', '–')} |"
        lines.append(row)
    return lines


def settings_details(src: Mapping[str, Any]) -> str:
    """One line on a method's settings source: the study behind tuned settings, else preset and overrides."""
    if src.get("kind") == "tuned":
        v = src.get("best_value")
        study = (
            f"study `{src.get('study')}` in `{src.get('tune_dir')}`: {src.get('trials')} of {src.get('budget')} trials "
            f"({src.get('pruned', 0)} pruned, {src.get('failed', 0)} failed), best #{src.get('best_trial')} "
            f"{src.get('metric')} {'–' if v is None else f'{v:.4f}'}; pool {src.get('pool_users')} users "
            f"(tuning_fraction {src.get('tuning_fraction')}, seed {src.get('tuning_seed')})"
        )
        if src.get("chosen") == "preset":  # benchmarks/fair_config.py: the preset won on the same pool
            over = ", ".join(f"{k}={val}" for k, val in (src.get("overrides") or {}).items())
            return (f"preset `{src.get('preset')}`{f' ({over})' if over else ''}, chosen over the tuned best because "
                    f"it scores {src.get('metric')} {src.get('preset_value', float('nan')):.4f} on the same pool; {study}")
        return study
    parts = [f"preset `{src['preset']}`" if src.get("preset") else "the learner's Config defaults"]
    if src.get("overrides"):
        parts.append("overrides " + ", ".join(f"{k}={v}" for k, v in src["overrides"].items()))
    return "; ".join(parts)


def markdown_summary(results: Mapping[str, Any], extra: Sequence[ResultsView] = ()) -> str:
    """``summary.md`` of one benchmark: table, cell sizes and intervals, paired tests, failures, runs."""
    from metarec.bench.results import ResultsView

    cfg = results.get("config", {})
    info = results.get("metrics_info", {})
    k = int(info.get("k", 3))
    key = f"ndcg@{k}"
    view = ResultsView(
        results.get("label", "run"), results.get("dataset", {}).get("name") or cfg.get("dataset", "?"),
        {m: e for m, e in results.get("methods", {}).items() if e.get("cells")}, k=k,
    )
    ds = results.get("dataset", {})
    env = results.get("environment", {})
    git = env.get("git", {}) or {}
    out = [f"# metarec bench: {view.dataset}", ""]
    if results.get("command"):
        out += ["```", " ".join(results["command"]), "```", ""]
    canon = ds.get("canonical")
    out += [
        f"- dataset: `{ds.get('name')}`, checksum `{ds.get('checksum')}`, "
        f"{'canonical' if canon else ('NON-canonical' if canon is False else 'canonical: unknown')}",
        f"- seeds: {results.get('seeds')}; device: {env.get('device_requested')} "
        f"({env.get('cpu_model')}{', ' + env['cuda_device'] if env.get('cuda_device') else ''}); "
        f"jobs {env.get('jobs')}, threads/run {env.get('threads_per_run')}",
        f"- metarec {env.get('metarec')}, torch {env.get('torch')}, numpy {env.get('numpy')}, "
        f"python {env.get('python')}; git {git.get('commit') or 'unknown'}{' (dirty)' if git.get('dirty') else ''}",
        f"- wall time: {results.get('wall_time_s', 0) or 0:.1f} s ({results.get('wall_time_note', '')})",
        "",
        "## Results",
        "",
        markdown_table([view, *extra]),
        "",
        *catalogue_markdown(results),
        f"## Cell sizes and {int(100 * float(cfg.get('ci_level', 0.95)))} % bootstrap intervals",
        "",
        "Intervals: percentile bootstrap of the mean over seeds, resampling test users within each "
        "seed's split (stratified by seed). "
        "n = query ratings per seed, users = test users with a rating in the cell, ranked = those with "
        f">= {info.get('min_ratings', 2)} ratings there (the users of the within-user NDCG@{k}).",
        "",
        f"| method | cell | n | users | ranked | MAE | RMSE | NDCG@{k} | clip NDCG@{k} |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for m, e in view.methods.items():
        for c in CELLS:
            cell = e["cells"][c]
            out.append(
                f"| {m} | {c} | {_count(cell['n'])} | {_avg(cell.get('n_users_per_seed'))} | "
                f"{_avg(cell.get('n_users_ranked_per_seed'))} | "
                + " | ".join(_with_ci(cell.get(name)) for name in ("mae", "rmse", key, f"clip_{key}")) + " |"
            )
    if ranking_metrics_of(view):
        thr = info.get("relevance_threshold", 4.0)
        out += [
            "",
            f"## Ranking metrics on the query items (relevant: rating >= {thr:g})",
            "",
            "Per user, on the user's query items in the cell, ranked by prediction (ties averaged): "
            "Precision@K, NDCG_rel@K (binary gains) and MAP@K, averaged over the users with >= "
            f"{info.get('min_ratings', 2)} query ratings in the cell and at least one relevant item "
            "(users without a relevant item are left out: no order can help them). A list shorter than K "
            "is ranked whole (precision divides by min(K, length)), so P@K with K >= the query size does not "
            "depend on the predictions.",
            "",
            markdown_table([view], metrics=ranking_metrics_of),
            "",
            "| cell | users with a relevant item (mean per seed; the same for every method) |",
            "|---|---:|",
        ]
        first = next(iter(view.methods.values()))
        for c in CELLS:
            out.append(f"| {c} | {_avg(first['cells'][c].get('n_users_relevant_per_seed'))} |")
    vs = results.get("baseline_tests") or {}
    if vs.get("tests"):
        out += [
            "",
            f"## Against the best simple baseline: {vs['baseline']}",
            "",
            f"a − {vs['baseline']} ({vs.get('rule', '')}); one family, Holm-adjusted within this table.",
            "",
            *verdict_markdown(vs),
            "",
            *_tests_table(vs["tests"], k),
        ]
    sources = {m: e["settings_source"] for m, e in view.methods.items() if e.get("settings_source")}
    if sources:
        out += ["", "## Where each method's settings came from", "",
                "| method | source | details |", "|---|---|---|"]
        for m, src in sources.items():
            out.append(f"| {m} | {src.get('kind')} | {settings_details(src)} |")
    tests = results.get("paired_tests") or []
    if tests:
        out += [
            "",
            "## Paired tests, every pair (a − b, same seeds and splits)",
            "",
            "One family, Holm-adjusted within this table (raw p, then Holm).",
            "",
            *_tests_table(tests, k),
        ]
    failed = [r for r in results.get("runs", []) if r.get("status") != "ok"]
    missing = {m: e["seeds_missing"] for m, e in results.get("methods", {}).items() if e.get("seeds_missing")}
    if failed or missing:
        out += ["", "## Failures", ""]
        for r in failed:
            out.append(f"- **{r['method']}**, seed {r['seed']}: `{(r.get('error') or '').splitlines()[0] if r.get('error') else '?'}` "
                       "(traceback in results.json)")
        for m, seeds in missing.items():
            out.append(f"- **{m}**: seeds {seeds} not run")
    runs = [r for r in results.get("runs", []) if r.get("status") == "ok"]
    if runs:
        out += [
            "",
            "## Runs",
            "",
            "| method | seed | device | fit s | predict s | total s | peak RSS MB | peak CUDA MB | epochs |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            tm, mem = r.get("timings", {}), r.get("memory", {})
            out.append(
                f"| {r['method']} | {r['seed']} | {r.get('device')} | {tm.get('fit_s', 0):.2f} | "
                f"{tm.get('predict_s', 0):.2f} | {tm.get('total_s', 0):.2f} | {mem.get('peak_rss_mb', '–')} | "
                f"{mem.get('peak_cuda_allocated_mb', '–')} | {r.get('epochs_done', '–')} |"
            )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- LaTeX


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def latex_table(views: Sequence[ResultsView], caption: str | None = None) -> str:
    """Booktabs table(s) (need ``\\usepackage{booktabs}``), one per dataset, best per column in bold."""
    return "\n".join(_latex_table(g, caption) for g in group_views(views))


def _latex_table(views: Sequence[ResultsView], caption: str | None = None) -> str:
    t = Table(views)
    cols = "ll" + "r" * len(t.cells)
    cap = _tex_escape(caption) if caption else (
        _tex_escape(views[0].dataset) + r": mean $\pm$ std over seeds; best per column in bold."
        + (r" $^\dagger$ published single-run value." if any(v.published for v in views) else "")
    )
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + cap + "}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        "Method & Metric & " + " & ".join(_tex_escape(t.header(c)) for c in t.cells) + r" \\",
        r"\midrule",
    ]
    for i, (v, m, key, label) in enumerate(t.rows):
        cells = []
        for c in t.cells:
            s = t.text(i, c).replace(" ± ", r" $\pm$ ").replace("†", r"$^\dagger$").replace("–", "--")
            cells.append(rf"\textbf{{{s}}}" if t.is_best(i, c) else s)
        first = i == 0 or t.rows[i - 1][:2] != (v, m)
        name = _tex_escape(t.row_label(i)) if first else ""
        lines.append(f"{name} & {_tex_escape(label)} & " + " & ".join(cells) + r" \\")
        if t.last_of_method(i) and i != len(t.rows) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- files


def catalogue_markdown(results: Mapping[str, Any]) -> list[str]:
    """The full-catalogue ranking section of ``summary.md`` (no lines when the mode was off)."""
    methods = {m: e["catalogue_ranking"] for m, e in results.get("methods", {}).items() if e.get("catalogue_ranking")}
    if not methods:
        return []
    first = next(iter(methods.values()))
    names = [n for n in next(iter(first["cells"].values())) if "@" in n]
    thr = results.get("config", {}).get("ranking_threshold", 4.0)
    out = [
        "## Full-catalogue ranking", "",
        f"Relevant query items (rating >= {thr}) ranked among every catalogue item of the cell's item "
        "state the user has not rated in support; mean ± std over seeds of the per-user mean "
        "(users without a relevant item in the cell are left out).", "",
        "| method | metric | " + " | ".join(first["cells"]) + " |",
        "|---|---|" + "---:|" * len(first["cells"]),
    ]
    for m, cat in methods.items():
        for n in names:
            vals = []
            for c in cat["cells"].values():
                v = c[n]
                mean = float("nan") if v["mean"] is None else float(v["mean"])
                vals.append(_fmt(mean) + ("" if v["std"] is None else f" ± {_fmt(float(v['std']))}"))
            out.append(f"| {m} | {n.replace('recall', 'Recall').replace('ndcg', 'NDCG')} | " + " | ".join(vals) + " |")
    return [*out, ""]


def write_reports(results: Mapping[str, Any], out_dir: str | Path, extra: Sequence[ResultsView] = ()) -> list[Path]:
    """Write ``summary.md``, ``summary.tex``, the plot and the forest plot (every method's MAE
    against the best simple baseline's) next to ``results.json``; returns the paths."""
    from metarec.bench.plot import forest_plot, plot_views
    from metarec.bench.results import ResultsView
    from metarec.checkpoint import atomic_write_text

    out_dir = Path(out_dir)
    written: list[Path] = []
    k = int(results.get("metrics_info", {}).get("k", 3))
    view = ResultsView(
        results.get("label", out_dir.name),
        results.get("dataset", {}).get("name") or results.get("config", {}).get("dataset", "?"),
        {m: e for m, e in results.get("methods", {}).items() if e.get("cells")}, k=k,
    )
    if not view.methods:
        return written
    atomic_write_text(out_dir / "summary.md", markdown_summary(results, extra))
    written.append(out_dir / "summary.md")
    atomic_write_text(out_dir / "summary.tex", latex_table([view, *extra]))
    written.append(out_dir / "summary.tex")
    written.extend(plot_views([view, *extra], out_dir / "plot"))
    written.extend(forest_plot(view, results.get("baseline_tests"), out_dir / "forest"))
    return written


def views_from_paths(paths: Iterable[str | Path]) -> list[ResultsView]:
    """Every results view in run folders, ``results.json`` or reference files, in order."""
    views: list[ResultsView] = []
    for p in paths:
        views.extend(load_views(p))
    return views


__all__ = ["Table", "group_views", "rich_tables", "table_console", "latex_table", "markdown_summary", "markdown_table", "rich_table", "views_from_paths", "write_reports"]
