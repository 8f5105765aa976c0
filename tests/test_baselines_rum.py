"""Item- and feature-level RUM: memory read/write on small tensors, personalisation, learning."""

from __future__ import annotations

import pytest
import torch

from baselines.rum import FeatureMemory, FeatureRUM, ItemMemory, ItemRUM, RUMLearner, memory_read, most_recent
from metarec.registry import get_learner, learner_entries


# --------------------------------------------------------------------------- memory on small tensors


def test_memory_read_is_attention_over_valid_slots():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    valid = torch.tensor([True, True, False])  # the third slot is padding and must be ignored
    query = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    out = memory_read(query, keys, values, valid, beta=0.5)
    w = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # beta * q . k = (1, 0) for the first query
    torch.testing.assert_close(out[0], w[0] * values[0] + w[1] * values[1])
    torch.testing.assert_close(out[1], values[:2].mean(0))  # equal scores -> plain average


def test_memory_read_of_an_empty_memory_is_zero_without_nans():
    keys = torch.randn(3, 4, requires_grad=True)
    out = memory_read(torch.randn(2, 4), keys, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    assert torch.equal(out, torch.zeros(2, 4))
    out.sum().backward()
    assert torch.isfinite(keys.grad).all()


def test_most_recent_keeps_the_last_k_valid_positions():
    mask = torch.tensor([[True, True, True, True, False], [False, True, True, False, False]])
    assert most_recent(mask, 2).tolist() == [
        [False, False, True, True, False],
        [False, True, True, False, False],
    ]
    assert torch.equal(most_recent(mask, 20), mask)


def test_item_memory_holds_the_support_items():
    q = torch.randn(2, 4, 3)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    keys, values, valid = ItemMemory(slots=3)(q, 2 * q, mask, beta=1.0)
    assert torch.equal(keys, q) and torch.equal(values, 2 * q)
    assert valid.tolist() == [[False, True, True, True], [True, True, False, False]]


def _set_memory(mem: FeatureMemory, keys, erase_bias, add_bias):
    with torch.no_grad():
        mem.keys.copy_(keys)
        for lin, bias in ((mem.erase, erase_bias), (mem.add, add_bias)):
            lin.weight.zero_()
            lin.bias.copy_(bias)


def test_feature_memory_write_is_ntm_erase_add():
    mem = FeatureMemory(slots=2, dim=2, learned_init=False)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_b, a_b = torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0])
    _set_memory(mem, keys, e_b, a_b)
    m0 = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    q = torch.tensor([[2.0, 0.0]])
    out = mem.write(m0, q, q, beta=1.0)
    w = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    e, a = torch.sigmoid(e_b), torch.tanh(a_b)
    expected = torch.stack([m0[0, k] * (1 - w[k] * e) + w[k] * a for k in range(2)])
    torch.testing.assert_close(out[0], expected)


def test_feature_memory_writes_in_time_order_and_skips_padding():
    torch.manual_seed(0)
    mem = FeatureMemory(slots=3, dim=4, learned_init=False)
    q = torch.randn(1, 3, 4)
    full = torch.ones(1, 3, dtype=torch.bool)
    keys, values, valid = mem(q, q, full, beta=1.0)
    assert keys.shape == values.shape == (1, 3, 4) and valid.all()
    m = torch.zeros(1, 3, 4)
    for s in range(3):
        m = mem.write(m, q[:, s], q[:, s], beta=1.0)
    torch.testing.assert_close(values, m)
    # Erase-add does not commute: the same items in another order give another memory.
    _, reversed_values, _ = mem(q.flip(1), q.flip(1), full, beta=1.0)
    assert not torch.allclose(values, reversed_values)
    # A padded position leaves the memory as it was.
    pad = torch.tensor([[True, False, True]])
    _, padded, _ = mem(q, q, pad, beta=1.0)
    m = mem.write(mem.write(torch.zeros(1, 3, 4), q[:, 0], q[:, 0], 1.0), q[:, 2], q[:, 2], 1.0)
    torch.testing.assert_close(padded, m)


def test_learned_initial_memory_is_a_parameter():
    assert "init" in dict(FeatureMemory(2, 3, learned_init=True).named_parameters())
    assert "init" not in dict(FeatureMemory(2, 3, learned_init=False).named_parameters())


# --------------------------------------------------------------------------- learners


def test_registered_from_the_baselines_package():
    entries = learner_entries()
    for name, cls in (("rum-item", ItemRUM), ("rum-feature", FeatureRUM)):
        assert entries[name].source == "baselines"
        assert get_learner(name) is cls
        assert issubclass(cls, RUMLearner)


@pytest.fixture(scope="module")
def batch(synthetic_split):
    return synthetic_split.test.batch(torch.arange(8))


def _with(batch, **changes):
    from dataclasses import replace

    return replace(batch, **changes)


@pytest.mark.parametrize("cls", [ItemRUM, FeatureRUM])
def test_prediction_depends_on_the_support_items_only_through_the_memory(synthetic_split, batch, cls):
    schema = synthetic_split.train.schema
    other = synthetic_split.test.batch(torch.arange(8, 16))
    swapped = _with(
        batch,
        support_items=other.support_items,
        support_features=other.support_features,
    )
    with_memory = cls.from_settings(schema, preset="paper", overrides={"alpha": 1.0}, seed=0)
    assert not torch.allclose(with_memory.adapt_and_predict(batch), with_memory.adapt_and_predict(swapped))
    no_memory = cls.from_settings(schema, preset="paper", overrides={"alpha": 0.0}, seed=0)
    torch.testing.assert_close(no_memory.adapt_and_predict(batch), no_memory.adapt_and_predict(swapped))


