"""Committed tuning studies stay consistent: ``metarec report`` rebuilds each committed tune
folder's summary and best settings from its Optuna journal, exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
TUNE_DIRS = sorted(p.parent for p in (REPO / "benchmarks" / "results").glob("*/tune.json"))


@pytest.mark.skipif(not TUNE_DIRS, reason="no tuning study is committed")
@pytest.mark.parametrize("tune_dir", TUNE_DIRS, ids=lambda p: p.name)
def test_report_rebuilds_the_committed_tune_from_its_journal(tune_dir, tmp_path):
    pytest.importorskip("optuna")
    from metarec.cli import main

    copy = tmp_path / tune_dir.name
    shutil.copytree(tune_dir, copy)
    for name in ("summary.md", "summary.json", "best.toml"):
        (copy / name).unlink()
    res = CliRunner().invoke(main, ["report", str(copy)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    for name in ("summary.md", "best.toml"):
        assert (copy / name).read_text() == (tune_dir / name).read_text(), name
