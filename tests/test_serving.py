"""Model folders and the Python serving API, for every registered learner.

* save/load round trip: the loaded learner predicts exactly what the fitted one did;
* bench-vs-serve: ``model.predict`` for a protocol test user equals the prediction that
  ``metarec bench`` wrote for the same method, seed and settings (to 1e-6);
* a user with 0 ratings (one masked support slot) and padded batches: every learner ignores
  masked support slots, so padding cannot change a prediction;
* tampered, truncated, missing and foreign files are refused with an error naming them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console

import metarec
from metarec.bench.config import resolve_config
from metarec.bench.results import RunDir, read_json, read_predictions
from metarec.bench.runner import load_bench_split, run_bench
from metarec.registry import get_learner, learners_for_protocol
from metarec.serving import ModelFolderError, RatingRangeError, RecommendError, UnknownItemError, load_model
from metarec.serving.catalogue import decode_user
from metarec.serving.fit import fit_model

SYNTH = {"n_users": 70, "n_items": 50, "seed": 0}
#: Shorter inner loops where a learner's defaults are slow (as tests/test_devices.py does).
# s2meta: its default evaluation stop rule draws per user from the run seed and the user's table
# row; a served new user has no row (its draws are keyed by a hash of its id, docs/serving.md), so
# the bench-vs-serve equality is checked with the deterministic threshold rule.
SHORTER = {"s2meta": {"max_steps": 6, "min_steps": 2, "eval_stop_rule": "threshold"}}
LEARNERS = sorted(learners_for_protocol("user-cold"))  # serving is the user-task protocol's


def tiny_config(methods):
    methods_layer = {}
    for m in methods:
        names = {f.name for f in dataclasses.fields(get_learner(m).Config)}
        methods_layer[m] = {**SHORTER.get(m, {}), **({"eval_batch_size": 8} if "eval_batch_size" in names else {})}
    return resolve_config({
        "bench": {"dataset": "synthetic", "synthetic": SYNTH, "methods": list(methods), "seeds": [0],
                  "n_boot": 20, "progress": False, "threads": 1, "epochs": 1, "device": "cpu"},
        "methods": methods_layer,
    })


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One bench run of every learner, and each learner fitted with --holdout to a model folder."""
    root = tmp_path_factory.mktemp("serving")
    cfg = tiny_config(LEARNERS)
    run_bench(cfg, out=root / "bench", console=Console(file=open(os.devnull, "w")), render=lambda r, o: None)
    models = {}
    for m in LEARNERS:
        models[m] = fit_model(cfg, m, root / "models" / m, seed=0, holdout=True)
    return {"cfg": cfg, "root": root, "models": models, "split": load_bench_split(cfg, 0)}


def test_every_registered_learner_is_covered(fitted):
    assert {"mamo", "melu", "s2meta", "rum-item", "profile-mlp-finetune"} <= set(LEARNERS)
    for m in LEARNERS:
        run = read_json(RunDir(fitted["root"] / "bench").run_json(m, 0))
        assert run["status"] == "ok", (m, run.get("error"))


@pytest.mark.parametrize("method", LEARNERS)
def test_round_trip_gives_identical_predictions(fitted, method):
    fit = fitted["models"][method]
    test = fitted["split"].test
    model = load_model(fit.path)
    assert model.method == method
    assert torch.equal(model.learner.predict(test), fit.learner.predict(test))
    # the folder holds no pickle and no optimizer state
    names = set(json.loads((fit.path / "manifest.json").read_text())["files"])
    assert not any(n.endswith((".pt", ".pkl", ".pickle", ".npy")) for n in names)
    assert "optimizer" not in (fit.path / "model.json").read_text().split('"state"')[1].split('"user_feature_policy"')[0]


