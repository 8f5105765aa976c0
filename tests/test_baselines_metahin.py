"""MetaHIN: meta-paths declared from the schema (ML-1M and Yelp names), contexts that read only
the adapting user's support set and the training graph -- never other test users, never query
ratings -- checkpoints that carry the graph, and learning."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from baselines.metahin import MetaHIN, default_meta_paths, path_feature
from metarec.registry import get_learner, learner_entries
from metarec.schema import FeatureSchema
from metarec.tasks import FeatureTable

PATHS = ("um", "umum", "um-genre-m", "um-tags-m")


@pytest.fixture(scope="module")
def fitted(synthetic_split):
    """A MetaHIN meta-trained for one short epoch (so its graph is built)."""
    learner = MetaHIN.from_settings(
        synthetic_split.train.schema, overrides={"meta_paths": PATHS, "epochs": 1, "batch_size": 64}, seed=0
    )
    return learner.meta_fit(synthetic_split.train)


def test_registered_from_the_baselines_package():
    entry = learner_entries()["metahin"]
    assert entry.source == "baselines" and entry.origin == "entry-point"
    assert get_learner("metahin") is MetaHIN


def _renamed(split_set, names):
    """The task set with its item features renamed (``names``: old -> new), e.g. Yelp's."""
    schema = split_set.schema
    feats = tuple(dataclasses.replace(f, name=names.get(f.name, f.name)) for f in schema.item_features)
    items = FeatureTable(feats, {names.get(k, k): v for k, v in split_set.items.columns.items()}, split_set.items.ids)
    new_schema = dataclasses.replace(schema, item_features=feats)
    return dataclasses.replace(split_set, schema=new_schema, items=items)


def test_meta_paths_are_declared_from_the_schema(synthetic_split):
    schema = synthetic_split.train.schema
    assert path_feature("um-genre-m") == "genre" and path_feature("umum") is None
    with pytest.raises(ValueError, match="meta-path"):
        path_feature("ubub")
    # synthetic: 'tags' (12 values) makes a path, 'genre' (6 values) is too coarse by default
    assert default_meta_paths(schema) == ("um", "umum", "um-tags-m")
    ml = dataclasses.replace(schema, item_features=tuple(
        dataclasses.replace(f, name={"genre": "director", "tags": "genre"}.get(f.name, f.name)) for f in schema.item_features
    ))
    assert default_meta_paths(ml) == ("um", "umum", "um-director-m", "um-genre-m")
    with pytest.raises(ValueError, match="city"):
        MetaHIN.from_settings(schema, overrides={"meta_paths": ("um", "um-city-m")}, seed=0)
    with pytest.raises(ValueError, match="categorical item feature 'quality'"):
        MetaHIN.from_settings(schema, overrides={"meta_paths": ("um-quality-m",)}, seed=0)


def test_yelp_style_category_and_city_paths_work(synthetic_split):
    names = {"genre": "city", "tags": "category"}  # categorical and multi-valued, as on Yelp
    train, test = _renamed(synthetic_split.train, names), _renamed(synthetic_split.test.subset(torch.arange(10)), names)
    learner = MetaHIN.from_settings(
        train.schema, overrides={"meta_paths": ("um", "umum", "um-category-m", "um-city-m"), "epochs": 1, "batch_size": 64},
        seed=0,
    ).meta_fit(train)
    assert learner.paths == ("um", "umum", "um-category-m", "um-city-m")
    assert torch.isfinite(learner.predict(test)).all()


def test_graph_holds_the_training_ratings_only(synthetic_split, fitted):
    train, test = synthetic_split.train, synthetic_split.test
    g = fitted.graph
    n_train = int(train.support_mask.sum() + train.query_mask.sum())
    assert len(g.edge_user) == n_train and g.n_users == len(train)
    train_items = set(train.support_items[train.support_mask].tolist()) | set(train.query_items[train.query_mask].tolist())
    assert set(g.items.tolist()) == train_items
    before = {k: v.clone() for k, v in g.state_dict().items()}
    fitted.predict(test)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # prediction never grows the graph


