"""The MAMO speed script runs end to end and records what it measured (not how fast: the
benchmark itself is run by hand, see ``docs/methods/mamo.md``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(script: str):
    """A script of ``benchmarks/`` as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(script, REPO / "benchmarks" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _script():
    return _load("bench_mamo_speed")


def test_mamo_speed_script_times_the_backends_on_the_same_batches(tmp_path):
    out = tmp_path / "speed.json"
    rc = _script().main([
        "--data", "synthetic", "--threads", "1", "--backends", "lowrank,loop",
        "--set", "embedding_dim=8", "--set", "batch_size=64", "--loop-users", "100", "--out", str(out),
    ])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["train_users"] == 1600 and record["batches"] == 25 and record["batch_size"] == 64
    assert set(record["epoch_s"]) == {"lowrank", "loop"}
    assert len(record["batch_s"]["lowrank"]) == 25
    assert len(record["batch_s"]["loop"]) == 2 and record["loop_extrapolated_from_users"] == 128
    assert record["ratio_loop_over"]["lowrank"] == pytest.approx(record["epoch_s"]["loop"] / record["epoch_s"]["lowrank"])
    # the loop's epoch is extrapolated from its two batches
    assert record["epoch_s"]["loop"] == pytest.approx(sum(record["batch_s"]["loop"]) * 1600 / 128)
    # the backends computed the same first meta-step
    assert record["batch_loss_difference_vs_loop"]["lowrank"]["first"] < 1e-5
    env = record["environment"]
    assert env["torch_threads"] == 1 and env["git_commit"] and "load_average_before_after" in env


def test_mamo_speed_script_needs_the_loop_and_a_batched_backend(tmp_path):
    with pytest.raises(SystemExit):
        _script().main(["--data", "synthetic", "--backends", "lowrank", "--out", str(tmp_path / "x.json")])


def test_methods_speed_script_times_each_method_with_its_table1_settings(tmp_path):
    mod = _load("bench_methods_speed")
    out = tmp_path / "methods.json"
    rc = mod.main(["--threads", "1", "--methods", "mamo,global-mean", "--train-users", "16", "--eval-users", "8",
                   "--out", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    mamo, mean = record["rows"]
    assert mamo["method"] == "mamo" and mamo["preset"] == "tuned"  # the Table 1 config's preset
    assert mamo["overrides"]["epochs"] == 1 and mamo["train_users_timed"] == 16 and mamo["eval_users"] == 8
    assert mamo["s_per_epoch"] == pytest.approx(mamo["fit_s"] * record["train_users"] / 16)
    assert mean["s_per_epoch"] is None and mean["whole_fit_s"] == pytest.approx(mean["fit_s"])
    assert all(r["eval_users_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in record["rows"])
    assert record["environment"]["device"] == "cpu"
    with pytest.raises(SystemExit):
        mod.main(["--methods", "no-such-method", "--out", str(tmp_path / "x.json")])


def test_catalogue_ranking_script_times_every_method_on_all_test_users(tmp_path):
    out = tmp_path / "catalogue.json"
    rc = _load("bench_catalogue_ranking").main([
        "--data", "synthetic", "--threads", "1", "--methods", "global-mean,baseline-predictor", "--out", str(out),
    ])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["test_users"] == 400 and record["candidates"] == record["candidates_warm"] + record["candidates_cold"]
    assert [r["method"] for r in record["rows"]] == ["global-mean", "baseline-predictor"]
    for row in record["rows"]:
        assert row["seconds"] > 0 and set(row["metrics"]) == {"overall", "W-W", "W-C", "C-W", "C-C"}
        assert row["users_per_s"] == pytest.approx(400 / row["seconds"]) and row["cpu_seconds"] > 0
    assert "load_average_before_after" in record["environment"]


def test_meta_step_profile_script_splits_each_step(tmp_path):
    mod = _load("profile_meta_step")
    out = tmp_path / "profile.json"
    assert mod.main(["--data", "synthetic", "--threads", "1", "--methods", "tanp,coldnas-final", "--steps", "2",
                     "--warmup", "1", "--profile-steps", "1", "--top-ops", "3", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    tanp, final = record["rows"]
    assert (tanp["method"], final["method"], final["preset"]) == ("tanp", "coldnas", "lastfm-searched")
    for row in (tanp, final):
        assert len(row["meta_step_s"]) == len(row["meta_step_cpu_s"]) == 2 and len(row["top_ops_self_s"]) == 3
        parts = row["per_step_cpu_s"]
        assert parts["backward"] > 0 and parts["optimizer"] > 0 and any(k.startswith("forward:") for k in parts)
        # the split adds up to the step's CPU time
        assert sum(parts.values()) == pytest.approx(row["meta_step_cpu_mean_s"])
        assert row["s_per_epoch"] == pytest.approx(row["meta_step_mean_s"] * row["steps_per_epoch"])
    assert "forward:embed" in tanp["per_step_cpu_s"]