@pytest.mark.parametrize("method", LEARNERS)
def test_served_predictions_equal_the_bench_predictions(fitted, method):
    """The numbers a researcher reads in predictions.csv are the numbers the model serves."""
    model = load_model(fitted["models"][method].path)
    test = fitted["split"].test
    bench = read_predictions(RunDir(fitted["root"] / "bench").run_predictions(method, 0))
    for i in (0, 3, len(test) - 1):
        task = test[i]
        user = decode_user(test.schema, test.users, int(test.user_index[i]))
        ratings = list(zip(task.support_item_ids, task.support_ratings.tolist()))
        served = model.predict(user, ratings, task.query_item_ids)
        assert served.notes == []
        rows = np.flatnonzero(bench["user_id"] == task.user_id)
        assert list(bench["item_id"][rows]) == task.query_item_ids
        # s2meta's fused backend runs all users of a batch through batched float32 kernels: a user
        # served alone and the same user in a bench batch differ in the last bits (~5e-6)
        atol = 1e-4 if method == "s2meta" else 1e-6
        np.testing.assert_allclose(served.predicted, bench["prediction"][rows], atol=atol, rtol=0,
                                   err_msg=f"{method}: served != bench for test user {task.user_id}")


def test_holdout_metrics_are_the_bench_metrics(fitted):
    for m in LEARNERS:
        card = json.loads((fitted["models"][m].path / "card.json").read_text())
        run = read_json(RunDir(fitted["root"] / "bench").run_json(m, 0))
        # fit trains in this process, bench in a worker with its own thread count: float32
        # reductions may differ in the last bits after a whole suite has changed torch's threads
        assert card["held_out"]["metrics"]["overall"]["mae"] == pytest.approx(run["metrics"]["overall"]["mae"], abs=1e-5)