def test_item_context_is_the_mean_of_the_item_and_its_training_neighbours(synthetic_split, fitted):
    train = synthetic_split.train
    g, emb = fitted.graph, fitted.model.item_embedder
    with torch.no_grad():
        pool = emb(g.features())
        test = synthetic_split.test
        b = test.batch(torch.arange(3))
        ctx = fitted.item_contexts(b.support_features, b.support_items)
        own = emb(b.support_features)
        item_genre, item_tags = b.support_features["genre"][0, 0], b.support_features["tags"][0, 0]
        # um-genre-m: the item and every training item of its genre
        same = g.feat_genre == item_genre
        ref = (own[0, 0] + pool[same].sum(0)) / (1 + int(same.sum()))
        assert torch.allclose(ctx["um-genre-m"][0, 0], ref, atol=1e-5)
        # um-tags-m: the item and, per tag it has, every training item with that tag
        tags = [t for t in item_tags.tolist() if t >= 0]
        hits = [(g.feat_tags == t).any(1) for t in tags]
        ref = (own[0, 0] + sum(pool[h].sum(0) for h in hits)) / (1 + sum(int(h.sum()) for h in hits))
        assert torch.allclose(ctx["um-tags-m"][0, 0], ref, atol=1e-5)
        # umum: the item and the mean item of an average training co-rater
        item = int(b.support_items[0, 0])
        pos = (g.items == item).nonzero()
        if len(pos):
            p = int(pos[0, 0])
            raters = g.edge_user[g.edge_item == p].unique()
            means = torch.stack([pool[g.edge_item[g.edge_user == u]].mean(0) for u in raters])
            assert torch.allclose(ctx["umum"][0, 0], (own[0, 0] + means.mean(0)) / 2, atol=1e-5)
        assert torch.equal(ctx["um"], own)


def test_a_users_prediction_never_reads_other_test_users_or_query_ratings(synthetic_split, fitted):
    test = synthetic_split.test
    alone = fitted.adapt_and_predict(test.batch(torch.tensor([0])))
    together = test.batch(torch.arange(6))
    with_others = fitted.adapt_and_predict(together)
    assert torch.allclose(with_others[0], alone[0], atol=1e-5)
    # other test users' support sets changed completely: user 0 unaffected
    g = torch.Generator().manual_seed(0)
    other_items = together.support_items.clone()
    other_items[1:] = torch.randint(0, len(test.items), other_items[1:].shape, generator=g)
    changed = dataclasses.replace(
        together,
        support_items=other_items,
        support_features=test.items.gather(other_items),
        support_ratings=torch.cat([together.support_ratings[:1], 6.0 - together.support_ratings[1:]]),
        query_ratings=torch.full_like(together.query_ratings, float("nan")),
    )
    pred = fitted.adapt_and_predict(changed)
    assert torch.isfinite(pred).all()
    assert torch.allclose(pred[0], alone[0], atol=1e-5)
    assert not torch.allclose(pred[1:], with_others[1:])
    # the user's own support ratings do matter
    own = dataclasses.replace(together, support_ratings=6.0 - together.support_ratings)
    assert not torch.allclose(fitted.adapt_and_predict(own)[0], alone[0])


def test_path_weights_come_from_the_support_loss(synthetic_split, fitted):
    b = synthetic_split.test.batch(torch.arange(4))
    with torch.no_grad():
        _, _, weights = fitted.co_adapt(b, first_order=True)
    assert weights.shape == (4, len(PATHS)) and torch.allclose(weights.sum(1), torch.ones(4))
    uniform = MetaHIN.from_settings(b and synthetic_split.train.schema, overrides={"meta_paths": PATHS, "path_weights": "uniform"}, seed=0)
    uniform.load_state_dict(fitted.state_dict())
    with torch.no_grad():
        _, _, w = uniform.co_adapt(b, first_order=True)
    assert torch.allclose(w, torch.full_like(w, 0.25))


def test_checkpoint_carries_the_graph(synthetic_split, fitted):
    test = synthetic_split.test.subset(torch.arange(16))
    fresh = MetaHIN.from_settings(synthetic_split.train.schema, overrides={"meta_paths": PATHS}, seed=1)
    assert len(fresh.graph.items) == 0
    fresh.load_state_dict(fitted.state_dict())
    assert torch.equal(fresh.graph.items, fitted.graph.items)
    assert torch.allclose(fresh.predict(test), fitted.predict(test))


def test_second_order_meta_gradient_differs_from_first_order(synthetic_split):
    b = synthetic_split.train.batch(torch.arange(8))
    grads = {}
    for fo in (False, True):
        learner = MetaHIN.from_settings(
            synthetic_split.train.schema, overrides={"meta_paths": PATHS, "first_order": fo, "local_lr": 0.5, "mp_lr": 0.5}, seed=0
        )
        learner.graph.fit(synthetic_split.train)
        pred = learner._predict_query(b, first_order=fo)
        ((pred - b.query_ratings) ** 2).mean().backward()
        grads[fo] = learner.model.semantic.weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True])


def test_beats_the_global_mean_on_synthetic_data(synthetic_split):
    train, test = synthetic_split.train, synthetic_split.test
    learner = MetaHIN.from_settings(
        train.schema,
        # a small network (the paper's sizes need ~3x the time to get there)
        overrides={"meta_paths": PATHS, "epochs": 8, "meta_lr": 5e-3, "local_lr": 0.05, "mp_lr": 0.05,
                   "batch_size": 16, "first_order": True, "embedding_dim": 8, "context_dim": 8, "hidden": (32,)},
        seed=0,
    ).meta_fit(train)
    pred = learner.predict(test)
    mae = float((pred - test.query_ratings).abs()[test.query_mask].mean())
    mu = float(train.query_ratings[train.query_mask].mean())
    assert mae < 0.85 * float((mu - test.query_ratings).abs()[test.query_mask].mean())


