"""Render the Results page's tables from committed benchmark files -- no number is typed by hand.

Inputs (all under ``benchmarks/results/`` unless noted):

* every ``results.json`` written by ``metarec bench`` (format ``metarec-bench-results-2``,
  see :mod:`metarec.bench.results`): per method and cell, the mean and std over seeds, the
  per-seed values, ``n`` and the bootstrap interval;
* the paper's Table 1 as a reference file (format ``metarec-bench-reference-1``): the first
  one found under ``benchmarks/`` or, failing that, ``docs/data/paper-table1.json``;
* every item warm-up ``results.json`` (``protocol: item-warmup``, written by ``metarec bench
  --protocol item-warmup``, see :mod:`metarec.warmup.bench`): per method and stage, AUC, F1 and
  log-loss as mean, std over seeds and the item-bootstrap interval -- its own section;
* the fair comparison's runs, folders ``fair-<dataset>-<date>/`` (the latest per dataset): shown
  first, beside the paper and the hand-preset run of :data:`HAND_RUNS`, with their average ranks;
* speed files: any JSON whose name contains ``speed`` (``benchmarks/bench_l2l_speed.py``
  writes ``l2l_speed_<device>_<time>.json``) or whose ``format`` starts with ``metarec-speed``.

The MkDocs hook (``docs/hooks.py``) calls :func:`render` at every build; run this file to
print the same markdown: ``python docs/gen_results.py [RESULTS_DIR]``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

ROOT = Path(__file__).resolve().parents[1]
RESULTS_FORMAT = "metarec-bench-results-2"
REFERENCE_FORMAT = "metarec-bench-reference-1"
SPEED_PREFIX = "metarec-speed"
CELLS = ("overall", "W-W", "W-C", "C-W", "C-C")
DATASET_NAMES = {"ml-1m": "MovieLens-1M", "book-crossing": "Book-Crossing", "yelp": "Yelp (HIN release)", "synthetic": "Synthetic data"}
PAPER_METHODS = ("melu", "metacs-dnn", "s2meta", "rum-item", "rum-feature", "mamo")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read results JSON ({exc})") from None


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _f(value: Any, digits: int = 4) -> str:
    v = _num(value)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------- discovery


def find_files(results_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(results.json files, speed files)`` under ``results_dir``, in path order."""
    results, speed = [], []
    if not results_dir.is_dir():
        return results, speed
    for path in sorted(results_dir.rglob("*.json")):
        if path.name == "results.json":
            results.append(path)
            continue
        if "speed" in path.name:
            speed.append(path)
            continue
        try:
            fmt = _read(path).get("format", "")
        except (ValueError, AttributeError):
            continue
        if isinstance(fmt, str) and fmt.startswith(SPEED_PREFIX):
            speed.append(path)
    return results, speed


def find_reference(root: Path = ROOT) -> Path | None:
    """The paper's Table 1: a reference file under ``benchmarks/``, else ``docs/data/paper-table1.json``."""
    bench = root / "benchmarks"
    if bench.is_dir():
        for path in sorted(bench.rglob("*.json")):
            try:
                if _read(path).get("format") == REFERENCE_FORMAT:
                    return path
            except (ValueError, AttributeError):
                continue
    fallback = root / "docs" / "data" / "paper-table1.json"
    return fallback if fallback.exists() else None


def load_reference(path: Path | None) -> dict[str, Mapping[str, Any]]:
    """``dataset -> method -> cells`` of a reference file (empty without one)."""
    if path is None:
        return {}
    data = _read(path)
    if data.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path}: expected format {REFERENCE_FORMAT!r}, got {data.get('format')!r}")
    return {ds: block.get("methods", {}) for ds, block in data.get("datasets", {}).items()}


# ----------------------------------------------------------------------------- tables


def _cell_text(entry: Mapping[str, Any] | None) -> str:
    """``mean ± std`` and the bootstrap interval of one metric of one cell."""
    if not entry:
        return "–"
    mean, std, ci = entry.get("mean"), entry.get("std"), entry.get("ci")
    text = _f(mean)
    if text == "–":
        return text
    if std is not None:
        text += f" ± {_f(std)}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f"<br><small>[{_f(ci[0])}, {_f(ci[1])}]</small>"
    return text


