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
