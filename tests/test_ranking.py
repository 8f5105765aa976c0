"""Full-catalogue ranking: candidate batches, Recall@k / NDCG@k by hand, item states, and the
per-scenario candidate sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metarec.methods.simple import BaselinePredictor, GlobalMean
from metarec.ranking import catalogue_ranking, item_states, rank_metrics
from metarec.tasks import candidate_batches


def test_with_candidates_scores_arbitrary_items(synthetic_split):
    test = synthetic_split.test.subset(torch.arange(5))
    cands = torch.tensor([3, 7, 11, 0])
    scored = test.with_candidates(cands)
    assert scored.n_query == 4 and torch.equal(scored.query_items[2], cands)
    assert torch.isnan(scored.query_ratings).all() and torch.equal(scored.support_items, test.support_items)
    learner = BaselinePredictor(synthetic_split.train.schema).meta_fit(synthetic_split.train)
    seen = []
    for idx, batch in candidate_batches(test, cands, 2):
        seen.extend(idx.tolist())
        assert batch.query_items.shape == (len(idx), 4)
        pred = learner.adapt_and_predict(batch)
        assert torch.isfinite(pred).all()
    assert seen == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="rows of the item table"):
        test.with_candidates([len(test.items)])


def test_rank_metrics_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    relevant = np.array([[False, True, False, False, True, False]])
    allowed = np.ones_like(relevant)
    out = rank_metrics(scores, relevant, allowed, ks=(2, 5))
    # ranks 2 and 5 are relevant
    assert out["recall@2"][0] == pytest.approx(0.5) and out["recall@5"][0] == pytest.approx(1.0)
    assert out["ndcg@2"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out["ndcg@5"][0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))
    # a candidate that is not allowed (e.g. a support item) is skipped, moving the others up
    allowed2 = allowed.copy()
    allowed2[0, 0] = False
    out2 = rank_metrics(scores, relevant, allowed2, ks=(1,))
    assert out2["recall@1"][0] == pytest.approx(0.5) and out2["ndcg@1"][0] == pytest.approx(1.0)
    # no relevant item: NaN (the user is left out of the cell), not 0 or 1
    assert np.isnan(rank_metrics(scores, np.zeros_like(relevant), allowed, ks=(2,))["ndcg@2"][0])


def test_ties_are_broken_at_random_not_by_item_id():
    C = 200
    scores = np.zeros((50, C))
    relevant = np.zeros((50, C), dtype=bool)
    relevant[:, 0] = True  # the first item id: an id-order tie-break would always rank it first
    out = rank_metrics(scores, relevant, np.ones_like(relevant), ks=(10,), rng=np.random.default_rng(3))
    assert out["recall@10"].mean() < 0.5  # a constant scorer is near chance (10/200), not perfect


def test_item_states_match_the_protocol(synthetic_split):
    rated, cold = item_states(synthetic_split)
    assert rated.sum() == synthetic_split.info["items_in_trimmed_table"]
    assert cold.sum() == synthetic_split.info["items_cold"]


def test_catalogue_ranking_per_scenario(synthetic_split):
    train = synthetic_split.train
    good = BaselinePredictor(train.schema).meta_fit(train)
    flat = GlobalMean(train.schema).meta_fit(train)
    res = catalogue_ranking(good, synthetic_split, seed=0)
    base = catalogue_ranking(flat, synthetic_split, seed=0)
    rated, cold = item_states(synthetic_split)
    assert res["candidates"] == {"all": int(rated.sum()), "warm": int((rated & ~cold).sum()), "cold": int(cold.sum())}
    cells = res["cells"]
    assert set(cells) == {"overall", "W-W", "W-C", "C-W", "C-C"}
    assert cells["overall"]["n_candidates"] == res["candidates"]["all"]
    assert cells["W-C"]["n_candidates"] == res["candidates"]["cold"]
    for name in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        assert 0.0 <= cells["overall"][name] <= 1.0
    assert cells["overall"]["recall@20"] >= cells["overall"]["recall@10"]
    # a model that knows item quality ranks far better than a constant (random-tie) scorer
    assert cells["overall"]["recall@20"] > 2 * base["cells"]["overall"]["recall@20"]
    again = catalogue_ranking(good, synthetic_split, seed=0)
    assert again["cells"] == cells
    # every test user with a relevant query item is counted in the overall cell
    test = synthetic_split.test
    has = ((test.query_ratings >= 4) & test.query_mask).any(1)
    assert cells["overall"]["n_users"] == int(has.sum())


def test_bench_option_reports_catalogue_ranking(tmp_path):
    import json
    import os

    from click.testing import CliRunner

    from metarec.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "bench", "--methods", "global-mean,baseline-predictor", "--dataset", "synthetic", "--seeds", "0,1",
        "--n-boot", "20", "--threads", "1", "--no-progress", "--ranking", "catalogue", "--out", str(out),
    ], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["ranking"] == "catalogue"
    cat = results["methods"]["baseline-predictor"]["catalogue_ranking"]
    assert cat["n_seeds"] == 2 and set(cat["cells"]) == {"overall", "W-W", "W-C", "C-W", "C-C"}
    overall = cat["cells"]["overall"]
    assert len(overall["ndcg@10"]["values"]) == 2 and overall["recall@20"]["mean"] is not None
    run = json.loads((out / "runs" / "baseline-predictor__seed1.json").read_text())
    assert run["catalogue_ranking"]["cells"]["overall"]["recall@20"] == overall["recall@20"]["values"][1]
    assert "catalogue_s" in run["timings"] and run["learner_state"] == {}
    summary = (out / "summary.md").read_text()
    assert "## Full-catalogue ranking" in summary and "| baseline-predictor | Recall@20 |" in summary
