"""``metarec report``: re-render tables and plots from saved benchmark results."""

from __future__ import annotations

from pathlib import Path

import click

#: The paper's published Table 1, shipped with the repository as a results file.
PAPER_REFERENCE = Path(__file__).resolve().parents[2] / "benchmarks" / "reference" / "mamo-table1.json"


def _reference_path(value: str) -> Path:
    if value == "paper":
        if not PAPER_REFERENCE.exists():
            raise click.ClickException(
                f"the paper's reference numbers are not at {PAPER_REFERENCE} (they ship with the source "
                "repository, not the wheel); pass the file: --reference path/to/mamo-table1.json"
            )
        return PAPER_REFERENCE
    path = Path(value)
    if not path.exists():
        raise click.ClickException(f"--reference: no such file {path}")
    return path


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--reference", "-r", "reference", is_flag=False, flag_value="paper", default=None, metavar="[FILE]",
              help="Add published numbers side by side: the paper's Table 1 (no value) or a reference/results FILE.")
@click.option("--out", "-o", type=click.Path(file_okay=False),
              help="Write summary.md/.tex and plot.png/.svg here. [default: the run folder when one is given]")
@click.option("--label", "labels", multiple=True, help="Row label of each PATH, in order (default: folder names).")
@click.option("--rebuild", is_flag=True,
              help="First recompute every number of each run folder from its predictions with this metarec's "
                   "metrics (rewrites its results.json; needed for folders of an older metarec).")
@click.option("--retest", is_flag=True,
              help="First recompute only the paired tests of each run folder from its predictions (keeps every "
                   "metric and interval; adds the tests of this metarec, e.g. the unique-user test).")
@click.option("--against", metavar="METHOD", default=None,
              help="With --rebuild or --retest: compare every method with METHOD in the baseline tests "
                   "[default: the best simple baseline].")
@click.option("--side-by-side", "side_by_side", is_flag=True,
              help="With --out: also write side-by-side.md, one table per dataset with every PATH (and "
                   "--reference) as columns: e.g. the paper, hand presets, a tuned run.")
@click.option("--ranks", "ranks", is_flag=False, flag_value="*", default=None, metavar="[LABEL]",
              help="With --out: also write ranks.md/.json and cd.png/.svg, the average ranks and Demšar's "
                   "critical-difference diagram over every dataset's scenario cells, of the runs labelled "
                   "LABEL (--label; no value: every run, one per dataset).")
@click.option("--rank-metric", default="mae", show_default=True, metavar="METRIC",
              help="The metric --ranks ranks by: mae, rmse, ndcg@3, clip_ndcg@3.")
def report(paths: tuple[str, ...], reference: str | None, out: str | None, labels: tuple[str, ...],
           rebuild: bool, against: str | None, side_by_side: bool = False, ranks: str | None = None,
           rank_metric: str = "mae", retest: bool = False) -> None:
    """Show saved results (run folders, results.json or reference files) as one table.

    With one run folder and no --out, its summary.md, summary.tex and plot are rewritten
    (with the reference rows when --reference is given). With several, the table compares
    them, and --out writes the comparison's files. A `metarec tune` folder gets its tuning
    summary (method, trials, pruned, best value, wall time, best settings), its files rebuilt
    from the study's journal.

    \b
    Examples:
      metarec report runs/20240101-120000
      metarec report runs/a runs/b --out runs/compare
      metarec report runs/a --reference
      metarec report --rebuild runs/old-run
      metarec report --rebuild --against baseline-predictor runs/a
      metarec report --retest runs/a
      metarec report runs/tune-ml1m
      metarec report ml1m-hand ml1m-tuned --label hand --label tuned --reference --out cmp --side-by-side
      metarec report fair-ml1m fair-yelp --out cmp --ranks
    """
    from metarec.bench.plot import plot_views
    from metarec.bench.report import latex_table, markdown_table, rich_tables, table_console, write_reports
    from metarec.bench.results import load_views, read_json
    from metarec.checkpoint import atomic_write_text

    if labels and len(labels) != len(paths):
        raise click.ClickException(f"--label given {len(labels)} time(s) for {len(paths)} path(s)")
    console = table_console()
    from metarec.tuning.outputs import is_tune_dir

    tune_dirs = [p for p in paths if Path(p).is_dir() and is_tune_dir(p)]
    for p in tune_dirs:
        _tuning_report(Path(p), console)
    if tune_dirs:
        keep = [i for i, p in enumerate(paths) if p not in tune_dirs]
        paths = tuple(paths[i] for i in keep)
        labels = tuple(labels[i] for i in keep) if labels else labels
        if not paths:
            return
    warmup_dirs = [p for p in paths if _is_item_warmup(Path(p))]
    if warmup_dirs:
        if len(warmup_dirs) != len(paths) or rebuild or reference or out or labels:
            raise click.ClickException(
                "item warm-up folders are re-rendered on their own (metarec report DIR ...): --rebuild, --reference, "
                "--out, --label and user-cold folders do not mix with them")
        for p in warmup_dirs:
            _item_warmup_report(Path(p), console)
        return
    if (side_by_side or ranks is not None) and out is None:
        raise click.ClickException("--side-by-side and --ranks write files: give the folder with --out")
    if against is not None and not (rebuild or retest):
        raise click.ClickException("--against needs --rebuild or --retest (the tests are recomputed from the predictions)")
    if rebuild and retest:
        raise click.ClickException("--rebuild already recomputes the tests: give --rebuild or --retest, not both")
    if rebuild or retest:
        from metarec.bench.results import rebuild_results, retest_results

        # the two differ only in what they recompute: everything, or only the paired tests
        option, redo, done = ("--retest", retest_results, "retested") if retest else ("--rebuild", rebuild_results, "rebuilt")
        for p in paths:
            if not Path(p).is_dir():
                raise click.ClickException(f"{option}: {p} is not a run folder (a folder with results.json)")
            try:
                redo(p, baseline=against)
            except (ValueError, FileNotFoundError) as exc:
                raise click.ClickException(str(exc)) from None
            console.print(f"{done} {Path(p) / 'results.json'} from its predictions")
    try:
        views = []
        for i, p in enumerate(paths):
            views.extend(load_views(p, label=labels[i] if labels else None))
        refs = load_views(_reference_path(reference)) if reference else []
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    runs = [v for v in views if not v.published]
    if runs and refs:
        names = {n for v in runs for n in v.aliases}
        matching = [r for r in refs if r.dataset in names]
        if not matching:
            known = ", ".join(r.dataset for r in refs)
            raise click.ClickException(
                f"the reference has no numbers for dataset(s) {sorted(names)}; it covers: {known}"
            )
        refs = matching
    all_views = views + refs
    if not all_views or not any(v.methods for v in all_views):
        raise click.ClickException("no successful results to show")
    for table in rich_tables(all_views, width=console.width):
        console.print(table)

    single_run = len(paths) == 1 and Path(paths[0]).is_dir() and len(runs) == 1
    if out is None and single_run:
        run_dir = Path(paths[0])
        written = write_reports(read_json(run_dir / "results.json"), run_dir, extra=refs)
    elif out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "summary.md", "# metarec report\n\n" + markdown_table(all_views) + "\n")
        atomic_write_text(out_dir / "summary.tex", latex_table(all_views))
        written = [out_dir / "summary.md", out_dir / "summary.tex", *plot_views(all_views, out_dir / "plot")]
        if side_by_side:
            from metarec.bench.sidebyside import side_by_side_markdown

            atomic_write_text(out_dir / "side-by-side.md", "# Side by side\n\n" + side_by_side_markdown(all_views))
            written.append(out_dir / "side-by-side.md")
        if ranks is not None:
            written.extend(_write_ranks([v for v in runs if ranks == "*" or v.label == ranks], ranks, rank_metric,
                                        out_dir))
    else:
        written = []
    for w in written:
        console.print(f"wrote {w}")


