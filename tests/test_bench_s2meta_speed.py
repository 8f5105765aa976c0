"""The s2Meta speed script runs end to end and records what it measured (not how fast: the
benchmark itself is run by hand, see ``docs/methods/s2meta.md``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_s2meta_speed", REPO / "benchmarks" / "bench_s2meta_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_s2meta_speed_script_times_both_backends_on_the_same_batches(tmp_path):
    out = tmp_path / "s2meta.json"
    rc = _script().main([
        "--data", "synthetic", "--threads", "1", "--set", "embedding_dim=4", "--set", "side_width=8",
        "--set", "hidden=[8,4]", "--set", "lstm_hidden=8", "--set", "max_steps=4", "--set", "min_steps=1",
        "--set", "compile_controller=false", "--max-users", "12", "--reference-every", "3",
        "--eval-users", "16", "--reference-eval-users", "8", "--out", str(out),
    ])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["users_timed"] == {"fused": 12, "reference": 4} and r["reference_batches"] == [0, 3, 6, 9]
    assert len(r["batch_s"]["fused"]) == 12 and len(r["batch_s"]["reference"]) == 4
    assert r["reference_extrapolated"] and not r["complete"]
    # the ratio is taken on exactly the batches both backends ran, from the same state
    fused_same = sum(r["batch_s"]["fused"][i] for i in r["reference_batches"])
    assert r["same_batches_s"]["fused"] == pytest.approx(fused_same)
    assert r["ratio_same_batches"] == pytest.approx(sum(r["batch_s"]["reference"]) / fused_same)
    assert r["batch_loss_difference_vs_reference"]["largest"] < 1e-3
    ev = r["eval"]
    assert ev["test_users"] == 16 and ev["reference_users"] == 8 and ev["eval_stop_rule"] == "sample"
    assert sum(ev["inner_steps"]["eval"]["histogram"]) == 16
    assert r["matmul_floor"]["inner_step_s"] > 0 and r["peak_rss_mb"] > 0
    assert r["cpu_s"]["fused"] > r["cpu_s"]["fused_same_batches"] > 0 and r["cpu_s"]["ratio_same_batches"] > 0
    nk = r["native_kernels"]
    assert nk["used"] == nk["built"]  # CPU, float32, lstm_hidden 8: the native kernel runs wherever it builds
    assert r["controller_step_s"]["pytorch_kernels"] > 0
    if nk["used"]:
        assert len(r["batch_s"]["fused_pytorch_kernels"]) == 4 and r["controller_step_s"]["native"] > 0
        assert r["ratio_pytorch_kernels_over_native"] == pytest.approx(
            sum(r["batch_s"]["fused_pytorch_kernels"]) / fused_same)
        assert r["batch_loss_difference_pytorch_kernels_vs_native"] < 1e-4
    env = r["environment"]
    assert env["torch_threads"] == 1 and "load_average_before_after" in env


def test_s2meta_speed_script_rejects_a_bad_reference_period(tmp_path):
    with pytest.raises(SystemExit):
        _script().main(["--data", "synthetic", "--reference-every", "0", "--out", str(tmp_path / "x.json")])


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SMALL_SETS = ["--set", "embedding_dim=4", "--set", "side_width=8", "--set", "hidden=[8,4]", "--set", "lstm_hidden=8",
              "--set", "max_steps=4", "--set", "min_steps=1"]


def test_s2meta_floor_script_records_the_floor_and_both_backends_on_the_same_users(tmp_path):
    from metarec import native

    if not native.load("coordinate_lstm_cpu"):
        pytest.skip("the native kernel does not build here; the floor script needs it")
    out = tmp_path / "floor.json"
    rc = _load("s2meta_floor").main(["--data", "synthetic", "--threads", "1", *SMALL_SETS, "--users", "3", "--skip", "1",
                                     "--forced-steps", "3", "--forced-users", "2", "--repeats", "2", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    nat = r["natural"]
    assert len(r["inner_steps_per_user"]) == 3 and nat["inner_steps"] == pytest.approx(sum(r["inner_steps_per_user"]) / 3)
    # the floor is its parts at the measured step count; the ratios are of the recorded times
    parts = nat["inner_steps"] * (nat["controller_step_s"] + nat["predictor_step_s"]) + nat["query_grad_s"] + nat["adam_s"]
    assert nat["floor_user_s"] == pytest.approx(parts) and nat["floor_epoch_s"] == pytest.approx(parts * r["train_users"])
    assert nat["reference_over_floor"] == pytest.approx(nat["reference_user_s"] / nat["floor_user_s"])
    assert nat["arithmetic_user_s"] > 0 and r["controller_matmul_only_step_s"] > 0
    assert set(r["forced"]) == {"3"} and r["forced"]["3"]["inner_steps"] == 3.0
    assert r["config"]["lstm_hidden"] == 8 and r["environment"]["torch_threads"] == 1


def test_s2meta_breakdown_script_splits_a_meta_step_into_phases_with_operator_counts(tmp_path):
    out = tmp_path / "breakdown.json"
    rc = _load("s2meta_breakdown").main(["--data", "synthetic", "--threads", "1", *SMALL_SETS, "--users", "3",
                                         "--skip", "1", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    phases = r["phase_ms_per_user"]
    assert {"controller_forward", "controller_backward", "predictor_grads", "embedders", "clip_adam"} <= set(phases)
    # exclusive phase times add up to (at most) the meta-steps' wall time; every phase dispatched operators
    assert r["per_user_ms"]["phases_sum"] <= r["per_user_ms"]["mean"] * 1.05
    assert r["inner_steps_total"] >= 3 and r["aten_ops_per_inner_step_total"] > 0
    assert all(r["aten_ops_per_user"].get(p, 0) > 0 for p in ("predictor_grads", "embedders", "controller_forward"))
