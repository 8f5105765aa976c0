"""Committed benchmark results stay consistent: every number of each committed ``results.json``
is recomputed from its committed predictions by the independent script in ``benchmarks/``, and
``metarec report`` re-renders the committed tables (summary.md, summary.tex) and the forest plot
(forest.svg: no date, fixed ids) from it exactly."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
RUN_DIRS = sorted(p.parent for p in (REPO / "benchmarks" / "results").glob("*/results.json"))


def _recompute():
    spec = importlib.util.spec_from_file_location("recompute_metrics", REPO / "benchmarks" / "recompute_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not RUN_DIRS, reason="no benchmark results are committed")
@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda p: p.name)
def test_committed_predictions_reproduce_results_json(run_dir):
    assert (run_dir / "predictions.csv.gz").exists() or (run_dir / "predictions.csv").exists()
    assert _recompute().main([str(run_dir)]) == 0


@pytest.mark.skipif(not RUN_DIRS, reason="no benchmark results are committed")
@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda p: p.name)
def test_report_re_renders_the_committed_tables(run_dir, tmp_path):
    from metarec.cli import main

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    rendered = [name for name in ("summary.md", "summary.tex", "forest.svg") if (run_dir / name).exists()]
    for name in rendered:
        (copy / name).unlink()
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    for name in rendered:
        if name.endswith(".svg") and importlib.util.find_spec("matplotlib") is None:
            continue  # the plot extra is not installed: no picture is drawn
        assert (copy / name).read_text() == (run_dir / name).read_text(), name


@pytest.mark.skipif(not RUN_DIRS, reason="no benchmark results are committed")
@pytest.mark.parametrize("run_dir", RUN_DIRS, ids=lambda p: p.name)
def test_committed_runs_with_a_baseline_family_have_their_forest_plot(run_dir):
    import json

    results = json.loads((run_dir / "results.json").read_text())
    if (results.get("baseline_tests") or {}).get("tests"):
        assert (run_dir / "forest.svg").exists() and (run_dir / "forest.png").exists()


RESULTS = REPO / "benchmarks" / "results"
REPORTS = sorted(RESULTS.glob("fair-report-*"))


@pytest.mark.skipif(not REPORTS, reason="no fair comparison report is committed")
def test_committed_fair_report_re_renders_from_the_committed_runs(tmp_path):
    """The cross-dataset report (side by side paper | hand | tuned, average ranks, CD diagram)
    comes out of `metarec report` from the committed run folders alone, byte for byte: the command
    of docs/results.md, on the latest fair run of each dataset and the hand-preset runs."""
    from metarec.cli import main

    report = REPORTS[-1]
    ml1m, yelp = sorted(RESULTS.glob("fair-ml1m-*"))[-1], sorted(RESULTS.glob("fair-yelp-*"))[-1]
    out = tmp_path / report.name
    args = ["report", str(RESULTS / "ml1m-2026-12-01"), str(ml1m), str(RESULTS / "yelp-3seeds-2026-12-01"), str(yelp),
            "--label", "hand", "--label", "tuned", "--label", "hand", "--label", "tuned", "--reference",
            "--side-by-side", "--ranks", "tuned", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    names = ["side-by-side.md", "ranks.md", "ranks.json", "summary.md", "summary.tex"]
    if importlib.util.find_spec("matplotlib") is not None:
        names.append("cd.svg")  # no date, fixed ids; plot.svg carries its date
    for name in names:
        assert (out / name).read_text() == (report / name).read_text(), name
