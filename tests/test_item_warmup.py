"""The item warm-up protocol: the split, the metrics, the backbones, the floor and the harness."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import f1_score, log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warmupdata import make_warmup_data  # noqa: E402

from metarec.cli import main  # noqa: E402
from metarec.nn import fm_interaction  # noqa: E402
from metarec.warmup.backbone import CTRBackbone  # noqa: E402
from metarec.warmup.learner import DeepFMFloor, FeatureOnly, WarmupTrainData  # noqa: E402
from metarec.warmup.metrics import bootstrap_replicates, stage_metrics  # noqa: E402
from metarec.warmup.protocol import WarmupConfig, WarmupProtocolError, build_warmup_split  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = WarmupConfig(old_min_count=60, stage_size=6)


@pytest.fixture(scope="module")
def data():
    return make_warmup_data()


@pytest.fixture(scope="module")
def split(data):
    return build_warmup_split(data, CFG, seed=0)


# ------------------------------------------------------------------ the split
def test_split_follows_cvars_rule(data, split):
    counts = np.bincount(data.item, minlength=len(data.items))
    old = np.flatnonzero(counts > 60)
    new = np.flatnonzero((counts >= 18) & (counts <= 60))
    assert split.old_items.tolist() == old.tolist() and split.new_items.tolist() == new.tolist()
    assert set(split.base.item.tolist()) == set(old.tolist())
    # every new item has exactly stage_size rows in each warm-up batch, the rest are test rows
    for rows in split.stages:
        per_item = np.bincount(rows.item.numpy(), minlength=len(data.items))
        assert (per_item[new] == 6).all() and per_item[old].sum() == 0
    test_counts = np.bincount(split.test.item.numpy(), minlength=len(data.items))
    assert (test_counts[new] == counts[new] - 18).all()
    assert len(split.base) + 3 * 6 * len(new) + len(split.test) == len(data.rating)
    # labels: rating >= 4
    assert set(split.test.label.unique().tolist()) <= {0.0, 1.0}


def test_each_new_item_is_split_in_time_order(data, split):
    """Warm-up a comes before b before c before the test rows, item by item (not a global time cut)."""
    parts = [*split.stages, split.test]
    for item in split.new_items[:20].tolist():
        ranks = [p.rank[p.item == item] for p in parts]
        for earlier, later in zip(ranks, ranks[1:]):
            assert earlier.max() < later.min()


def test_without_time_the_order_is_seeded_random():
    d = make_warmup_data(has_time=False)
    a, b, c = (build_warmup_split(d, CFG, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.test.user, b.test.user)
    assert not torch.equal(a.stages[0].user, c.stages[0].user)
    assert a.info["order_rule"] == "random"
    with pytest.raises(WarmupProtocolError, match="no time column"):
        build_warmup_split(d, WarmupConfig(old_min_count=60, stage_size=6, order="time"))


def test_impossible_thresholds_are_one_clear_error(data):
    with pytest.raises(WarmupProtocolError, match="old items"):
        build_warmup_split(data, WarmupConfig(old_min_count=500, stage_size=6))


# ------------------------------------------------------------------ metrics
def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    p = np.round(np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1), 2)  # rounded: ties on purpose
    m = stage_metrics(p, y)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, p > 0.5), abs=1e-12)
    assert m["f1_mean"] == pytest.approx(f1_score(y, p > p.mean()), abs=1e-12)
    assert m["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)


def test_item_bootstrap_resamples_items_with_all_their_rows():
    rng = np.random.default_rng(1)
    item = np.repeat(np.arange(40), 5)
    y = rng.integers(0, 2, 200).astype(float)
    p = rng.random(200)
    reps = bootstrap_replicates(p, y, item, n_boot=64, seed=3)
    again = bootstrap_replicates(p, y, item, n_boot=64, seed=3)
    assert np.array_equal(reps["auc"], again["auc"])
    # one replicate by hand: draw items, take all their rows (duplicates included)
    draws = np.random.default_rng(3).integers(0, 40, size=(64, 40))[0]
    rows = np.concatenate([np.flatnonzero(item == i) for i in draws])
    assert reps["auc"][0] == pytest.approx(roc_auc_score(y[rows], p[rows]), abs=1e-12)
    assert reps["logloss"][0] == pytest.approx(log_loss(y[rows], p[rows]), abs=1e-9)


def test_item_level_bootstrap_equals_the_row_level_definition():
    """The fast replicates (per-item statistics) are the metrics of the resampled rows, exactly:
    ties, items with only positives or only negatives, F1 at each replicate's own mean."""
    from metarec.warmup.metrics import _weighted

    rng = np.random.default_rng(4)
    item = np.r_[rng.integers(0, 30, 400), [30] * 4, [31] * 4]
    y = np.r_[rng.integers(0, 2, 400), [1] * 4, [0] * 4].astype(float)
    p = np.round(rng.random(408) * 0.6 + 0.3 * y, 2)  # rounded: many ties
    reps = bootstrap_replicates(p, y, item, n_boot=50, seed=7)
    draws = np.random.default_rng(7).integers(0, 32, size=(50, 32))
    w = np.stack([np.bincount(d, minlength=32) for d in draws]).astype(float)[:, item]
    rows = _weighted(p, y, w)
    for k in rows:
        assert np.allclose(reps[k], rows[k], atol=1e-12, equal_nan=True), k


