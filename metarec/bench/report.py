"""Tables of benchmark results: the rich console table, ``summary.md`` and ``summary.tex``.

Layout (as the paper's Table 1): one row per method and metric (MAE, NDCG@k), one column per
cell (overall, W-W, W-C, C-W, C-C), ``mean ± std`` over seeds. The best value of each column
(lowest MAE, highest NDCG, compared at the 4 decimals shown, ties all marked) is bold, and in
the console also followed by ``*`` so it survives a terminal without styles. Several results
(runs, or the paper's published numbers) can be shown side by side: their rows are prefixed
with their label, and "best" is taken over all rows shown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from metarec.bench.results import CELLS, ResultsView, load_views

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


def _metrics(view: ResultsView) -> list[tuple[str, str]]:
    return [("mae", "MAE"), (view.ndcg_key, f"NDCG@{view.k}")]


class Table:
    """The numbers of one comparison table, with the best cell of each column found once."""

    def __init__(self, views: Sequence[ResultsView], cells: Sequence[str] = CELLS, pm: str = " ± ") -> None:
        self.pm = pm
        if not views:
            raise ValueError("nothing to show: no results")
        self.views = list(views)
        self.cells = [c for c in cells if any(v.cell(m, c) for v in views for m in v.methods)]
        self.many = len(views) > 1
        # rows: (view, method, metric key, metric label)
        self.rows: list[tuple[ResultsView, str, str, str]] = []
        for v in self.views:
            for m in v.methods:
                for key, label in _metrics(v):
                    self.rows.append((v, m, key, label))
        self.best: set[tuple[int, str]] = set()
        for metric_pos in range(2):
            for cell in self.cells:
                idx = [i for i, r in enumerate(self.rows) if _metrics(r[0])[metric_pos][0] == r[2]]
                vals = {i: round(self.rows[i][0].value(self.rows[i][1], cell, self.rows[i][2])[0], DECIMALS) for i in idx}
                finite = {i: x for i, x in vals.items() if math.isfinite(x)}
                if len(finite) < 2:
                    continue
                target = min(finite.values()) if metric_pos == 0 else max(finite.values())
                self.best |= {(i, cell) for i, x in finite.items() if x == target}

    def row_label(self, i: int) -> str:
        """The method name, prefixed by the results' label when several are compared."""
        v, m, _, _ = self.rows[i]
        return f"{v.label}: {m}" if self.many else m

    def text(self, i: int, cell: str) -> str:
        """``mean ± std`` of row ``i`` in ``cell`` (``†`` marks a published single value)."""
        v, m, key, _ = self.rows[i]
        mean, std = v.value(m, cell, key)
        if not math.isfinite(mean):
            return "–"
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
        out = ["best per column in bold (lowest MAE, highest NDCG; at 4 decimals)"]
        if any(not v.published and any((v.cell(m, "overall").get("mae") or {}).get("std") is None for m in v.methods)
               for v in self.views):
            out.append("no ± std where a method has a single seed")
        if any(v.published for v in self.views):
            out.append("† published single-run value (no std); the paper's scenario NDCG is its clip-NDCG")
        if any(not v.published for v in self.views):
            out.append("n = query ratings per seed; mean ± std over seeds (ddof=1)")
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
    return max(len(f"{v.label}: {m}") if len(views) > 1 else len(m) for v in views for m in v.methods)


def rich_tables(views: Sequence[ResultsView], width: int | None = None) -> list[Any]:
    """Rich tables, one per dataset; on a console narrower than one row needs (``width``),
    one table per metric with ``± std`` under the mean, so that nothing is cut off."""
    out = []
    for g in group_views(views):
        if width is None or width >= _label_width(g) + 16 + 19 * len(CELLS):
            out.append(rich_table(g))
        else:
            out.extend(rich_table(g, compact=True, metric=i) for i in range(2))
    return out


def rich_table(
    views: Sequence[ResultsView], title: str | None = None, *, compact: bool = False, metric: int | None = None
) -> Any:
    """The comparison table of views of ONE dataset (see :func:`rich_tables` for several).

    ``compact``: ``± std`` on a second line, narrow method column; ``metric``: only MAE (0) or
    only NDCG (1) rows.
    """
    from rich.table import Table as RichTable

    t = Table(views, pm="\n±" if compact else "±")
    notes = ["* (bold) = best per column: lowest MAE, highest NDCG, at 4 decimals", *t.notes()[1:]]
    rows = [i for i, r in enumerate(t.rows) if metric is None or _metrics(r[0])[metric][0] == r[2]]
    what = ""
    if metric is not None:
        what = " · " + ("MAE (lower is better)" if metric == 0 else f"NDCG@{views[0].k} (higher is better)")
    table = RichTable(
        title=title or f"metarec bench · {views[0].dataset}{what}", caption="; ".join(notes), show_lines=compact
    )
    if compact:
        table.add_column("method", style="bold", overflow="fold", max_width=16)
    else:
        table.add_column("method", style="bold", no_wrap=True)
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
        lead = [t.row_label(i) if first else ""] + ([label] if metric is None else [])
        table.add_row(*lead, *cells, end_section=(metric is None and key != "mae"))
    return table


