"""The Learner contract, exercised through the generic MAML learner."""

from __future__ import annotations

import pytest
import torch

from metarec.config import ConfigError
from metarec.learner import Callback
from metarec.methods.maml import MAMLConfig, MAMLLearner

FAST = dict(epochs=2, batch_size=32, inner_lr=0.1, inner_steps=2, meta_lr=3e-3, embedding_dim=8, hidden=(16,))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, learner, *, epochs, batches_per_epoch):
        self.events.append(("start", epochs, batches_per_epoch))

    def on_batch_end(self, learner, *, epoch, batch, loss):
        self.events.append(("batch", epoch, batch))

    def on_epoch_end(self, learner, *, epoch, logs):
        self.events.append(("epoch", epoch, round(logs["loss"], 6)))

    def on_fit_end(self, learner):
        self.events.append(("end",))


def _fit(split, seed=0, **overrides):
    learner = MAMLLearner.from_settings(split.train.schema, overrides={**FAST, **overrides}, seed=seed)
    rec = Recorder()
    learner.meta_fit(split.train, callbacks=[rec])
    return learner, rec


def test_callbacks_fire_in_order(synthetic_split):
    _, rec = _fit(synthetic_split)
    n_batches = -(-len(synthetic_split.train) // 32)
    assert rec.events[0] == ("start", 2, n_batches)
    assert rec.events[-1] == ("end",)
    assert sum(e[0] == "batch" for e in rec.events) == 2 * n_batches
    assert [e[1] for e in rec.events if e[0] == "epoch"] == [0, 1]


def test_same_seed_same_predictions_different_seed_different(synthetic_split):
    a, _ = _fit(synthetic_split, seed=0)
    b, _ = _fit(synthetic_split, seed=0)
    c, _ = _fit(synthetic_split, seed=1)
    pa, pb, pc = (x.predict(synthetic_split.test) for x in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_resume_from_state_continues_exactly(synthetic_split):
    full, rec_full = _fit(synthetic_split, epochs=2)
    half, _ = _fit(synthetic_split, epochs=1)
    state = half.state_dict()
    resumed = MAMLLearner.from_settings(synthetic_split.train.schema, overrides={**FAST, "epochs": 2}, seed=0)
    resumed.load_state_dict(state)
    assert resumed.epochs_done == 1
    resumed.meta_fit(synthetic_split.train)
    assert torch.equal(full.predict(synthetic_split.test), resumed.predict(synthetic_split.test))


def test_predict_is_clipped_and_does_not_change_state(synthetic_split):
    learner, _ = _fit(synthetic_split)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    pred = learner.predict(synthetic_split.test)
    assert pred.shape == synthetic_split.test.query_ratings.shape
    assert float(pred.min()) >= 1.0 and float(pred.max()) <= 5.0
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_users_are_adapted_independently(synthetic_split):
    learner, _ = _fit(synthetic_split)
    test = synthetic_split.test
    together = learner.adapt_and_predict(test.batch([0, 1, 2]))
    alone = torch.cat([learner.adapt_and_predict(test.batch([i])) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_config_validation_messages(synthetic_split):
    schema = synthetic_split.train.schema
    with pytest.raises(ConfigError, match="unknown key 'inner_rate'.*inner_lr"):
        MAMLLearner.from_settings(schema, overrides={"inner_rate": 0.1})
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        MAMLLearner.from_settings(schema, preset="fast")
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        MAMLLearner.from_settings(schema, overrides={"batch_size": 0})
    with pytest.raises(TypeError, match="expects a MAMLConfig"):
        MAMLLearner(schema, config=object())
    with pytest.raises(ValueError, match="at least one training task"):
        MAMLLearner(schema, MAMLConfig(epochs=1)).meta_fit(synthetic_split.train.subset([]))