def _n_text(cells: Mapping[str, Any], cell: str) -> str:
    entry = cells.get(cell, {})
    n = entry.get("n_per_seed") or []
    users = entry.get("n_users_per_seed") or []
    if not n:
        return "–"
    n_text = str(n[0]) if len(set(n)) == 1 else f"{min(n)}–{max(n)}"
    u_text = "" if not users else (str(users[0]) if len(set(users)) == 1 else f"{min(users)}–{max(users)}")
    return f"{n_text} ({u_text} users)" if u_text else n_text


def results_table(data: Mapping[str, Any], reference: Mapping[str, Mapping[str, Any]]) -> str:
    """One dataset's reproduction table: every method, MAE, RMSE, within-user and clip NDCG@k, ours
    and the paper's (MAE and its scenario NDCG, which is a clip NDCG)."""
    k = int(data.get("metrics_info", {}).get("k", data.get("config", {}).get("k", 3)))
    ndcg = f"ndcg@{k}"
    methods = {m: e for m, e in data.get("methods", {}).items() if e.get("cells")}
    header = "| method | metric | " + " | ".join(CELLS) + " |"
    lines = [header, "|---|---|" + "---:|" * len(CELLS)]
    for method, entry in methods.items():
        cells = entry["cells"]
        paper = reference.get(method, {}).get("cells", {})
        seeds = entry.get("seeds", [])
        label = f"**{method}**<br><small>{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
        src = entry.get("settings_source") or {}
        if src.get("kind") == "tuned":  # metarec bench --tuned: name the study behind the settings
            label += (f", tuned: study `{src.get('study')}`, {src.get('trials')}/{src.get('budget')} trials, "
                      f"pool of {src.get('pool_users')} users")
        elif entry.get("preset"):
            label += f", preset `{entry['preset']}`" + (f" ({src['kind']})" if src.get("kind") else "")
        elif src.get("kind"):
            label += f", {src['kind']}"
        label += "</small>"
        # (title, our key, the paper's key): the paper's scenario NDCG is its clip NDCG
        rows = [("MAE", "mae", "mae"), ("RMSE", "rmse", None), (f"NDCG@{k} per user", ndcg, None),
                (f"clip NDCG@{k} (A.2.3)", f"clip_{ndcg}", ndcg)]
        first = True
        for title, key, paper_key in rows:
            ours = [_cell_text(cells.get(c, {}).get(key)) for c in CELLS]
            lines.append(f"| {label if first else ''} | {title} | " + " | ".join(ours) + " |")
            first = False
            if paper and paper_key:
                theirs = [_f(paper.get(c, {}).get(paper_key, {}).get("mean")) for c in CELLS]
                lines.append(f"| | {title} (paper) | " + " | ".join(theirs) + " |")
        lines.append(f"| | n ratings per seed | " + " | ".join(_n_text(cells, c) for c in CELLS) + " |")
    return "\n".join(lines)


def paper_table(methods: Mapping[str, Any], k: int = 3) -> str:
    """The published numbers of one dataset (single runs: no std, no intervals)."""
    lines = ["| method | metric | " + " | ".join(CELLS) + " |", "|---|---|" + "---:|" * len(CELLS)]
    for method, entry in methods.items():
        cells = entry.get("cells", {})
        for i, (title, key) in enumerate((("MAE", "mae"), (f"clip NDCG@{k} (A.2.3)", f"ndcg@{k}"))):
            values = [_f(cells.get(c, {}).get(key, {}).get("mean")) for c in CELLS]
            lines.append(f"| {f'**{method}**' if i == 0 else ''} | {title} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def run_summary(path: Path, data: Mapping[str, Any]) -> str:
    """Where a results table comes from: file, command, seeds, environment, protocol, status."""
    env = data.get("environment", {})
    git = env.get("git") or {}
    ds = data.get("dataset", {})
    proto = data.get("protocol") or ds.get("protocol") or {}
    info = data.get("metrics_info", {})
    items = [
        f"source: `{_rel(path)}`",
        f"command: `{' '.join(data['command'])}`" if data.get("command") else None,
        f"seeds: {', '.join(map(str, data.get('seeds', [])))}",
        f"dataset checksum: `{ds.get('checksum')}`" + ("" if ds.get("canonical") in (None, True) else " (not the canonical file)"),
        "protocol: " + ", ".join(f"{k}={v}" for k, v in proto.items()) if proto else None,
        f"environment: metarec {env.get('metarec', '?')}, torch {env.get('torch', '?')}, "
        f"{env.get('cpu_model', '?')} ({env.get('cpu_count', '?')} cores), CUDA {'yes' if env.get('cuda_available') else 'no'}"
        + (f", git {str(git.get('commit'))[:10]}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit") else ""),
        f"intervals: {info['ci']}" if info.get("ci") else None,
        f"std: {info['std']}" if info.get("std") else None,
    ]
    failed = {m: e for m, e in data.get("methods", {}).items() if e.get("status") != "ok"}
    for method, entry in failed.items():
        items.append(
            f"**{method}: {entry.get('status')}** — seeds ok {entry.get('seeds_ok')}, failed "
            f"{entry.get('seeds_failed')}, missing {entry.get('seeds_missing')}"
        )
    return "\n".join(f"- {item}" for item in items if item)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif not isinstance(value, list):
            out[name] = value
    return out