# ------------------------------------------------------------------ backbones
def test_fm_interaction_is_the_sum_of_pairwise_products():
    v = torch.randn(3, 5, 4)
    brute = sum((v[:, i] * v[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    assert torch.allclose(fm_interaction(v), brute, atol=1e-5)


@pytest.mark.parametrize("kind", ["fm", "deepfm", "wide-deep"])
def test_an_injected_item_embedding_replaces_the_lookup(split, kind):
    bb = CTRBackbone(split.schema, len(split.users), len(split.items), kind=kind).eval()
    rows = split.base.select(torch.arange(32))
    u, i = split.users.gather(rows.user), split.items.gather(rows.item)
    plain = bb(rows.user, rows.item, u, i)
    assert torch.allclose(bb(rows.user, rows.item, u, i, bb.item_id(rows.item)), plain)
    assert not torch.allclose(bb(rows.user, rows.item, u, i, torch.ones(32, 16)), plain)
    assert (kind == "fm") == (bb.mlp is None)


def test_feature_only_has_no_item_id_field(split):
    learner = FeatureOnly(split.schema, n_users=len(split.users), n_items=len(split.items))
    assert learner.backbone.item_id is None and learner.backbone.n_fields == 1 + 1 + 1


def _fit(cls, split, seed=0, **overrides):
    learner = cls.from_settings(split.schema, n_users=len(split.users), n_items=len(split.items), seed=seed,
                                overrides={"pretrain_epochs": 2, "batch_size": 256, **overrides})
    learner.fit(WarmupTrainData(split.users, split.items, split.base, split.old_items))
    return learner


def test_the_floor_draws_new_rows_and_warm_up_moves_only_new_item_rows(split):
    learner = _fit(DeepFMFloor, split)
    before = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    learner.init_new_items(split.new_items)
    table = learner.backbone.item_id.weight.detach()
    assert not torch.equal(table[split.new_items], before["item_id.weight"][split.new_items])
    assert table[split.new_items].abs().max() <= learner.backbone.init_range
    assert torch.equal(table[split.old_items], before["item_id.weight"][split.old_items])
    cold = learner.backbone.item_id.weight.detach().clone()
    learner.warm_up(split.stages[0], "a")
    after = learner.backbone.state_dict()
    for k, v in before.items():
        if k != "item_id.weight":
            assert torch.equal(after[k], v), f"{k} changed during ID-only warm-up"
    moved = (after["item_id.weight"] != cold).any(1)
    assert moved[split.new_items].all() and not moved[split.old_items].any()


def test_predictions_never_see_test_labels(split):
    learner = _fit(DeepFMFloor, split)
    learner.init_new_items(split.new_items)
    hidden = split.test.without_labels()
    assert torch.isnan(hidden.label).all()
    p = learner.predict(hidden)
    assert p.shape == (len(split.test),) and ((p > 0) & (p < 1)).all()


# ------------------------------------------------------------------ harness, files, report, recompute
def _recompute():
    spec = importlib.util.spec_from_file_location("recompute_metrics", REPO / "benchmarks" / "recompute_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("warmup") / "run"
    res = CliRunner().invoke(main, [
        "bench", "--protocol", "item-warmup", "-d", "synthetic", "-m", "deepfm,feature-only,metaemb",
        "--set", "synthetic.ratings_per_user=40", "--set", "protocol.old_min_count=60", "--set", "protocol.stage_size=6",
        "--set", "deepfm.pretrain_epochs=2", "--seeds", "0,1", "--threads", "1", "--n-boot", "30", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    return out


def test_bench_writes_results_predictions_and_summary(bench_dir):
    results = json.loads((bench_dir / "results.json").read_text())
    assert results["protocol"] == "item-warmup" and results["stages"] == ["cold", "a", "b", "c"]
    assert {r["method"] for r in results["runs"] if r["status"] == "ok"} == {"deepfm", "feature-only", "metaemb"}
    cell = results["methods"]["deepfm"]["stages"]["cold"]["auc"]
    assert len(cell["per_seed"]) == 2 and cell["std"] is not None and cell["ci"][0] <= cell["mean"] <= cell["ci"][1]
    assert results["methods"]["deepfm"]["settings"]["overrides"] == {"pretrain_epochs": 2}
    assert results["warmup_protocol"]["stage_size"] == 6
    header = gzip.open(bench_dir / "predictions.csv.gz", "rt").readline().strip().split(",")
    assert header[:4] == ["seed", "item", "user", "label"] and "metaemb|c" in header
    summary = (bench_dir / "summary.md").read_text()
    assert "## AUC" in summary and "| feature-only |" in summary


def test_same_seed_same_numbers(bench_dir, tmp_path):
    out = tmp_path / "again"
    res = CliRunner().invoke(main, [
        "bench", "--protocol", "item-warmup", "-d", "synthetic", "-m", "metaemb",
        "--set", "synthetic.ratings_per_user=40", "--set", "protocol.old_min_count=60", "--set", "protocol.stage_size=6",
        "--seeds", "1", "--threads", "1", "--n-boot", "30", "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    a = json.loads((bench_dir / "runs" / "metaemb__seed1.json").read_text())["metrics"]
    b = json.loads((out / "runs" / "metaemb__seed1.json").read_text())["metrics"]
    assert a == b


def test_recompute_metrics_reproduces_every_cell(bench_dir, capsys):
    assert _recompute().main([str(bench_dir)]) == 0
    assert "item warm-up runs" in capsys.readouterr().out


def test_recompute_metrics_catches_a_changed_number(bench_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(bench_dir, copy)
    results = json.loads((copy / "results.json").read_text())
    results["runs"][0]["metrics"]["b"]["auc"] += 0.01
    (copy / "results.json").write_text(json.dumps(results))
    assert _recompute().main([str(copy)]) == 1
    assert "DISAGREE" in capsys.readouterr().out


def test_report_re_renders_the_summary(bench_dir, tmp_path):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(bench_dir, copy)
    (copy / "summary.md").unlink()
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert (copy / "summary.md").read_text() == (bench_dir / "summary.md").read_text()


def test_bench_refuses_a_user_cold_learner_for_item_warmup_in_one_line(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--protocol", "item-warmup", "-d", "synthetic", "-m", "deepfm,mamo",
                                    "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "'mamo' follows the user-cold protocol, not item-warmup" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "x").exists()


def test_bench_refuses_an_item_warmup_learner_for_user_cold_in_one_line(tmp_path):
    res = CliRunner().invoke(main, ["bench", "-d", "synthetic", "-m", "global-mean,cvar", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2
    assert "'cvar' follows the item-warmup protocol" in res.output and "--protocol item-warmup" in res.output
    assert "Traceback" not in res.output


def test_an_unknown_protocol_setting_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["bench", "--protocol", "item-warmup", "-d", "synthetic", "-m", "deepfm",
                                    "--set", "protocol.stage_sise=5", "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "stage_sise" in res.output and "Traceback" not in res.output


def test_methods_lists_the_protocol_of_each_learner():
    res = CliRunner().invoke(main, ["methods"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.strip("│ ").startswith("cvar "))
    assert "item-warmup" in line


# ------------------------------------------------------------------ the user-task interface is unchanged
TUTORIAL = REPO / "docs" / "tutorial" / "toy_learner"


def test_the_tutorials_user_task_learner_is_untouched_by_the_second_protocol(tmp_path):
    """The tutorial's Reptile, written against the user-task interface, declares no protocol and
    needs none: it resolves to user-cold, and the item warm-up bench refuses it in one line (its
    user-task contract check, unchanged, is tests/test_contract.py)."""
    from metarec.registry import learner_protocol, learners_for_protocol, register_learner, unregister_learner

    from tutorial_source import tutorial_reptile

    src = (TUTORIAL / "toy_learner" / "reptile.py").read_text()
    assert "protocol" not in src and "warmup" not in src
    Reptile = tutorial_reptile()
    assert learner_protocol(Reptile) == "user-cold"
    register_learner("toy-reptile-src")(Reptile)
    try:
        assert "toy-reptile-src" in learners_for_protocol("user-cold")
        assert "toy-reptile-src" not in learners_for_protocol("item-warmup")
        res = CliRunner().invoke(main, ["bench", "--protocol", "item-warmup", "-d", "synthetic", "-m",
                                        "toy-reptile-src", "--out", str(tmp_path / "warm")])
    finally:
        unregister_learner("toy-reptile-src")
    assert res.exit_code == 2 and "'toy-reptile-src' follows the user-cold protocol, not item-warmup" in res.output
    assert not (tmp_path / "warm").exists()


def test_bench_draws_the_stage_plot(bench_dir):
    pytest.importorskip("matplotlib")
    assert (bench_dir / "plot.png").stat().st_size > 0 and (bench_dir / "plot.svg").stat().st_size > 0


def test_results_page_renders_an_item_warmup_folder(bench_dir, tmp_path):
    import shutil

    spec = importlib.util.spec_from_file_location("gen_results_w", REPO / "docs" / "gen_results.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    shutil.copytree(bench_dir, tmp_path / "results" / "warm-run")
    page = gen.render(tmp_path / "results", reference_path=None)
    assert "## Item warm-up protocol" in page and "`warm-run`" in page
    cell = json.loads((bench_dir / "results.json").read_text())["methods"]["metaemb"]["stages"]["b"]["auc"]
    assert f"| metaemb | " in page and f"{cell['mean']:.4f}" in page


def test_speed_script_times_each_phase_of_the_stream(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_warmup_speed", REPO / "benchmarks" / "bench_warmup_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "speed.json"
    assert mod.main(["--data", "synthetic", "--methods", "deepfm,feature-only", "--threads", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["method"] for r in rec["rows"]] == ["deepfm", "feature-only"]
    for r in rec["rows"]:
        assert r["total_s"] >= r["fit_s"] + r["cold_s"] + r["warm_abc_s"] - 1e-6 and r["warm_abc_s"] > 0
    assert rec["rows"][0]["total_vs_reference"] == 1.0 and rec["environment"]["load_average_before_after"]


def test_a_run_stopped_after_a_seed_keeps_complete_files_for_it(tmp_path, monkeypatch, capsys):
    import metarec.warmup.bench as wb

    real = wb.run_stream

    def stop_at_seed_1(*args, **kwargs):
        if kwargs["seed"] == 1:
            raise KeyboardInterrupt  # what a time limit (SIGINT) does mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(wb, "run_stream", stop_at_seed_1)
    out = tmp_path / "stopped"
    CliRunner().invoke(main, [
        "bench", "--protocol", "item-warmup", "-d", "synthetic", "-m", "deepfm,feature-only",
        "--set", "synthetic.ratings_per_user=40", "--set", "protocol.old_min_count=60", "--set", "protocol.stage_size=6",
        "--seeds", "0,1", "--threads", "1", "--n-boot", "20", "--out", str(out),
    ])
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0] and results["seeds_planned"] == [0, 1] and results["complete"] is False
    assert {r["seed"] for r in results["runs"]} == {0}
    assert "planned: the run stopped early" in (out / "summary.md").read_text()
    assert _recompute().main([str(out)]) == 0