@pytest.mark.parametrize("cls", [ItemRUM, FeatureRUM])
def test_support_ratings_matter_only_with_rated_memory_or_local_steps(synthetic_split, batch, cls):
    schema = synthetic_split.train.schema
    flipped = _with(batch, support_ratings=6.0 - batch.support_ratings)
    paper = cls.from_settings(schema, preset="paper", overrides={"alpha": 1.0}, seed=0)
    torch.testing.assert_close(paper.adapt_and_predict(batch), paper.adapt_and_predict(flipped))
    for overrides in ({"memory_values": "rated_item", "local_steps": 0}, {"memory_values": "item", "local_steps": 1}):
        learner = cls.from_settings(schema, preset="tuned", overrides={"alpha": 1.0, **overrides}, seed=0)
        learner.on_fit_start(synthetic_split.train)
        assert not torch.allclose(learner.adapt_and_predict(batch), learner.adapt_and_predict(flipped))


def test_local_step_moves_the_user_vector_towards_the_support_ratings(synthetic_split, batch):
    from metarec import engine

    learner = ItemRUM.from_settings(
        synthetic_split.train.schema, preset="tuned", overrides={"local_steps": 3, "local_lr": 0.5}, seed=0
    )
    learner.on_fit_start(synthetic_split.train)
    state = learner.user_state(batch)
    params = {k: v.detach() for k, v in learner.params().items()}
    state = {k: v.detach() for k, v in state.items()}
    before = engine.predict_batch(learner.forward, params, batch, user_params=state, items="support")
    fast = engine.adapt_batch(learner.forward, params, learner.local_names, batch, lr=0.5, steps=3, user_params=state)
    assert set(fast) == {"per_user.p"}
    after = engine.predict_batch(learner.forward, params, batch, user_params={**state, **fast}, items="support")
    err = lambda p: ((p - batch.support_ratings) ** 2).mean(1)  # noqa: E731
    assert (err(after) < err(before)).all()


@pytest.mark.parametrize("local_steps", [0, 1])
def test_meta_step_trains_the_feature_memory_writer(synthetic_split, local_steps):
    """The query loss reaches the keys and the erase/add maps through the 15 writes and the read."""
    train = synthetic_split.train
    learner = FeatureRUM.from_settings(
        train.schema, preset="tuned", overrides={"l2": 0.0, "local_steps": local_steps}, seed=0
    )
    learner.on_fit_start(train)
    names = ("memory.keys", "memory.erase.weight", "memory.add.weight")
    before = {n: learner.params()[n].detach().clone() for n in names}
    learner.meta_step(train.batch(torch.arange(16)))
    for n in names:
        assert not torch.equal(learner.params()[n], before[n]), n


def _mae(pred, taskset):
    return float((pred - taskset.query_ratings).abs()[taskset.query_mask].mean())


@pytest.mark.parametrize("cls", [ItemRUM, FeatureRUM])
@pytest.mark.parametrize("preset", ["paper", "tuned"])
def test_beats_the_global_mean_on_synthetic_data(synthetic_split, cls, preset):
    train, test = synthetic_split.train, synthetic_split.test
    learner = cls.from_settings(train.schema, preset=preset, overrides={"epochs": 15}, seed=0)
    learner.meta_fit(train)
    pred = learner.predict(test)
    assert torch.isfinite(pred).all()
    mu = torch.cat([train.support_ratings.flatten(), train.query_ratings.flatten()]).mean()
    assert _mae(pred, test) < 0.85 * _mae(torch.full_like(pred, float(mu)), test)


def test_checkpoint_round_trip_gives_the_same_predictions(synthetic_split, batch, tmp_path):
    from metarec.checkpoint import load_state, save_state

    train = synthetic_split.train
    overrides = {"epochs": 1, "memory_init": "learned"}
    learner = FeatureRUM.from_settings(train.schema, preset="tuned", overrides=overrides, seed=0)
    learner.meta_fit(train)
    save_state(tmp_path / "ckpt", learner.state_dict())
    fresh = FeatureRUM.from_settings(train.schema, preset="tuned", overrides=overrides, seed=1)
    fresh.load_state_dict(load_state(tmp_path / "ckpt"))
    torch.testing.assert_close(fresh.adapt_and_predict(batch), learner.adapt_and_predict(batch))
    assert fresh.epochs_done == 1


def test_config_errors_name_the_bad_value(synthetic_split):
    from metarec.config import ConfigError

    with pytest.raises(ConfigError, match="memory_slots"):
        ItemRUM.from_settings(synthetic_split.train.schema, overrides={"memory_slots": 0})
    with pytest.raises(ConfigError, match="memory_values"):
        ItemRUM.from_settings(synthetic_split.train.schema, overrides={"memory_values": "ratings"})


@pytest.mark.parametrize("name,cls", [("rum-item", ItemRUM), ("rum-feature", FeatureRUM)])
def test_defaults_are_the_tuned_preset_and_the_config_file(name, cls):
    from pathlib import Path

    from metarec.config import build_config, load_toml

    default = cls.Config()
    assert build_config(cls.Config, cls.presets["tuned"]) == default
    paper = build_config(cls.Config, cls.presets["paper"])
    assert (paper.memory_values, paper.local_steps, paper.memory_slots, paper.optimizer) == ("item", 0, 20, "sgd")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / f"{name}.toml"
    table = dict(load_toml(path)["methods"][name])
    assert table.pop("preset") == "tuned"
    assert build_config(cls.Config, cls.presets["tuned"], table) == default
