"""The learner contract (metarec.testing.check_learner) over every registered learner.

Built-ins, the baselines (registered through entry points like any plugin) and the docs
tutorial's learner must all pass; two deliberately broken learners must fail with the rule
they break named.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from metarec.learner import LearnerContractError
from metarec.methods.simple import GlobalMean
from metarec.registry import learner_entries, learner_protocol
from metarec.testing import RULES, check_learner, tiny_split
from tutorial_source import tutorial_reptile


#: Small model sizes per learner so that the whole contract runs in seconds (training is 2 epochs).
TINY: dict[str, dict] = {
    "mamo": dict(embedding_dim=8, batch_size=16),
    "melu": dict(embedding_dim=4, hidden=(8,), batch_size=16),
    "metacs-dnn": dict(embedding_dim=4, hidden=(8,), batch_size=16),
    "s2meta": dict(embedding_dim=4, side_width=8, hidden=(8,), lstm_hidden=4, max_steps=3, min_steps=1, batch_size=16),
    "rum-item": dict(embedding_dim=4, batch_size=16),
    "rum-feature": dict(embedding_dim=4, memory_slots=4, batch_size=16),
    # lr 1e-2: at the default 1e-3 six steps leave every prediction clipped to the rating floor
    "profile-mlp": dict(embedding_dim=4, hidden=(8,), batch_size=16, lr=1e-2),
    "profile-mlp-finetune": dict(embedding_dim=4, hidden=(8,), batch_size=16),
    "toy-reptile": dict(embedding_dim=4, hidden=(8,), batch_size=16),
    # meta_lr 1e-2: at the default 5e-4 two tiny epochs leave seeds 0 and 1 predicting alike
    "metahin": dict(meta_lr=1e-2, batch_size=16),
}




def _registered() -> list:
    # the user-task contract; item warm-up learners have their own (tests/test_item_warmup.py)
    names = sorted(n for n, e in learner_entries().items() if learner_protocol(e.load()) == "user-cold")
    if "toy-reptile" not in names:  # the tutorial package is not installed: take it from the docs
        names.append("toy-reptile")
    return names


@pytest.fixture(scope="module")
def split():
    return tiny_split()


@pytest.mark.parametrize("name", _registered())
def test_every_registered_learner_keeps_the_contract(name, split):
    target = tutorial_reptile() if name == "toy-reptile" and name not in learner_entries() else name
    report = check_learner(target, overrides=TINY.get(name, {}), split=split)
    assert set(report.passed) | set(report.skipped) == set(RULES)
    if name not in ("global-mean", "baseline-predictor"):
        assert set(report.skipped) <= {"precomputed-item-inputs"}, report.skipped
    # what the serving path caches per catalogue: checked where a learner offers it
    if name in PRECOMPUTES_ITEM_INPUTS:
        assert "precomputed-item-inputs" in report.passed, report.skipped


#: Learners whose item embedder is never adapted locally, so the serving path embeds the catalogue once.
PRECOMPUTES_ITEM_INPUTS = {"mamo", "melu", "profile-mlp", "profile-mlp-finetune"}


def test_a_learner_whose_precomputed_item_inputs_change_its_predictions_fails(split):
    class WrongPrecompute(GlobalMean):
        name: ClassVar[str] = "cheat-precompute"

        def precompute_item_inputs(self, items_x):
            return {"bias": torch.ones(len(next(iter(items_x.values()))))}

        def adapt_and_predict(self, batch):
            out = super().adapt_and_predict(batch)
            return out + batch.query_features["bias"] if "bias" in batch.query_features else out

    with pytest.raises(LearnerContractError, match="precomputed-item-inputs") as info:
        check_learner(WrongPrecompute, split=split)
    assert info.value.rule == "precomputed-item-inputs"


class ReadsQueryRatings(GlobalMean):
    """Cheats: predicts each query rating as itself (MAE 0 if the harness let it)."""

    name: ClassVar[str] = "cheat-query"

    def adapt_and_predict(self, batch):
        return batch.query_ratings.clone()


class DependsOnBatch(GlobalMean):
    """Predicts the mean support rating of the whole batch: users influence each other."""

    name: ClassVar[str] = "cheat-batch"

    def adapt_and_predict(self, batch):
        mean = batch.support_ratings[batch.support_mask].mean()
        return mean.expand(batch.query_items.shape).clone()


def test_a_learner_that_reads_query_ratings_fails_query_blind(split):
    with pytest.raises(LearnerContractError, match="query-blind") as info:
        check_learner(ReadsQueryRatings, split=split)
    assert info.value.rule == "query-blind"


def test_the_harness_refuses_a_learner_that_reads_query_ratings(split):
    learner = ReadsQueryRatings(split.train.schema).meta_fit(split.train)
    with pytest.raises(LearnerContractError, match="rule 'query-blind' broken.*query rating slots are NaN"):
        learner.predict(split.test)  # the harness hides the ratings: the cheat predicts NaN


def test_query_ratings_are_hidden_at_prediction_time_but_not_in_training(split):
    seen = {}

    class Spy(GlobalMean):
        def adapt_and_predict(self, batch):
            seen["predict"] = batch.query_ratings_hidden
            return super().adapt_and_predict(batch)

    Spy(split.train.schema).meta_fit(split.train).predict(split.test)
    assert seen["predict"] is True
    assert not split.train.batch([0, 1]).query_ratings_hidden  # meta-training needs them
    assert torch.isfinite(split.test.query_ratings).all()  # the metrics' copy is untouched


def test_a_learner_that_depends_on_batch_composition_fails(split):
    with pytest.raises(LearnerContractError, match="batch-size-independence") as info:
        check_learner(DependsOnBatch, split=split)
    assert info.value.rule == "batch-size-independence"


def test_check_learner_names_an_unknown_learner():
    from metarec.registry import UnknownLearnerError

    with pytest.raises(UnknownLearnerError, match="Did you mean 'mamo'"):
        check_learner("mamoo")
