"""The simple baselines: hand-computed cases, masks, state round trips, and that they learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.checkpoint import load_state, save_state
from metarec.methods.simple import (
    BaselinePredictor,
    GlobalMean,
    ProfileMLP,
    ProfileMLPFineTune,
)
from metarec.registry import get_learner
from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable, TaskSet


def tiny_taskset(support_items, support_ratings, query_items, query_ratings, n_items=4, support_mask=None):
    """Hand-made tasks over one categorical user and item feature (ids u0.., i0..)."""
    uf = (Feature("g", "categorical", ("a", "b")),)
    itf = (Feature("c", "categorical", ("x", "y")),)
    schema = FeatureSchema(uf, itf, 1.0, 5.0, name="tiny")
    n = len(support_items)
    users = FeatureTable(uf, {"g": torch.zeros(n, dtype=torch.long)}, ids=np.array([f"u{i}" for i in range(n)]))
    items = FeatureTable(
        itf, {"c": torch.arange(n_items) % 2}, ids=np.array([f"i{i}" for i in range(n_items)])
    )
    t = torch.as_tensor
    return TaskSet(
        schema=schema,
        users=users,
        items=items,
        user_index=torch.arange(n),
        support_items=t(support_items),
        support_ratings=t(support_ratings, dtype=torch.float32),
        query_items=t(query_items),
        query_ratings=t(query_ratings, dtype=torch.float32),
        query_scenario=torch.zeros(n, len(query_items[0]), dtype=torch.long),
        support_mask=None if support_mask is None else t(support_mask),
    )


# two training users; item 0 rated 5, 5, item 1 rated 1, 3; every rating counts (support + query)
TRAIN = dict(
    support_items=[[0, 1], [0, 1]],
    support_ratings=[[5.0, 1.0], [5.0, 3.0]],
    query_items=[[2], [3]],
    query_ratings=[[4.0], [2.0]],
)


def test_registered_names():
    assert get_learner("global-mean") is GlobalMean
    assert get_learner("baseline-predictor") is BaselinePredictor
    assert get_learner("profile-mlp") is ProfileMLP
    assert get_learner("profile-mlp-finetune") is ProfileMLPFineTune


def test_global_mean_hand():
    train = tiny_taskset(**TRAIN)
    gm = GlobalMean(train.schema).meta_fit(train)
    # (5 + 1 + 5 + 3 + 4 + 2) / 6 = 20 / 6
    test = tiny_taskset([[0, 1]], [[1.0, 1.0]], [[2, 3]], [[3.0, 3.0]])
    pred = gm.predict(test)
    assert pred.shape == (1, 2)
    assert torch.allclose(pred, torch.full((1, 2), 20 / 6))


def test_baseline_predictor_hand():
    train = tiny_taskset(**TRAIN)
    bp = BaselinePredictor.from_settings(train.schema, overrides={"item_reg": 1.0, "user_reg": 2.0, "sweeps": 1})
    bp.meta_fit(train)
    mu = 20 / 6
    # b_i = sum(r - mu) / (1 + n_i)
    b = [(10 - 2 * mu) / 3, (4 - 2 * mu) / 3, (4 - mu) / 2, (2 - mu) / 2]
    assert float(bp.mu) == pytest.approx(mu, abs=1e-6)
    assert bp.item_bias.tolist() == pytest.approx(b, abs=1e-6)
    # test user: support item 0 rated 4, item 1 rated 2; b_u = sum(r - mu - b_i) / (2 + 2)
    test = tiny_taskset([[0, 1]], [[4.0, 2.0]], [[2, 3]], [[3.0, 3.0]])
    b_u = ((4 - mu - b[0]) + (2 - mu - b[1])) / 4
    pred = bp.predict(test)
    assert pred[0].tolist() == pytest.approx([mu + b[2] + b_u, mu + b[3] + b_u], abs=1e-5)


def test_baseline_predictor_cold_item_masks_and_clipping():
    train = tiny_taskset(**TRAIN, n_items=6)  # items 4 and 5 are never rated in training
    bp = BaselinePredictor.from_settings(train.schema, preset="unregularised").meta_fit(train)
    assert bp.item_bias[4:].tolist() == [0.0, 0.0]
    # padded support entries (mask False) must not move the user bias, whatever their rating
    masked = tiny_taskset([[4, 0]], [[1.0, 999.0]], [[5, 4]], [[3.0, 3.0]], n_items=6, support_mask=[[True, False]])
    plain = tiny_taskset([[4, 4]], [[1.0, 1.0]], [[5, 4]], [[3.0, 3.0]], n_items=6)
    mu = float(bp.mu)
    # unregularised: b_u = mean residual of the real support ratings = 1 - mu (item 4 has b_i 0)
    raw = bp.adapt_and_predict(masked.batch([0]))
    assert raw[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert torch.allclose(bp.predict(masked), bp.predict(plain))
    assert mu > 1.0


def test_baseline_predictor_sweeps_reduce_training_error():
    from metarec.data.protocol import build_split
    from metarec.data.synthetic import make_synthetic

    split = build_split(make_synthetic(n_users=200, n_items=150, seed=3), seed=0)
    errs = []
    for sweeps in (1, 5):
        bp = BaselinePredictor.from_settings(split.train.schema, overrides={"sweeps": sweeps}).meta_fit(split.train)
        pred = bp.predict(split.train)
        errs.append(float((pred - split.train.query_ratings).pow(2).mean()))
    assert errs[1] <= errs[0] + 1e-6


def test_baseline_predictor_state_round_trip(tmp_path):
    train = tiny_taskset(**TRAIN)
    bp = BaselinePredictor(train.schema).meta_fit(train)
    save_state(tmp_path / "s", bp.state_dict())
    fresh = BaselinePredictor(train.schema)
    fresh.load_state_dict(load_state(tmp_path / "s"))
    test = tiny_taskset([[0, 1]], [[4.0, 2.0]], [[2, 3]], [[3.0, 3.0]])
    assert torch.equal(fresh.predict(test), bp.predict(test))


def test_baseline_predictor_needs_fit():
    train = tiny_taskset(**TRAIN)
    with pytest.raises(RuntimeError, match="before meta_fit"):
        BaselinePredictor(train.schema).predict(train)


def test_bad_settings_are_named():
    from metarec.config import ConfigError

    train = tiny_taskset(**TRAIN)
    with pytest.raises(ConfigError, match="item_reg"):
        BaselinePredictor.from_settings(train.schema, overrides={"item_reg": -1.0})
    with pytest.raises(ConfigError, match="finetune_steps"):
        ProfileMLPFineTune.from_settings(train.schema, overrides={"finetune_steps": -2})


@pytest.fixture(scope="module")
def split():
    from metarec.data.protocol import build_split
    from metarec.data.synthetic import make_synthetic

    return build_split(make_synthetic(n_users=300, n_items=200, seed=0), seed=0)


def _mae(pred, tasks):
    return float((pred - tasks.query_ratings).abs()[tasks.query_mask].mean())


def test_profile_mlp_learns_the_planted_signal(split):
    gm = GlobalMean(split.train.schema).meta_fit(split.train)
    mlp = ProfileMLP.from_settings(split.train.schema, overrides={"epochs": 8}, seed=0).meta_fit(split.train)
    assert _mae(mlp.predict(split.test), split.test) < _mae(gm.predict(split.test), split.test) - 0.05


def test_finetune_zero_steps_equals_profile_mlp_and_training_is_shared(split):
    # the two defaults were tuned apart; the melu-sizes preset gives both the same network
    a = ProfileMLP.from_settings(split.train.schema, preset="melu-sizes", overrides={"epochs": 1}, seed=4)
    b = ProfileMLPFineTune.from_settings(
        split.train.schema, preset="melu-sizes", overrides={"epochs": 1, "finetune_steps": 0}, seed=4
    )
    assert {k: v for k, v in vars(b.config).items() if k in vars(a.config)} == vars(a.config)
    a.meta_fit(split.train)
    b.meta_fit(split.train)
    assert torch.equal(a.predict(split.test), b.predict(split.test))


def test_finetune_adapts_to_the_support_set_without_changing_the_model(split):
    ft = ProfileMLPFineTune.from_settings(
        split.train.schema, overrides={"epochs": 2, "finetune_steps": 10, "finetune_lr": 1e-3}, seed=0
    ).meta_fit(split.train)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    batch = split.test.batch(range(len(split.test)))
    tuned = ft.adapt_and_predict(batch)
    plain = ProfileMLP.adapt_and_predict(ft, batch)
    assert not torch.allclose(tuned, plain)
    for k, v in ft.model.state_dict().items():
        assert torch.equal(v, before[k]), f"adapt_and_predict changed {k}"
    # the fine-tuning lowers the loss on the support set it was tuned on
    from metarec import engine

    fast = engine.adapt_batch(
        ft.forward, {k: v.detach() for k, v in ft.model.named_parameters()}, ft.local_names, batch,
        lr=1e-3, steps=10, first_order=True,
    )
    params = {k: v.detach() for k, v in ft.model.named_parameters()}
    with torch.no_grad():
        s_plain = engine.predict_batch(ft.forward, params, batch, items="support")
        s_tuned = engine.predict_batch(ft.forward, params, batch, user_params=fast, items="support")
    m = batch.support_mask
    assert engine.masked_mse(s_tuned, batch.support_ratings, m) < engine.masked_mse(s_plain, batch.support_ratings, m)


def test_profile_mlp_resume_is_exact(split, tmp_path):
    """Two epochs straight == one epoch, checkpoint to disk, a fresh learner, one more epoch."""
    cfg = {"epochs": 2, "batch_size": 16}
    straight = ProfileMLP.from_settings(split.train.schema, overrides=cfg, seed=1).meta_fit(split.train)

    first = ProfileMLP.from_settings(split.train.schema, overrides={**cfg, "epochs": 1}, seed=1).meta_fit(split.train)
    save_state(tmp_path / "ckpt", first.state_dict())
    resumed = ProfileMLP.from_settings(split.train.schema, overrides=cfg, seed=1)
    resumed.load_state_dict(load_state(tmp_path / "ckpt"))
    assert resumed.epochs_done == 1
    resumed.meta_fit(split.train)
    assert torch.equal(resumed.predict(split.test), straight.predict(split.test))