def test_paper_preset_is_the_official_ml_config():
    p = MetaHIN.presets["paper"]
    assert (p["mp_lr"], p["local_lr"], p["meta_lr"], p["epochs"], p["batch_size"]) == (5e-3, 5e-3, 5e-4, 100, 32)
    assert tuple(p["hidden"]) == (64, 64) and p["context_dim"] == 32 and p["first_order"] is False
    assert isinstance(MetaHIN.Config().meta_paths, (tuple, type(None)))
    assert FeatureSchema  # the schema type paths are declared from


# --------------------------------------------------------------------------- the fused backend


def _grads(learner):
    return {n: None if p.grad is None else p.grad.clone() for n, p in learner.model.named_parameters()}


@pytest.mark.parametrize("overrides", [
    {},  # the paper's shape: second order, one semantic and one task step, user profile
    {"first_order": True, "mp_steps": 2, "local_steps": 3, "use_user_profile": False, "hidden": (6,)},
    {"mp_steps": 0, "local_steps": 2, "path_weights": "uniform", "hidden": ()},
], ids=["second-order", "first-order-multistep", "no-semantic-step-linear-head"])
def test_fused_backend_matches_reference_in_float64_over_three_meta_steps(synthetic_split, overrides):
    """Query predictions, path weights, losses and every meta-gradient within 1e-9 over three
    Adam steps (each backend stepping its own optimiser), then the evaluation predictions."""
    train, test = synthetic_split.train, synthetic_split.test
    settings = {"meta_paths": PATHS, "embedding_dim": 4, "context_dim": 3, "hidden": (8, 5), "mp_lr": 0.3,
                "local_lr": 0.3, "meta_lr": 1e-2, **overrides}
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = MetaHIN.from_settings(train.schema, overrides={**settings, "backend": "reference"}, seed=0)
        fused = MetaHIN.from_settings(train.schema, overrides={**settings, "backend": "fused"}, seed=0)
        fused.load_state_dict(ref.state_dict())
        ref.on_fit_start(train)
        fused.on_fit_start(train)
        assert fused._design_contexts()  # the closed-form contexts, not the fallback
        for step in range(3):
            b = train.batch(torch.arange(step * 8, step * 8 + 8))
            out = {}
            for name, learner in (("reference", ref), ("fused", fused)):
                learner.optimizer.zero_grad(set_to_none=True)
                if name == "reference":
                    pred = learner._predict_query(b, first_order=learner.config.first_order)
                    _, _, weights = learner.co_adapt(b, first_order=True, detach=True)
                else:
                    pred, weights = learner.co_adapt_fused(b, first_order=learner.config.first_order)
                loss = ((pred - b.query_ratings) ** 2 * b.query_mask).sum() / b.query_mask.sum()
                loss.backward()
                out[name] = (pred.detach(), weights.detach(), loss.detach(), _grads(learner))
            (p_r, w_r, l_r, g_r), (p_f, w_f, l_f, g_f) = out["reference"], out["fused"]
            for x, y in ((p_f, p_r), (w_f, w_r), (l_f, l_r)):
                torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
            assert g_f.keys() == g_r.keys()
            for key in g_r:
                assert (g_f[key] is None) == (g_r[key] is None), key
                if g_r[key] is not None:
                    torch.testing.assert_close(g_f[key], g_r[key], rtol=1e-9, atol=1e-9, msg=key)
            assert g_r["prior.0_weight.weight"].abs().sum() > 0 and g_r["semantic.weight"].abs().sum() > 0
            for learner in (ref, fused):
                learner.optimizer.step()
        tb = test.batch(torch.arange(12))
        torch.testing.assert_close(fused.adapt_and_predict(tb), ref.adapt_and_predict(tb), rtol=1e-9, atol=1e-9)
    finally:
        torch.set_default_dtype(old)


def test_fused_is_the_default_and_matches_reference_in_float32(synthetic_split, fitted):
    assert fitted.config.backend == "fused"
    ref = MetaHIN.from_settings(synthetic_split.train.schema, overrides={"meta_paths": PATHS, "backend": "reference"}, seed=0)
    ref.load_state_dict(fitted.state_dict())
    test = synthetic_split.test.subset(torch.arange(40))
    torch.testing.assert_close(fitted.predict(test), ref.predict(test), rtol=1e-5, atol=1e-5)


