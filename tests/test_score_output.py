"""A learner that declares ``output = "score"``: no clipping, MAE/RMSE reported as n/a, the
ranking metrics as usual."""

from __future__ import annotations

import json
import os
from typing import ClassVar

from rich.console import Console

from metarec.bench.config import resolve_config
from metarec.bench.runner import run_bench
from metarec.methods.simple import BaselinePredictor
from metarec.registry import register_learner, unregister_learner


class ScoreBaseline(BaselinePredictor):
    """The baseline predictor on an arbitrary monotone scale: same ranking, meaningless errors."""

    name: ClassVar[str] = "score-baseline"
    output: ClassVar[str] = "score"

    def adapt_and_predict(self, batch):
        return 100.0 * super().adapt_and_predict(batch) - 7.0


def test_score_learner_is_not_clipped(synthetic_split):
    learner = ScoreBaseline(synthetic_split.train.schema)
    learner.meta_fit(synthetic_split.train)
    pred = learner.predict(synthetic_split.test)
    assert pred.max() > synthetic_split.train.schema.rating_max  # a rating learner would be clipped here


def test_bench_reports_mae_as_not_applicable(tmp_path):
    register_learner("score-baseline")(ScoreBaseline)
    try:
        cfg = resolve_config({"bench": {
            "dataset": "synthetic", "synthetic": {"n_users": 150, "n_items": 120, "seed": 0}, "seeds": [0, 1],
            "n_boot": 20, "progress": False, "threads": 1,
            "methods": ["score-baseline", "baseline-predictor"],
        }})
        results = run_bench(cfg, out=tmp_path / "run", console=Console(file=open(os.devnull, "w")))
    finally:
        unregister_learner("score-baseline")
    cells = results["methods"]["score-baseline"]["cells"]
    base = results["methods"]["baseline-predictor"]["cells"]
    for cell in cells.values():
        assert cell["mae"]["mean"] is None and "n/a" in cell["mae"]["na"]
        assert cell["rmse"]["mean"] is None
    # the same order as the baseline predictor: identical NDCG
    assert abs(cells["overall"]["ndcg@3"]["mean"] - base["overall"]["ndcg@3"]["mean"]) < 1e-9
    assert base["overall"]["mae"]["mean"] is not None
    run = json.loads((tmp_path / "run" / "runs" / "score-baseline__seed0.json").read_text())
    assert run["output"] == "score" and run["metrics"]["overall"]["mae"] is None
    summary = (tmp_path / "run" / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| score-baseline | MAE"))
    assert "n/a" in row
    mae_tests = [t for t in results["paired_tests"] if t["metric"] == "mae"]
    assert mae_tests and all("skipped" in t["per_seed"] for t in mae_tests)
