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


def _round4(value):
    """4 significant digits, as the defaults are written; other values unchanged."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("method", ["baseline-predictor", "profile-mlp", "profile-mlp-finetune", "melu"])
def test_the_defaults_are_the_committed_tuned_settings(method):
    """These methods' defaults are the best trials of the committed 20-trial study on the tuning
    pool (never a test user), not values picked by hand or on test users: on the pool they beat
    the hand presets (MAMO's hand preset beats its 20 trials there, so MAMO keeps it)."""
    from metarec.config import load_toml
    from metarec.methods.simple import TUNED_ON
    from metarec.registry import get_learner

    best = load_toml(REPO / TUNED_ON / "best.toml")
    provenance = best["provenance"][method]
    assert provenance["source"] == "tuned" and provenance["budget"] == 20 and provenance["trials"] == 20
    assert provenance["tuning_fraction"] == 0.1
    defaults = get_learner(method).Config()
    tuned = {k: _round4(v) for k, v in best["methods"][method].items()}
    assert {k: getattr(defaults, k) for k in tuned} == tuned