@pytest.mark.parametrize("method", LEARNERS)
def test_masked_support_slots_are_ignored(fitted, method):
    """0 ratings = one masked slot; padding a user's support in a batch changes nothing."""
    model = load_model(fitted["models"][method].path)
    ids = list(model.catalogue.ids)
    items = ids[:6]
    none = model.predict({}, [], items)
    assert len(none.predicted) == 6 and np.all(np.isfinite(none.predicted))
    lo, hi = model.rating_range
    # the padded slot's item and rating must not matter: perturb them directly in the batch
    prepared = [model._prepare({"user": {}, "ratings": [], "items": items}, "error", "", items_key="items")]
    a = model.build_batch(prepared)
    b = dataclasses.replace(a, support_items=torch.full_like(a.support_items, 5),
                            support_features=model._catalogue_device.gather(torch.full_like(a.support_items, 5)),
                            support_ratings=torch.full_like(a.support_ratings, hi))
    with model.no_grad():
        pa, pb = model.learner.adapt_and_predict(a), model.learner.adapt_and_predict(b)
    torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    # a user alone == the same user in a batch next to one with more ratings (padded support)
    one = [(ids[10], hi), (ids[11], lo)]
    many = [(ids[j], lo + (j % 5) * (hi - lo) / 4) for j in range(12, 30)]
    alone = model.predict({}, one, items).predicted
    batched = model.predict_batch([{"user": {}, "ratings": one, "items": items},
                                   {"user": {}, "ratings": many, "items": items}])[0].predicted
    np.testing.assert_allclose(alone, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", LEARNERS)
def test_cached_catalogue_inputs_give_the_numbers_of_computing_them(fitted, method):
    """The serving path's caches (the learner's precomputed item inputs, the whole catalogue's
    query tensors, rated items dropped after scoring) change no number."""
    from metarec.serving.model import RecommenderModel

    model = load_model(fitted["models"][method].path)
    plain = RecommenderModel(model.learner, model.catalogue, list(model.policies.values()), info=model.info,
                             card=model.card, precompute_items=False)
    assert plain.precomputed_item_inputs == []
    if method in ("mamo", "melu", "profile-mlp", "profile-mlp-finetune"):
        assert model.precomputed_item_inputs, "an item embedder that is never adapted is embedded once"
    ids = list(model.catalogue.ids)
    rated = [(ids[3], 5), (ids[7], 2), (ids[1], 4)]
    n = len(ids)
    cached = model.recommend(user={}, ratings=rated, k=n, user_id="u1")
    uncached = plain.recommend(user={}, ratings=rated, k=n, user_id="u1", candidates=ids)  # gathered, filtered first
    atol = 1e-4 if method == "s2meta" else 1e-6
    assert cached.n_candidates == uncached.n_candidates == n - 3
    by_id = dict(zip(uncached.item_ids, uncached.predicted))
    np.testing.assert_allclose(cached.predicted, [by_id[i] for i in cached.item_ids], atol=atol, rtol=0)
    batch = model.recommend_batch([{"user": {}, "ratings": rated, "user_id": "u1"}, {"user": {}, "ratings": []}], k=n)
    np.testing.assert_allclose(sorted(batch[0].predicted), sorted(cached.predicted), atol=atol, rtol=0)
    alone = model.recommend(user={}, ratings=[], k=n)
    np.testing.assert_allclose(sorted(batch[1].predicted), sorted(alone.predicted), atol=atol, rtol=0)


def test_recommend_ranks_the_catalogue(fitted):
    model = load_model(fitted["models"]["mamo"].path)
    ids = list(model.catalogue.ids)
    rated = [(ids[0], 5), (ids[1], 1), (ids[2], 4)]
    rec = model.recommend(user={}, ratings=rated, k=10)
    assert rec.ranks == list(range(1, 11))
    assert rec.predicted == sorted(rec.predicted, reverse=True)
    assert not set(rec.item_ids) & {ids[0], ids[1], ids[2]}
    assert rec.n_candidates == len(ids) - 3
    full = model.predict({}, rated, [i for i in ids if i not in {ids[0], ids[1], ids[2]}])
    best = np.argsort(-np.asarray(full.predicted), kind="stable")[:10]
    assert sorted(rec.predicted, reverse=True) == [full.predicted[j] for j in best]  # same scores (ties may reorder)
    assert set(rec.item_ids) <= set(full.item_ids)
    assert len(model.recommend(user={}, ratings=rated, k=10, exclude_rated=False).item_ids) == 10
    # ranked by the raw output, so items clipped to the same top rating keep the model's order
    every = model.recommend(user={}, ratings=rated, k=len(ids), exclude_rated=False)
    _, raw = model._score([model._prepare({"user": {}, "ratings": rated}, "error", "", items_key="candidates")], with_raw=True)
    assert every.item_ids == [ids[j] for j in np.lexsort((np.arange(len(ids)), -raw[0]))]
    cold = model.recommend(user={}, ratings=rated, k=len(ids), item_state="cold")
    assert set(cold.states) <= {"cold"} and cold.n_candidates == int(model.catalogue.cold.sum()) - sum(
        model.catalogue.cold[model.catalogue.row(i)] for i, _ in rated)
    some = model.recommend(user={}, ratings=rated, k=2, candidates=ids[5:9])
    assert set(some.item_ids) <= set(ids[5:9]) and some.n_candidates == 4
    batch = model.recommend_batch([{"user": {}, "ratings": rated}, {"user": {}, "ratings": []}], k=5)
    assert batch[0].item_ids == rec.item_ids[:5] and batch[1].n_ratings_used == 0


def test_bad_requests_name_what_is_wrong(fitted):
    model = load_model(fitted["models"]["profile-mlp-finetune"].path)
    ids = list(model.catalogue.ids)
    with pytest.raises(UnknownItemError, match=r"ratings\[1\].item: unknown item id 'nope'"):
        model.recommend(user={}, ratings=[(ids[0], 4), ("nope", 3)])
    with pytest.warns(UserWarning, match="'nope' skipped"):
        rec = model.recommend(user={}, ratings=[(ids[0], 4), ("nope", 3)], unknown_items="skip")
    assert rec.n_ratings_used == 1 and any("nope" in n for n in rec.notes)
    with pytest.raises(RatingRangeError, match=r"ratings\[0\].rating: 7 .* outside the model's rating range \[1, 5\]"):
        model.recommend(user={}, ratings=[(ids[0], 7)])
    with pytest.raises(RatingRangeError, match="not a number"):
        model.recommend(user={}, ratings=[(ids[0], "good")])
    with pytest.raises(UnknownItemError, match=r"items\[1\]: unknown item id 'x'"):
        model.predict({}, [], [ids[0], "x"])
    with pytest.raises(RecommendError, match="rated twice"):
        model.predict({}, [(ids[0], 4), (ids[0], 5)], [ids[1]])
    with pytest.raises(RecommendError, match="k must be a positive integer"):
        model.recommend(user={}, ratings=[], k=0)
    with pytest.raises(ValueError, match="item_state"):
        model.recommend(user={}, ratings=[], item_state="lukewarm")


def test_user_feature_policy_is_reported_not_fatal(fitted):
    model = load_model(fitted["models"]["melu"].path)
    schema = model.schema
    cat = next(f for f in schema.user_features if f.kind == "categorical")
    full = {f.name: (f.vocabulary[0] if f.kind == "categorical" else 0.0) for f in schema.user_features}
    assert model.predict(full, [], [model.catalogue.ids[0]]).notes == []
    unseen = {**full, cat.name: "martian", "shoe_size": 44}
    out = model.predict(unseen, [], [model.catalogue.ids[0]])
    assert any(f"'{cat.name}': value 'martian' is not in the vocabulary" in n for n in out.notes)
    assert any("'shoe_size' is not in the model's schema" in n for n in out.notes)
    policy = model.policies[cat.name]
    expected = model.predict({**full, cat.name: policy.unseen}, [], [model.catalogue.ids[0]]).predicted
    assert out.predicted == expected


# ---------------------------------------------------------------------------- refusing bad folders


@pytest.fixture
def folder(fitted, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(fitted["models"]["baseline-predictor"].path, dst)
    return dst


def test_a_tampered_file_is_refused(folder):
    data = bytearray((folder / "weights.safetensors").read_bytes())
    data[-1] ^= 0x01
    (folder / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=r"weights.safetensors: checksum does not match the manifest"):
        load_model(folder)


def test_a_truncated_file_is_refused(folder):
    data = (folder / "catalogue.safetensors").read_bytes()
    (folder / "catalogue.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match=r"catalogue.safetensors: \d+ bytes, the manifest says \d+ \(truncated"):
        load_model(folder)


def test_missing_files_and_manifest_are_refused(folder, tmp_path):
    (folder / "schema.json").unlink()
    with pytest.raises(ModelFolderError, match="schema.json: missing"):
        load_model(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelFolderError, match="manifest.json: missing"):
        load_model(folder)
    with pytest.raises(ModelFolderError, match="no such model folder"):
        load_model(tmp_path / "nowhere")


def _rewrite(folder, name, edit):
    """Edit a JSON file of the folder and re-sign the manifest (a consistent but foreign folder)."""
    from metarec.serving.folder import sha256

    path = folder / name
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    manifest = json.loads((folder / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["files"][name] = {"sha256": sha256(data), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_other_version_and_other_method_are_refused(folder):
    with pytest.raises(ModelFolderError, match="holds a 'baseline-predictor' model, not 'mamo'"):
        load_model(folder, method="mamo")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metarec"] = "0.0.1"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"written by metarec 0.0.1, this is metarec"):
        load_model(folder)
    with pytest.warns(UserWarning, match="written by metarec 0.0.1"):
        assert load_model(folder, allow_other_version=True).method == "baseline-predictor"
    _rewrite(folder, "model.json", lambda m: {**m, "learner_class": "elsewhere:Other"})
    with pytest.raises(ModelFolderError, match="a different method is registered under that name"), \
            pytest.warns(UserWarning, match="written by metarec 0.0.1"):
        load_model(folder, allow_other_version=True)


def test_weights_of_another_method_are_refused(fitted, folder):
    shutil.copy(fitted["models"]["global-mean"].path / "weights.safetensors", folder / "weights.safetensors")
    from metarec.serving.folder import sha256

    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "weights.safetensors").read_bytes()
    manifest["files"]["weights.safetensors"] = {"sha256": sha256(data), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match="weights.safetensors: holds tensors"):
        load_model(folder)


def test_load_model_is_exported_at_the_top():
    assert metarec.load_model.__module__ == "metarec"


def test_top_k_is_the_head_of_a_full_sort_ties_included():
    import numpy as np

    from metarec.serving.model import top_k

    rng = np.random.default_rng(0)
    for n, k in ((50, 10), (50, 50), (50, 80), (7, 1), (1, 3)):
        z = rng.integers(0, 4, size=n).astype(float)  # many ties
        full = np.lexsort((np.arange(n), -z))
        assert top_k(z, k).tolist() == full[:k].tolist()
