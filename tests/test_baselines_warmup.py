"""Item warm-up methods: registration, one mechanism test each, and each beats the floor at the cold stage.

The cold-stage comparison uses the planted data of ``tests/warmupdata.py`` (item IDs informative
and predictable from the item category), three seeds, and settings that give the small data
enough optimisation steps (the presets are sized for ML-1M's 854,530 old-item rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warmupdata import make_warmup_data  # noqa: E402

from baselines.cvar import CVAR  # noqa: E402
from baselines.dropoutnet import DropoutNet  # noqa: E402
from baselines.lwa import LWA, NLBA  # noqa: E402
from baselines.metaemb import MetaEmb, item_chunks  # noqa: E402
from baselines.mwuf import MWUF  # noqa: E402
from metarec.registry import get_learner, learner_entries, learner_protocol  # noqa: E402
from metarec.warmup.learner import DeepFMFloor, FeatureOnly, WarmupTrainData  # noqa: E402
from metarec.warmup.metrics import stage_metrics  # noqa: E402
from metarec.warmup.protocol import WarmupConfig, build_warmup_split  # noqa: E402

METHODS = {"dropoutnet": DropoutNet, "metaemb": MetaEmb, "mwuf": MWUF, "cvar": CVAR, "lwa": LWA, "nlba": NLBA}
#: Enough steps for the tiny data (7,519 old-item rows); the mechanism is the presets'.
SMALL = {"pretrain_epochs": 20, "batch_size": 256, "lr": 1e-2}
EXTRA = {
    "metaemb": {"meta_epochs": 8, "meta_lr": 1e-2, "items_per_batch": 8, "inner_lr": 1e-2},
    "mwuf": {"meta_epochs": 3, "meta_lr": 1e-2},
    "cvar": {"pretrain_cvar_epochs": 3, "iters": 3, "cvar_lr": 1e-2},
}


@pytest.fixture(scope="module")
def split():
    return build_warmup_split(make_warmup_data(), WarmupConfig(old_min_count=60, stage_size=6), seed=0)


def _fit(cls, split, seed=0, **overrides):
    learner = cls.from_settings(split.schema, n_users=len(split.users), n_items=len(split.items), seed=seed,
                                overrides=overrides)
    torch.manual_seed(seed)
    learner.fit(WarmupTrainData(split.users, split.items, split.base, split.old_items))
    return learner


def _cold_auc(cls, split, seed, **overrides):
    learner = _fit(cls, split, seed, **overrides)
    learner.init_new_items(split.new_items)
    return stage_metrics(learner.predict(split.test.without_labels()), split.test.label)["auc"]


def test_every_item_warmup_method_is_a_registered_plugin():
    entries = learner_entries()
    for name, cls in METHODS.items():
        assert entries[name].source == "baselines" and get_learner(name) is cls
        assert learner_protocol(cls) == "item-warmup"
        assert set(cls.presets) & {"paper", "cvar"}, f"{name}: no paper/official-code preset"
        assert "Deviations" in sys.modules[cls.__module__].__doc__, f"{name}: the docstring lists no deviations"
    for name in ("fm", "deepfm", "wide-deep", "feature-only"):
        assert learner_protocol(get_learner(name)) == "item-warmup"


@pytest.fixture(scope="module")
def floor_auc(split):
    return float(np.mean([_cold_auc(DeepFMFloor, split, s, **SMALL) for s in (0, 1, 2)]))


@pytest.mark.parametrize("name", [*METHODS, "feature-only"])
def test_beats_the_no_warm_up_floor_at_the_cold_stage(name, split, floor_auc):
    cls = METHODS.get(name, FeatureOnly)
    auc = float(np.mean([_cold_auc(cls, split, s, **SMALL, **EXTRA.get(name, {})) for s in (0, 1, 2)]))
    assert auc > floor_auc, f"{name}: cold AUC {auc:.4f} <= floor {floor_auc:.4f}"


# ------------------------------------------------------------------ mechanisms
def test_dropoutnet_drops_the_id_input_to_the_old_items_mean(split):
    learner = _fit(DropoutNet, split, pretrain_epochs=1, drop_rate=1.0)
    batch = split.base.select(torch.arange(64))
    mean = learner.backbone.item_id.weight[split.old_items].mean(0)
    expected = learner.bce(batch, mean.expand(64, -1))
    learner.backbone.eval()  # no dropout in the MLP: the two losses must be the same function
    assert torch.allclose(learner.pretrain_loss(batch), learner.bce(batch, mean.expand(64, -1)))
    assert torch.isfinite(expected)
    learner.init_new_items(split.new_items)
    assert torch.allclose(learner.backbone.item_id.weight[split.new_items], mean.expand(len(split.new_items), -1))
    learner = _fit(DropoutNet, split, pretrain_epochs=1, drop_rate=0.0)
    learner.backbone.eval()
    assert torch.allclose(learner.pretrain_loss(batch), learner.bce(batch))


def test_metaemb_chunks_each_old_item_into_four_time_ordered_quarters(split):
    chunks = item_chunks(split.base, split.old_items)
    for item in split.old_items[:10].tolist():
        n = int((split.base.item == item).sum())
        ranks = [c.rank[c.item == item] for c in chunks]
        assert all(len(r) == n // 4 for r in ranks)
        assert all(a.max() < b.min() for a, b in zip(ranks, ranks[1:]))


def test_metaemb_trains_only_the_generator_and_writes_its_output(split):
    learner = MetaEmb.from_settings(split.schema, n_users=len(split.users), n_items=len(split.items),
                                    overrides={"pretrain_epochs": 1, "batch_size": 256, "meta_epochs": 2})
    gen0 = [p.detach().clone() for p in learner.gen.parameters()]
    learner.fit(WarmupTrainData(split.users, split.items, split.base, split.old_items))
    bb = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    assert any(not torch.equal(a, b) for a, b in zip(gen0, learner.gen.parameters()))
    learner.init_new_items(split.new_items)
    with torch.no_grad():
        want = learner.generate(split.new_items)
    assert torch.allclose(learner.backbone.item_id.weight[split.new_items], want)
    for k, v in learner.backbone.state_dict().items():
        if k != "item_id.weight":
            assert torch.equal(v, bb[k])


def test_metaemb_inner_step_is_per_item_and_second_order(split):
    learner = _fit(MetaEmb, split, pretrain_epochs=1, batch_size=256)
    learner.backbone.eval()  # no MLP dropout: the per-item and the one-item losses must be the same function
    rows = split.base.select(torch.arange(200))
    items, loc = torch.unique(rows.item, return_inverse=True)
    emb = learner.generate(items)
    per_item = learner._per_item_loss(rows, loc, emb, len(items))
    for k in range(3):
        own = rows.select((loc == k).nonzero().squeeze(1))
        alone = learner.bce(own, emb[k].expand(len(own), -1))
        assert torch.allclose(per_item[k], alone, atol=1e-6)
    (g,) = torch.autograd.grad(per_item.sum(), emb, create_graph=True)
    assert g.requires_grad  # the meta-gradient flows through the inner step


def test_mwuf_averages_the_item_s_own_users_and_warms_new_items(split):
    learner = _fit(MWUF, split, pretrain_epochs=1, batch_size=256)
    item = int(split.old_items[0])
    users = split.base.user[split.base.item == item]
    want = learner.backbone.user_id.weight[users].mean(0)
    assert torch.allclose(learner.user_avg[item], want, atol=1e-6)
    all_users = learner.backbone.user_id.weight.mean(0)
    new = split.new_items
    assert torch.allclose(learner.user_avg[new], all_users.expand(len(new), -1), atol=1e-6)  # no users yet
    learner.init_new_items(new)
    with torch.no_grad():
        warm = learner.mean_old * learner.meta_scale(learner.item_fields(new)) + learner.meta_shift(all_users)
    assert torch.allclose(learner.backbone.item_id.weight[new], warm, atol=1e-6)
    learner.warm_up(split.stages[0], "a")
    seen = split.stages[0].user[split.stages[0].item == int(new[0])]
    assert torch.allclose(learner.user_avg[new[0]], learner.backbone.user_id.weight[seen].mean(0), atol=1e-6)


def test_cvar_generates_from_the_prior_and_rewrites_after_each_stage(split):
    learner = _fit(CVAR, split, pretrain_epochs=1, batch_size=256, iters=2)
    new = split.new_items
    learner.init_new_items(new)
    with torch.no_grad():
        assert torch.allclose(learner.backbone.item_id.weight[new], learner.prior_embedding(new), atol=1e-6)
    table0 = learner.prior_table.weight.detach().clone()
    learner.warm_up(split.stages[0], "a")
    with torch.no_grad():
        assert torch.allclose(learner.backbone.item_id.weight[new], learner.prior_embedding(new), atol=1e-6)
    assert not torch.equal(learner.prior_table.weight[new], table0[new])  # the stage's data reached the prior
    # identical posterior and prior: the regulariser is 0 and only BCE + reconstruction remain
    batch = split.base.select(torch.arange(32))
    parts, e, fields = learner.frozen_parts(batch)
    learner.config.reg_weight = 1.0
    learner.config.noise_scale = 0.0
    base = learner.cvar_loss(batch, (parts, e, fields))
    learner.config.reg_weight = 0.0
    assert float(base) > float(learner.cvar_loss(batch, (parts, e, fields))) - 1e-9


@pytest.mark.parametrize("cls", [LWA, NLBA])
def test_lwa_nlba_class_representatives_are_leave_one_out_history_means(cls, split):
    learner = _fit(cls, split, pretrain_epochs=1, batch_size=256)
    with torch.no_grad():
        fv = learner.item_vectors()
        batch = split.base.select(torch.arange(5))
        r0, r1 = learner.representatives(fv, batch.user, batch.item, batch.label)
        for k in range(5):
            u = batch.user[k]
            mine = (split.base.user == u) & ~((split.base.item == batch.item[k]))
            for cls_, r in ((0, r0), (1, r1)):
                items = split.base.item[mine & (split.base.label == cls_)]
                want = fv[items].mean(0) if len(items) else torch.zeros_like(r[k])
                assert torch.allclose(r[k], want, atol=1e-5)
    # a warm-up batch joins the histories: only its users' predictions move
    before = learner.predict(split.test.without_labels())
    learner.warm_up(split.stages[0], "a")
    after = learner.predict(split.test.without_labels())
    touched = torch.isin(split.test.user, split.stages[0].user)
    assert torch.equal(before[~touched], after[~touched]) and not torch.equal(before[touched], after[touched])