def _write_ranks(views: list, label: str, metric: str, out_dir: Path) -> list[Path]:
    """ranks.md, ranks.json and the CD diagram of ``views`` (one run per dataset)."""
    from metarec.bench.ranks import cd_diagram, compare_views, ranks_markdown
    from metarec.bench.results import write_json
    from metarec.checkpoint import atomic_write_text

    if not views:
        raise click.ClickException(f"--ranks {label}: no run is labelled {label!r}; label the runs with --label")
    try:
        cmp = compare_views(views, metric=metric)
    except ValueError as exc:
        raise click.ClickException(f"--ranks: {exc}") from None
    atomic_write_text(out_dir / "ranks.md", ranks_markdown(cmp))
    write_json(out_dir / "ranks.json", cmp.as_dict())
    return [out_dir / "ranks.md", out_dir / "ranks.json", *cd_diagram(cmp, out_dir / "cd")]


def _is_item_warmup(path: Path) -> bool:
    """Whether ``path`` is an item warm-up run folder (its results.json says ``protocol: item-warmup``)."""
    import json

    f = path / "results.json" if path.is_dir() else path
    if f.name != "results.json" or not f.is_file():
        return False
    try:
        return json.loads(f.read_text("utf-8")).get("protocol") == "item-warmup"
    except (ValueError, OSError):
        return False


def _item_warmup_report(path: Path, console: object) -> None:
    """Re-render an item warm-up folder's summary.md and plot from its results.json and print the summary."""
    import json

    from metarec.checkpoint import atomic_write_text
    from metarec.warmup.bench import markdown_summary
    from metarec.warmup.plot import plot_warmup

    run_dir = path if path.is_dir() else path.parent
    results = json.loads((run_dir / "results.json").read_text("utf-8"))
    text = markdown_summary(results)
    atomic_write_text(run_dir / "summary.md", text)
    click.echo(text)
    for w in [run_dir / "summary.md", *plot_warmup(results, run_dir / "plot")]:
        click.echo(f"wrote {w}")


def _tuning_report(path: Path, console: object) -> None:
    """Print a tune folder's summary; rebuild its files from the journal when Optuna is installed."""
    from metarec.bench.results import read_json
    from metarec.tuning.outputs import rich_summary

    try:
        import optuna  # noqa: F401
    except ImportError:
        optuna = None
    try:
        if optuna is not None:
            from metarec.tuning.run import rebuild_outputs

            rows = rebuild_outputs(path)
            metric = read_json(path / "tune.json")["config"]["metric"]
        elif (path / "summary.json").exists():
            saved = read_json(path / "summary.json")
            rows, metric = saved["methods"], saved["tune"]["config"]["metric"]
        else:
            raise click.ClickException(f"{path}: no summary.json yet; install Optuna (pip install 'metarec[tune]') to read the journal")
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise click.ClickException(f"{path}: cannot read the tune: {exc}") from None
    console.print(rich_summary(rows, metric, title=f"metarec tune: {path}"))  # type: ignore[attr-defined]
    console.print(f"wrote {path / 'summary.md'}, {path / 'best.toml'} and {path}/<method>/")  # type: ignore[attr-defined]