def test_gated_layer_backward_passes_gradcheck():
    from baselines.metahin import GatedLayer

    g = torch.Generator().manual_seed(0)
    w, t_w, t_b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 4), (12, 2), (12,)))
    e, x = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    args = [t.requires_grad_(True) for t in (w, t_w, t_b, e, x)]
    assert torch.autograd.gradcheck(GatedLayer.apply, args)
    ref = x @ (w * torch.sigmoid(e @ t_w.t() + t_b).view(5, 3, 4)).transpose(1, 2)
    torch.testing.assert_close(GatedLayer.apply(*args), ref)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_design_rows_reproduce_the_embedder(synthetic_split, pooling):
    from metarec.nn import FeatureEmbedder

    schema = synthetic_split.train.schema
    kinds = {f.kind for f in schema.item_features}
    assert {"numeric", "categorical", "multi_categorical"} <= kinds  # every kind of design block
    emb = FeatureEmbedder(schema.item_features, 5, multi_pooling=pooling)
    x = synthetic_split.test.batch(torch.arange(4)).support_features
    assert emb.is_linear and emb.design(x).shape[-1] == sum(emb.design_sizes)
    torch.testing.assert_close(emb.from_design(emb.design(x)), emb(x))
    assert not FeatureEmbedder(schema.item_features, 5, multi_pooling="sigmoid").is_linear
    with pytest.raises(ValueError, match="sigmoid"):
        FeatureEmbedder(schema.item_features, 5, multi_pooling="sigmoid").design(x)


def test_raw_contexts_equal_the_pooled_user_contexts(synthetic_split, fitted):
    """The design-operator contexts are the pooled ones (test users: items outside the graph
    too); where they cannot be built (sigmoid pooling, too large) the pooled ones are used."""
    b = synthetic_split.test.batch(torch.arange(20))
    part = MetaHIN.from_settings(synthetic_split.train.schema, overrides={"meta_paths": PATHS}, seed=0)
    part.load_state_dict(fitted.state_dict())
    part.on_fit_start(synthetic_split.train.subset(torch.arange(30)))  # a small graph: items outside it
    assert (part.graph.positions(b.support_items) < 0).any() and (part.graph.positions(b.support_items) >= 0).any()
    with torch.no_grad():
        for learner in (fitted, part):
            pooled = torch.stack(list(learner.user_contexts(b).values()))
            own = learner.model.item_embedder(b.support_features)
            torch.testing.assert_close(learner.raw_contexts(b, own), pooled, rtol=1e-5, atol=1e-6)
        pooled = torch.stack(list(fitted.user_contexts(b).values()))
        own = fitted.model.item_embedder(b.support_features)
        small = MetaHIN.from_settings(synthetic_split.train.schema, overrides={"meta_paths": PATHS}, seed=0)
        small.load_state_dict(fitted.state_dict())
        small.max_design_entries = 10
        assert not small._design_contexts()
        torch.testing.assert_close(small.raw_contexts(b, own), pooled)
    sig = MetaHIN.from_settings(synthetic_split.train.schema, overrides={"meta_paths": PATHS, "multi_pooling": "sigmoid"}, seed=0)
    sig.on_fit_start(synthetic_split.train)
    assert not sig._design_contexts()
    with torch.no_grad():
        own = sig.model.item_embedder(b.support_features)
        torch.testing.assert_close(sig.raw_contexts(b, own), torch.stack(list(sig.user_contexts(b).values())))


def test_speed_script_times_both_backends_on_the_same_batches(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_metahin_speed.py"
    spec = importlib.util.spec_from_file_location("bench_metahin_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "speed.json"
    assert mod.main(["--data", "synthetic", "--threads", "1", "--steps", "2", "--warmup", "0",
                     "--profile-steps", "1", "--eval-users", "8", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    ref, fused = r["backends"]["reference"], r["backends"]["fused"]
    assert len(ref["meta_step_s"]) == len(fused["meta_step_s"]) == 2
    assert r["ratio_reference_over_fused"] == pytest.approx(sum(ref["meta_step_s"]) / sum(fused["meta_step_s"]))
    assert r["ratio_reference_over_fused_cpu"] == pytest.approx(sum(ref["meta_step_cpu_s"]) / sum(fused["meta_step_cpu_s"]))
    assert fused["s_per_epoch"] == pytest.approx(fused["meta_step_mean_s"] * r["steps_per_epoch"])
    assert r["max_abs_loss_difference"] < 1e-3 and r["preset"] == "paper" and r["batch_size"] == 32
    assert set(r["profile"]["fused"]["forward_phases_s"]) == set(mod.PHASES)
    assert r["profile"]["reference"]["forward_phases_s"]["task_steps"] > 0
    assert r["environment"]["torch_threads"] == 1 and "load_average_before_after" in r["environment"]
