"""ColdNAS: the modulation search space, the searched architecture, the resumable search phase,
no use of query ratings at prediction, and learning."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from baselines.coldnas import OPS, ColdNAS, apply_ops, parse_position, position_name
from metarec.learner import Callback
from metarec.registry import get_learner, learner_entries


@pytest.fixture(scope="module")
def batch(synthetic_split):
    return synthetic_split.train.batch(torch.arange(8))


def test_registered_from_the_baselines_package():
    entry = learner_entries()["coldnas"]
    assert entry.source == "baselines" and entry.origin == "entry-point"
    assert get_learner("coldnas") is ColdNAS


def test_search_space_is_16_op_subsets_per_position_in_a_fixed_order():
    subsets = {position_name(m) for m in itertools.product([False, True], repeat=4)}
    assert len(subsets) == 16 and "none" in subsets and "max+min+mul+add" in subsets
    for name in subsets:
        assert position_name(parse_position(name)) == name
    assert parse_position("add+max") == (True, False, False, True)  # order is the framework's, not the text's
    for bad in ("scale", "add+add", "max+foo"):
        with pytest.raises(ValueError, match="modulation"):
            parse_position(bad)
    with pytest.raises(ValueError, match="positions"):
        ColdNAS.Config(architecture=("add", "add"))


def test_ops_apply_in_order_and_relax_linearly():
    torch.manual_seed(0)
    x, p = torch.randn(2, 3, 5), torch.randn(2, 4, 5)
    p1, p2, p3, p4 = (p[:, k].unsqueeze(1) for k in range(4))
    full = apply_ops(x, p, torch.ones(4))
    assert torch.allclose(full, torch.minimum(torch.maximum(x, p1), p2) * torch.relu(p3) + p4)
    assert torch.equal(apply_ops(x, p, torch.zeros(4)), x)
    assert torch.allclose(apply_ops(x, p, torch.tensor([1.0, 0, 0, 1])), torch.maximum(x, p1) + p4)
    half = apply_ops(x, p, torch.tensor([0.0, 0.0, 0.0, 0.5]))
    assert torch.allclose(half, x + 0.5 * p4)  # the supernet's mixture a * op(x) + (1 - a) * x


def test_lastfm_searched_preset_is_the_official_result(synthetic_split):
    learner = ColdNAS.from_settings(synthetic_split.train.schema, preset="lastfm-searched", seed=0)
    assert not learner.searching and learner.total_epochs() == learner.config.epochs
    assert learner.architecture() == ("add", "add", "max+add", "none")
    expected = [[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]]
    assert learner.fixed_weights().tolist() == expected
    assert not hasattr(learner, "supernet")


def test_discretisation_by_threshold_and_top_k(synthetic_split):
    learner = ColdNAS.from_settings(synthetic_split.train.schema, seed=0)
    alpha = torch.tensor([[2.0, -2.0, -2.0, 0.5], [-1.0, -1.0, -1.0, -1.0], [-3.0, 3.0, 0.1, -0.1], [0.0, -5, -5, 1.0]])
    assert learner.discretize(alpha) == ("max+add", "none", "min+mul", "add")
    top = ColdNAS.from_settings(synthetic_split.train.schema, overrides={"discretize": "top_k", "top_k": 2}, seed=0)
    assert top.discretize(alpha) == ("max", "none", "min", "none")


class _Interrupt(Exception):
    pass


class _StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs, self.state = epochs, None

    def on_epoch_end(self, learner, *, epoch, logs):
        if epoch + 1 == self.epochs:
            self.state = copy.deepcopy(learner.state_dict())
            raise _Interrupt


def test_search_is_a_resumable_meta_fit_phase(synthetic_split):
    train, test = synthetic_split.train, synthetic_split.test.subset(torch.arange(20))
    over = {"search_epochs": 2, "epochs": 2, "batch_size": 64, "meta_lr": 3e-3, "search_lr": 3e-2}
    full = ColdNAS.from_settings(train.schema, overrides=over, seed=0)
    logs = []

    class Log(Callback):
        def on_epoch_end(self, learner, *, epoch, logs_=None, **kw):
            logs.append(dict(kw["logs"]))

    full.meta_fit(train, callbacks=[Log()])
    assert full.total_epochs() == 4 and full.epochs_done == 4
    assert [("search" in entry) for entry in logs] == [True, True, False, False]
    assert full.searched_architecture is not None
    assert full.architecture() == full.discretize(full.alpha)  # no validation users: the last alpha
    expected = full.predict(test)

    for stop in (1, 3):  # killed mid-search, and mid-final-training
        stopper = _StopAfter(stop)
        interrupted = ColdNAS.from_settings(train.schema, overrides=over, seed=0)
        with pytest.raises(_Interrupt):
            interrupted.meta_fit(train, callbacks=[stopper])
        resumed = ColdNAS.from_settings(train.schema, overrides=over, seed=0)
        resumed.load_state_dict(stopper.state)
        assert resumed.epochs_done == stop and resumed.in_search == (stop < 2)
        resumed.meta_fit(train)
        assert resumed.architecture() == full.architecture()
        assert torch.allclose(resumed.predict(test), expected, atol=1e-6)


def test_search_keeps_the_alpha_of_the_best_validation_epoch(synthetic_split):
    train = synthetic_split.train.subset(torch.arange(120))
    val = synthetic_split.train.subset(torch.arange(120, 160))
    learner = ColdNAS.from_settings(
        train.schema, overrides={"search_epochs": 3, "epochs": 0, "batch_size": 32, "search_lr": 3e-2}, seed=0
    )
    seen = []

    class Watch(Callback):
        def on_epoch_end(self, learner_, *, epoch, logs):
            seen.append((logs["val_mse_supernet"], learner_.alpha.detach().clone()))

    learner.meta_fit(train, validation=val, callbacks=[Watch()])
    best = min(range(3), key=lambda i: seen[i][0])
    assert learner.best_search_mse == pytest.approx(seen[best][0])
    assert torch.equal(learner.best_alpha, seen[best][1])
    assert learner.searched_architecture == learner.discretize(seen[best][1])


def test_prediction_reads_no_query_rating(synthetic_split, batch):
    learner = ColdNAS.from_settings(synthetic_split.train.schema, preset="lastfm-searched", seed=0)
    before = learner.adapt_and_predict(batch)
    hidden = dataclasses.replace(batch, query_ratings=torch.full_like(batch.query_ratings, float("nan")))
    assert torch.equal(learner.adapt_and_predict(hidden), before)
    flipped = dataclasses.replace(batch, support_ratings=6.0 - batch.support_ratings)
    assert not torch.allclose(learner.adapt_and_predict(flipped), before)
    lo, hi = synthetic_split.train.schema.rating_min, synthetic_split.train.schema.rating_max
    assert (before > lo).all() and (before < hi).all()  # range * sigmoid output


def test_beats_the_global_mean_on_synthetic_data(synthetic_split):
    train, test = synthetic_split.train, synthetic_split.test
    learner = ColdNAS.from_settings(
        train.schema, overrides={"search_epochs": 8, "epochs": 15, "meta_lr": 3e-3, "search_lr": 3e-3, "batch_size": 16},
        seed=0,
    )
    learner.meta_fit(train)
    assert learner.searched_architecture is not None and len(learner.searched_architecture) == 4
    pred = learner.predict(test)
    mae = float((pred - test.query_ratings).abs()[test.query_mask].mean())
    mu = float(train.query_ratings[train.query_mask].mean())
    assert mae < 0.85 * float((mu - test.query_ratings).abs()[test.query_mask].mean())
    assert set(OPS) == {"max", "min", "mul", "add"}
