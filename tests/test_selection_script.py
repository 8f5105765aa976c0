"""benchmarks/select_simple_baselines.py: picks the simple baselines' defaults on validation users."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_selection_runs_on_validation_users_and_reports_the_best_point(tmp_path):
    out = tmp_path / "selection.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "select_simple_baselines.py"), "--dataset", "synthetic",
         "--seeds", "0", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    split = record["splits"]["0"]
    # validation users are 20 % of the training users; the test users exist but are never used
    assert split["validation_users"] == round(0.2 * (split["train_users"] + split["validation_users"]))
    assert split["test_users_not_used"] > 0
    bp = record["baseline-predictor"]
    means = {k: v["mean"] for k, v in bp["scores"].items()}
    assert len(means) == 8 * 7 * 3
    assert bp["best"]["validation_mae"] == min(means.values())
    assert "environment" in record and record["seeds"] == [0]


def test_the_committed_selection_is_what_the_defaults_are():
    from metarec.methods.simple import BaselinePredictorConfig

    record = json.loads((REPO / "benchmarks" / "results" / "simple_baselines_selection_ml-1m.json").read_text())
    best = record["baseline-predictor"]["best"]["settings"]
    defaults = BaselinePredictorConfig()
    assert {k: getattr(defaults, k) for k in best} == best
    assert record["seeds"] == [0, 1, 2, 3, 4] and record["validation_fraction"] == 0.2