# ---------------------------------------------------------------------------- markdown


def markdown_table(views: Sequence[ResultsView]) -> str:
    """Markdown table(s): one per dataset, each under a heading when there are several."""
    groups = group_views(views)
    if len(groups) == 1:
        return _markdown_table(groups[0])
    return "\n\n".join(f"### {g[0].dataset}\n\n" + _markdown_table(g) for g in groups)


def _markdown_table(views: Sequence[ResultsView]) -> str:
    t = Table(views)
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
    return f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}"


def settings_details(src: Mapping[str, Any]) -> str:
    """One line on a method's settings source: the study behind tuned settings, else preset and overrides."""
    if src.get("kind") == "tuned":
        v = src.get("best_value")
        return (
            f"study `{src.get('study')}` in `{src.get('tune_dir')}`: {src.get('trials')} of {src.get('budget')} trials "
            f"({src.get('pruned', 0)} pruned, {src.get('failed', 0)} failed), best #{src.get('best_trial')} "
            f"{src.get('metric')} {'–' if v is None else f'{v:.4f}'}; pool {src.get('pool_users')} users "
            f"(tuning_fraction {src.get('tuning_fraction')}, seed {src.get('tuning_seed')})"
        )
    parts = [f"preset `{src['preset']}`" if src.get("preset") else "the learner's Config defaults"]
    if src.get("overrides"):
        parts.append("overrides " + ", ".join(f"{k}={v}" for k, v in src["overrides"].items()))
    return "; ".join(parts)


def markdown_summary(results: Mapping[str, Any], extra: Sequence[ResultsView] = ()) -> str:
    """``summary.md`` of one benchmark: table, cell sizes and intervals, paired tests, failures, runs."""
    from metarec.bench.results import ResultsView

    cfg = results.get("config", {})
    k = int(results.get("metrics_info", {}).get("k", 3))
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
        f"## Cell sizes and {int(100 * float(cfg.get('ci_level', 0.95)))} % bootstrap intervals",
        "",
        "Intervals: percentile bootstrap of the mean over seeds, resampling test users within each "
        "seed's split. "
        "n = query ratings per seed, users = test users with a rating in the cell.",
        "",
        f"| method | cell | n | users | MAE | MAE CI | NDCG@{k} | NDCG@{k} CI |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for m, e in view.methods.items():
        for c in CELLS:
            cell = e["cells"][c]
            users = cell.get("n_users_per_seed") or []
            out.append(
                f"| {m} | {c} | {_count(cell['n'])} | {_count(sum(users) / max(len(users), 1))} | "
                f"{_fmt(float(cell['mae']['mean']) if cell['mae']['mean'] is not None else float('nan'))} | "
                f"{_ci(cell['mae'])} | "
                f"{_fmt(float(cell[key]['mean']) if cell[key]['mean'] is not None else float('nan'))} | "
                f"{_ci(cell[key])} |"
            )
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
            "## Paired tests (a − b, same seeds and splits)",
            "",
            "per seed: paired t-test on the per-seed cell values; per user: Wilcoxon signed-rank on "
            "per-user errors of the cell, pooled over seeds (MAE in every cell, NDCG per user overall only).",
            "",
            "| a | b | cell | metric | mean diff | p (t, per seed) | p (Wilcoxon, per user) | users |",
            "|---|---|---|---|---:|---:|---:|---:|",
        ]
        for t in tests:
            ps, pu = t.get("per_seed", {}), t.get("per_user", {})
            diff = ps.get("mean_diff", pu.get("mean_diff"))
            out.append(
                f"| {t['a']} | {t['b']} | {t['cell']} | {'MAE' if t['metric'] == 'mae' else t['metric'].upper()} | "
                f"{'–' if diff is None else f'{diff:+.4f}'} | {_p(ps.get('ttest_p'))} | "
                f"{_p(pu.get('wilcoxon_p'))} | {pu.get('n', '–')} |"
            )
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
        if key != "mae" and i != len(t.rows) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- files


def write_reports(results: Mapping[str, Any], out_dir: str | Path, extra: Sequence[ResultsView] = ()) -> list[Path]:
    """Write ``summary.md``, ``summary.tex`` and the plot next to ``results.json``; returns the paths."""
    from metarec.bench.plot import plot_views
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
    return written


def views_from_paths(paths: Iterable[str | Path]) -> list[ResultsView]:
    """Every results view in run folders, ``results.json`` or reference files, in order."""
    views: list[ResultsView] = []
    for p in paths:
        views.extend(load_views(p))
    return views


__all__ = ["Table", "group_views", "rich_tables", "table_console", "latex_table", "markdown_summary", "markdown_table", "rich_table", "views_from_paths", "write_reports"]