def _speed_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


#: Mappings of a speed record that describe its setup rather than summarise its measurement.
NOT_SUMMARIES = ("environment", "config", "overrides", "batch_s")


def speed_table(path: Path) -> str:
    """A speed file as a table: its records (``rows`` or ``results``, nested keys flattened) and its setup."""
    data = _read(path)
    rows = data.get("rows") or data.get("results") or []
    out = [f"#### `{path.name}`", ""]
    if data.get("what") or data.get("description"):
        out.append(str(data.get("what") or data.get("description")))
        out.append("")
    setup = {k: v for k, v in data.items() if k not in ("rows", "results", "environment", "what", "description", "format")
             and not isinstance(v, (dict, list))}
    items = [f"source: `{_rel(path)}`"] + [f"{k}: `{v}`" for k, v in setup.items()]
    env = data.get("environment") or {}
    if env:
        items.append("environment: " + ", ".join(
            f"{k} {_speed_value(v)}" for k, v in env.items() if v is not None and not isinstance(v, (dict, list))
        ))
    out.extend(f"- {item}" for item in items)
    out.append("")
    if not rows:  # a single measurement (e.g. bench_mamo_speed.py): its summaries as one row
        summary = {k: v for k, v in data.items() if isinstance(v, Mapping) and k not in NOT_SUMMARIES}
        rows = [summary] if summary else []
    if not rows or not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        out.append("*(this file holds no list of records under `rows` or `results`)*")
        return "\n".join(out)
    flat = [_flatten(r) for r in rows]
    keys: list[str] = []
    for r in flat:
        keys.extend(k for k in r if k not in keys)
    out.append("| " + " | ".join(keys) + " |")
    out.append("|" + "---|" * len(keys))
    for r in flat:
        out.append("| " + " | ".join(_speed_value(r.get(k)) for k in keys) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- the page


def _missing_methods(datasets: Iterable[str], covered: Mapping[str, set[str]]) -> list[str]:
    lines = []
    for ds in datasets:
        missing = [m for m in PAPER_METHODS if m not in covered.get(ds, set())]
        if missing:
            lines.append(f"- {DATASET_NAMES.get(ds, ds)}: no committed results yet for {', '.join(missing)}.")
    return lines


def _demote(markdown: str) -> str:
    """A notes file's headings as bold lines, so that they do not break the page's outline."""
    return "\n".join(f"**{line.lstrip('#').strip()}**" if line.startswith("#") else line for line in markdown.splitlines())


def render(results_dir: Path, reference_path: Path | None = None) -> str:
    """The generated part of the Results page (markdown)."""
    results_dir = Path(results_dir)
    reference_path = reference_path if reference_path is not None else find_reference()
    reference = load_reference(reference_path)
    results, speed = find_files(results_dir)
    out: list[str] = []
    ref_note = f"`{_rel(reference_path)}`" if reference_path else "none found"
    out.append(
        f"*Generated at build time by `docs/gen_results.py` from {len(results)} results file(s) and "
        f"{len(speed)} speed file(s) under `{_rel(results_dir)}/`; paper reference: {ref_note}.*"
    )
    out.append("")
    out.extend(fair_section(results_dir, reference_path))
    out.append("## Reproduction")
    out.append("")
    if not results:
        out.append('!!! warning "No benchmark results are committed yet"')
        out.append(f"    There is no `results.json` under `{_rel(results_dir)}/`, so this page shows no")
        out.append("    numbers of ours. Run `metarec bench` (see [Quick start](quickstart.md)) and commit its")
        out.append(f"    output folder under `{_rel(results_dir)}/`; the tables appear here at the next build.")
        out.append("")
    covered: dict[str, set[str]] = {}
    # the fullest comparison first (a folder of one method's presets after the Table 1 run)
    loaded = sorted(((path, _read(path)) for path in results), key=lambda pd: (-len(pd[1].get("methods", {})), str(pd[0])))
    warmup = [(path, data) for path, data in loaded if data.get("protocol") == WARMUP_PROTOCOL]
    loaded = [(path, data) for path, data in loaded if data.get("protocol") != WARMUP_PROTOCOL]
    for path, data in loaded:
        if data.get("format") != RESULTS_FORMAT:
            raise ValueError(f"{path}: expected format {RESULTS_FORMAT!r}, got {data.get('format')!r}; "
                             f"recompute it from its predictions: metarec report --rebuild {_rel(path.parent)}")
        ds = data.get("dataset", {}).get("name") or data.get("config", {}).get("dataset", "?")
        covered.setdefault(ds, set()).update(m for m, e in data.get("methods", {}).items() if e.get("cells"))
        label = path.parent.name  # the committed folder, as readers find it on disk
        out.append(f"### {DATASET_NAMES.get(ds, ds)} — `{label}`")
        out.append("")
        out.append(run_summary(path, data))
        out.append("")
        notes = path.parent / "NOTES.md"
        if notes.exists():  # how the folder was produced and what deviates: it travels with the numbers
            out.append(f'???+ note "Notes: how these results were produced and what they show (`{_rel(notes)}`)"')
            out.extend(("    " + line).rstrip() for line in _demote(notes.read_text()).splitlines())
            out.append("")
        out.append(results_table(data, reference.get(ds, {})))
        out.append("")
    for ds, methods in reference.items():
        if ds in covered:
            continue
        out.append(f"### {DATASET_NAMES.get(ds, ds)} — the paper's Table 1 only")
        out.append("")
        out.append("No results of ours for this dataset are committed; the published numbers, for reference:")
        out.append("")
        out.append(paper_table(methods))
        out.append("")
    gaps = _missing_methods([d for d in ("ml-1m", "book-crossing") if d in reference], covered)
    if gaps:
        out.append("Coverage of the paper's Table 1:")
        out.append("")
        out.extend(gaps)
        out.append("")
    if warmup:
        out.append("## Item warm-up protocol")
        out.append("")
        out.append("New items, cold stage and warm-up batches a, b, c ([the protocol](item-warmup.md)); cells: mean ± std over "
                   "seeds, below it the 95 % item-bootstrap interval of the mean.")
        out.append("")
    for path, data in warmup:
        out.extend(warmup_section(path, data))
    out.append("## Speed")
    out.append("")
    if not speed:
        out.append('!!! warning "No speed measurements are committed yet"')
        out.append(f"    No speed file (`*speed*.json`, e.g. from `benchmarks/bench_l2l_speed.py`) was found under")
        out.append(f"    `{_rel(results_dir)}/`.")
        out.append("")
    for path in speed:
        out.append(speed_table(path))
        out.append("")
    return "\n".join(out)


#: The hand-preset run each fair run is shown beside (folder names under benchmarks/results/).
HAND_RUNS = {"ml-1m": "ml1m-2026-12-01", "yelp": "yelp-3seeds-2026-12-01"}
FAIR_PREFIX = "fair-"


def fair_section(results_dir: Path, reference_path: Path | None) -> list[str]:
    """The fair comparison, first on the page: per dataset the paper, the hand presets and the
    latest ``fair-<dataset>-<date>`` run side by side, then the average ranks over datasets and
    cells (``metarec.bench.sidebyside`` / ``metarec.bench.ranks``, as ``metarec report`` writes them)."""
    from metarec.bench.ranks import compare_views, ranks_markdown
    from metarec.bench.results import load_views
    from metarec.bench.sidebyside import side_by_side_markdown

    latest: dict[str, Path] = {}
    for path in sorted(Path(results_dir).glob(f"{FAIR_PREFIX}*/results.json")):
        data = _read(path)
        if data.get("protocol") == WARMUP_PROTOCOL or data.get("format") != RESULTS_FORMAT:
            continue
        latest[data.get("dataset", {}).get("name") or data.get("config", {}).get("dataset", "?")] = path.parent
    out = ["## The fair comparison", ""]
    if not latest:
        out += ["No fair run (`benchmarks/results/fair-<dataset>-<date>/`, from `benchmarks/configs/fair-*.toml`) is "
                "committed yet; the tables below are the hand-preset runs. See "
                "[how the methods are compared](#how-the-methods-are-compared).", ""]
        return out
    views = []
    refs = load_views(reference_path) if reference_path else []
    for ds, run in latest.items():
        views += [r for r in refs if ds in r.aliases]
        hand = Path(results_dir) / HAND_RUNS.get(ds, "")
        if ds in HAND_RUNS and (hand / "results.json").exists():
            views += load_views(hand, label="hand")
        views += load_views(run, label="tuned")
    out += [f"Runs: {', '.join(f'`{_rel(p)}`' for p in latest.values())}; hand presets: "
            f"{', '.join(f'`{HAND_RUNS[d]}`' for d in latest if d in HAND_RUNS) or 'none'}.", ""]
    out += _demote(side_by_side_markdown(views)).splitlines() + [""]
    tuned = [v for v in views if v.label == "tuned"]
    try:
        out += [*_demote(ranks_markdown(compare_views(tuned))).splitlines(), ""]
    except ValueError as exc:
        out += [f"(no rank comparison: {exc})", ""]
    return out


WARMUP_PROTOCOL = "item-warmup"
WARMUP_METRICS = (("auc", "AUC"), ("f1", "F1 (threshold 0.5)"), ("f1_mean", "F1 (test-mean threshold, CVAR's rule)"),
                  ("logloss", "log-loss"))


def _warmup_cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "n/a"
    text = _f(cell.get("mean")) + ("" if cell.get("std") is None else f" ± {_f(cell['std'])}")
    lo, hi = (cell.get("ci") or [None, None])[:2]
    return text + ("" if lo is None or hi is None else f"<br><small>[{_f(lo)}, {_f(hi)}]</small>")


def warmup_section(path: Path, data: Mapping[str, Any]) -> list[str]:
    """One item warm-up results folder: its provenance, notes and one methods x stages table per metric."""
    ds = data.get("dataset", {})
    name = ds.get("name", "?")
    out = [f"### {DATASET_NAMES.get(name, name)} — `{path.parent.name}`", ""]
    env = data.get("environment", {})
    git = env.get("git") or {}
    items = [
        f"source: `{_rel(path)}`",
        f"command: `{' '.join(data['command'])}`" if data.get("command") else None,
        f"seeds: {', '.join(map(str, data.get('seeds', [])))}",
        f"dataset checksum: `{ds.get('checksum')}`",
        f"split: {ds.get('label_rule')}; {ds.get('old_items')} old items ({ds.get('rows_base')} rows), "
        f"{ds.get('new_items')} new items, warm-up batches {ds.get('rows_per_stage')}, {ds.get('rows_test')} test rows, "
        f"{ds.get('order_rule')} order",
        f"environment: metarec {env.get('metarec', '?')}, torch {env.get('torch', '?')}, {env.get('cpu_model', '?')} "
        f"({env.get('cpu_count', '?')} cores)" + (f", git {str(git.get('commit'))[:10]}" if git.get("commit") else ""),
    ]
    failed = [r for r in data.get("runs", []) if r.get("status") != "ok"]
    items += [f"**failed: {r.get('method')} seed {r.get('seed')}**: {r.get('error')}" for r in failed]
    out += [f"- {i}" for i in items if i] + [""]
    notes = path.parent / "NOTES.md"
    if notes.exists():
        out.append(f'???+ note "Notes: how these results were produced and what they show (`{_rel(notes)}`)"')
        out.extend(("    " + line).rstrip() for line in _demote(notes.read_text()).splitlines())
        out.append("")
    stages = list(data.get("stages", []))
    for key, title in WARMUP_METRICS:
        out += [f"**{title}**", "", "| method | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
        for method, entry in data.get("methods", {}).items():
            cells = entry.get("stages", {})
            out.append(f"| {method} | " + " | ".join(_warmup_cell(cells.get(s, {}).get(key)) for s in stages) + " |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results_dir = Path(args[0]) if args else ROOT / "benchmarks" / "results"
    sys.stdout.write(render(results_dir) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
