"""Committed benchmark results stay consistent: every number of each committed ``results.json``
is recomputed from its committed predictions by the independent script in ``benchmarks/``, and
``metarec report`` re-renders the committed tables from it."""

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
    (copy / "summary.md").unlink()
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "summary.md").read_text() == (run_dir / "summary.md").read_text()
