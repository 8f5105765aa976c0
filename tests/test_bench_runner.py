"""The benchmark harness end to end on synthetic data: files, numbers, failures, resume, jobs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from metarec.bench.config import resolve_config
from metarec.bench.results import read_predictions
from metarec.bench.runner import BenchError, run_bench
from metarec.learner import Learner
from metarec.registry import register_learner, unregister_learner

REPO = Path(__file__).resolve().parents[1]
SYNTH = {"n_users": 150, "n_items": 120, "seed": 0}


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), stderr=False)


def small_config(**bench) -> object:
    base = {
        "dataset": "synthetic",
        "synthetic": SYNTH,
        "seeds": [0, 1],
        "n_boot": 50,
        "progress": False,
        "threads": 1,
        "epochs": 1,
    }
    base.update(bench)
    return resolve_config({"bench": base})


def recompute(run_dir: Path) -> int:
    spec = importlib.util.spec_from_file_location("recompute_metrics", REPO / "benchmarks" / "recompute_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main([str(run_dir)])


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    cfg = small_config(methods=["global-mean", "baseline-predictor", "profile-mlp"])
    results = run_bench(cfg, out=out, console=quiet(), command=["metarec", "bench"])
    return out, results


def test_files_and_structure(bench_run):
    out, results = bench_run
    for name in ("config.json", "results.json", "predictions.csv", "summary.md", "summary.tex"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    assert not (out / "checkpoints").exists(), "finished runs keep no checkpoints by default"
    # strict JSON: no NaN / Infinity tokens
    json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert results["dataset"]["name"] == "synthetic" and results["dataset"]["checksum"].startswith("sha256:")
    assert results["dataset"]["canonical"] is True
    env = results["environment"]
    for run in results["runs"]:
        assert set(run["git"]) == {"commit", "dirty"}  # each run names the code it ran
    for key in ("python", "torch", "numpy", "cpu_model", "git", "device_requested"):
        assert key in env
    assert results["protocol"]["n_support"] == 15
    for run in results["runs"]:
        assert run["status"] == "ok"
        assert run["timings"]["fit_s"] >= 0 and run["timings"]["predict_s"] >= 0
        assert run["memory"]["peak_rss_mb"] > 0
        assert run["device"] == "cpu"


def test_numbers_match_the_predictions(bench_run):
    out, results = bench_run
    from metarec import metrics as M

    preds = read_predictions(out / "predictions.csv")
    for run in results["runs"]:
        sel = (preds["method"] == run["method"]) & (preds["seed"] == run["seed"])
        p, t = preds["prediction"][sel], preds["rating"][sel]
        assert run["metrics"]["overall"]["n"] == sel.sum()
        cc = preds["scenario"][sel] == "C-C"
        if cc.any():
            assert run["metrics"]["C-C"]["mae"] == pytest.approx(M.mae(p[cc], t[cc]), abs=1e-12)
        # the interval is a real interval around the estimate's neighbourhood
        lo, hi = run["ci"]["overall"]["mae"]
        assert lo <= hi
    # aggregate = mean / sample std over seeds
    agg = results["methods"]["baseline-predictor"]["cells"]["W-W"]["mae"]
    assert agg["mean"] == pytest.approx(np.mean(agg["values"]))
    assert agg["std"] == pytest.approx(np.std(agg["values"], ddof=1))
    assert agg["ci"][0] <= agg["ci"][1]
    # the independent recomputation agrees
    assert recompute(out) == 0


def test_global_mean_is_constant_and_test_order_kept(bench_run):
    out, _ = bench_run
    preds = read_predictions(out / "predictions.csv")
    for seed in (0, 1):
        sel = (preds["method"] == "global-mean") & (preds["seed"] == seed)
        assert np.unique(preds["prediction"][sel]).size == 1
        users = preds["user_id"][sel]
        # rows of a user are consecutive and users appear in the test TaskSet's order
        _, first = np.unique(users, return_index=True)
        assert (np.diff(np.sort(first)) == 5).all()
    # different seeds = different test users
    u0 = set(preds["user_id"][(preds["method"] == "global-mean") & (preds["seed"] == 0)])
    u1 = set(preds["user_id"][(preds["method"] == "global-mean") & (preds["seed"] == 1)])
    assert u0 != u1


def test_paired_tests(bench_run):
    _, results = bench_run
    tests = results["paired_tests"]
    pairs = {(t["a"], t["b"]) for t in tests}
    assert pairs == {("global-mean", "baseline-predictor"), ("global-mean", "profile-mlp"),
                     ("baseline-predictor", "profile-mlp")}
    t = next(t for t in tests if t["cell"] == "overall" and t["metric"] == "mae" and t["b"] == "baseline-predictor")
    assert t["per_seed"]["n"] == 2
    assert t["per_user"]["n"] == sum(results["methods"]["global-mean"]["cells"]["overall"]["n_users_per_seed"])
    # the bias baseline beats the global mean on planted user biases, visibly so per user
    assert t["per_user"]["mean_diff"] > 0 and t["per_user"]["p"] < 0.05
    # per user: one test per seed, combined -- not the seeds' users pooled as independent
    assert t["per_user"]["n_strata"] == 2 and len(t["per_user"]["per_stratum"]) == 2
    # unique users: a user who is a test user in both seeds is one unit (differences averaged)
    preds = read_predictions(bench_run[0] / "predictions.csv")
    gm = preds["method"] == "global-mean"
    users = set(preds["user_id"][gm])
    u = t["per_unique_user"]
    assert u["n"] == len(users) < u["n_pairs"] == t["per_user"]["n"]
    assert u["mean_diff"] > 0 and u["p"] < 0.05 and u["p_holm"] >= u["p"]
    # Holm within the family: adjusted >= raw, and the smallest raw p is multiplied by the family size
    raw = [x["per_user"]["p"] for x in tests if "p" in x.get("per_user", {})]
    for x in tests:
        if "p" in x.get("per_user", {}):
            assert x["per_user"]["p_holm"] >= x["per_user"]["p"]
    smallest = min(range(len(raw)), key=raw.__getitem__)
    adjusted = [x["per_user"]["p_holm"] for x in tests if "p" in x.get("per_user", {})]
    assert adjusted[smallest] == pytest.approx(min(1.0, len(raw) * raw[smallest]))
    # every method against the best simple baseline (lowest overall MAE): its own family
    vs = results["baseline_tests"]
    best = min(("global-mean", "baseline-predictor", "profile-mlp"),
               key=lambda m: results["methods"][m]["cells"]["overall"]["mae"]["mean"])
    assert vs["baseline"] == best
    assert {(x["a"], x["b"]) for x in vs["tests"]} == {(m, best) for m in results["methods"] if m != best}
    # tested metrics: MAE, RMSE, within-user NDCG everywhere; the clip NDCG per scenario (per seed only)
    cells = {(x["cell"], x["metric"]) for x in tests}
    assert ("overall", "clip_ndcg@3") not in cells and ("C-W", "clip_ndcg@3") in cells
    assert all("per_user" not in x for x in tests if x["metric"] == "clip_ndcg@3")


def _legacy_copy(src: Path, dst: Path, keep_runs: bool) -> None:
    """``src`` as an older metarec left it: format 1 files with different (stale) numbers."""
    import gzip
    import shutil

    shutil.copytree(src, dst)
    res = json.loads((dst / "results.json").read_text())
    res["format"] = "metarec-bench-results-1"
    for r in res["runs"]:
        r["format"] = "metarec-bench-run-1"
        r["metrics"]["overall"]["ndcg@3"] = 0.123
        for c in r["metrics"].values():
            c.pop("rmse", None)
    res.pop("baseline_tests")
    (dst / "results.json").write_text(json.dumps(res))
    if keep_runs:
        for r in res["runs"]:
            (dst / "runs" / f"{r['method']}__seed{r['seed']}.json").write_text(json.dumps(r))
    else:  # a committed folder: only the aggregated, compressed predictions
        shutil.rmtree(dst / "runs")
        with gzip.open(dst / "predictions.csv.gz", "wt", encoding="utf-8") as fh:
            fh.write((dst / "predictions.csv").read_text())
        (dst / "predictions.csv").unlink()


def test_report_rebuild_recomputes_an_older_folder_from_its_predictions(bench_run, tmp_path):
    from metarec.cli import main

    out, results = bench_run
    old = tmp_path / "old"
    _legacy_copy(out, old, keep_runs=False)
    # an older folder is refused with the command that fixes it, not misread
    res = CliRunner().invoke(main, ["report", str(old)])
    assert res.exit_code != 0 and "metarec report --rebuild" in res.output
    res = CliRunner().invoke(main, ["report", "--rebuild", str(old)])
    assert res.exit_code == 0, res.output
    new = json.loads((old / "results.json").read_text())
    written = json.loads((out / "results.json").read_text())  # what the uninterrupted bench wrote
    assert new["format"] == "metarec-bench-results-2" and new["rebuilt"]["from_format"] == "metarec-bench-results-1"
    for key in ("methods", "paired_tests", "baseline_tests", "metrics_info"):
        assert new[key] == written[key], key
    assert [r["metrics"] for r in new["runs"]] == [r["metrics"] for r in written["runs"]]
    assert new["command"] == results["command"] and new["environment"] == results["environment"]
    assert recompute(old) == 0
    assert (old / "summary.md").read_text() == (out / "summary.md").read_text()  # the same tables, re-rendered
    # --against picks the comparator of the baseline family
    res = CliRunner().invoke(main, ["report", "--rebuild", "--against", "profile-mlp", str(old)])
    assert res.exit_code == 0, res.output
    vs = json.loads((old / "results.json").read_text())["baseline_tests"]
    assert vs["baseline"] == "profile-mlp" and {t["b"] for t in vs["tests"]} == {"profile-mlp"}
    res = CliRunner().invoke(main, ["report", "--rebuild", "--against", "nope", str(old)])
    assert res.exit_code != 0 and "'nope' has no successful runs" in res.output
    res = CliRunner().invoke(main, ["report", "--against", "profile-mlp", str(old)])
    assert res.exit_code != 0 and "--against needs --rebuild" in res.output


def test_resume_rescores_older_run_files_instead_of_mixing_definitions(bench_run, tmp_path):
    from metarec.bench.results import RunDir, build_results

    out, results = bench_run
    old = tmp_path / "old"
    _legacy_copy(out, old, keep_runs=True)
    rd = RunDir(old)
    written = json.loads((out / "results.json").read_text())
    build_results(rd, results["config"], environment=results["environment"], dataset=results["dataset"])
    again = json.loads((old / "results.json").read_text())
    assert again["methods"] == written["methods"]
    for r in again["runs"]:
        on_disk = json.loads(rd.run_json(r["method"], r["seed"]).read_text())
        assert on_disk["format"] == "metarec-bench-run-2" and on_disk["rescored_from"] == "metarec-bench-run-1"
        assert "rmse" in on_disk["metrics"]["overall"]


def test_output_dir_in_use_is_refused(bench_run):
    out, _ = bench_run
    with pytest.raises(BenchError, match="--resume"):
        run_bench(small_config(methods=["global-mean"]), out=out, console=quiet())


def test_resume_refuses_changed_settings(bench_run, tmp_path):
    out, _ = bench_run
    cfg = small_config(methods=["global-mean", "baseline-predictor", "profile-mlp"], clip_size=4)
    with pytest.raises(BenchError, match="clip_size"):
        run_bench(cfg, out=out, resume=True, console=quiet())


def test_unknown_method_and_bad_settings_fail_before_running(tmp_path):
    with pytest.raises(BenchError, match="Did you mean 'global-mean'"):
        run_bench(small_config(methods=["global-maen"]), out=tmp_path / "a", console=quiet())
    cfg = resolve_config({"bench": {"dataset": "synthetic", "methods": ["profile-mlp"]},
                          "methods": {"profile-mlp": {"lrr": 1.0}}})
    with pytest.raises(BenchError, match="lrr"):
        run_bench(cfg, out=tmp_path / "b", console=quiet())
    assert not (tmp_path / "b").exists()
    cfg = resolve_config({"bench": {"dataset": "synthetic", "methods": ["profile-mlp"]},
                          "methods": {"profile-mpl": {"lr": 1.0}}})
    with pytest.raises(BenchError, match="did you mean 'profile-mlp'"):
        run_bench(cfg, out=tmp_path / "c", console=quiet())


class Exploding(Learner):
    """A plugin whose training raises: its failure must be recorded, not spread."""

    name = "exploding"

    def meta_fit(self, train, *, callbacks=(), validation=None):
        raise RuntimeError("boom in meta_fit")

    def adapt_and_predict(self, batch):  # pragma: no cover - never reached
        return torch.zeros_like(batch.query_ratings)


def test_failing_and_unimportable_plugins_do_not_lose_other_results(tmp_path, monkeypatch):
    import metarec.registry as registry

    broken = metadata.EntryPoint("broken-plugin", "no_such_package_xyz.module:Learner", registry.ENTRY_POINT_GROUP)
    real = registry._entry_points
    monkeypatch.setattr(registry, "_entry_points", lambda: [*real(), broken])
    register_learner("exploding")(Exploding)
    try:
        cfg = small_config(methods=["exploding", "global-mean", "broken-plugin", "baseline-predictor"])
        results = run_bench(cfg, out=tmp_path / "run", console=quiet())
    finally:
        unregister_learner("exploding")
    m = results["methods"]
    assert m["global-mean"]["status"] == "ok" and m["baseline-predictor"]["status"] == "ok"
    assert m["exploding"]["status"] == "failed" and m["broken-plugin"]["status"] == "failed"
    assert "boom in meta_fit" in m["exploding"]["errors"][0]["traceback"]
    assert "no_such_package_xyz" in m["broken-plugin"]["errors"][0]["error"]
    assert "ModuleNotFoundError" in m["broken-plugin"]["errors"][0]["traceback"]
    # the successful methods' numbers and predictions are all there, the failed ones' are not
    preds = read_predictions(tmp_path / "run" / "predictions.csv")
    assert set(preds["method"]) == {"global-mean", "baseline-predictor"}
    assert len(results["paired_tests"]) == 19  # the two successful methods, 5 cells x 4 metrics, no overall clip NDCG
    assert "Failures" in (tmp_path / "run" / "summary.md").read_text()
    assert recompute(tmp_path / "run") == 0


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "metarec.cli", "bench", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _numbers(results: dict) -> dict:
    """Everything in results.json that must not depend on interruptions or timing."""
    return {
        "methods": {m: {k: v for k, v in e.items()} for m, e in results["methods"].items()},
        "paired_tests": results["paired_tests"],
        "runs": [{k: r[k] for k in ("method", "seed", "status", "metrics", "ci", "learner_config")}
                 for r in results["runs"]],
    }


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real SIGKILL mid-training; --resume redoes only the unfinished work, same numbers."""
    args = ["--dataset", "synthetic", "--methods", "global-mean,profile-mlp", "--seeds", "0,1",
            "--epochs", "6", "--n-boot", "50", "--threads", "1", "--no-progress",
            "--set", "synthetic.n_users=300", "--set", "profile-mlp.batch_size=8"]
    out = tmp_path / "killed"
    proc = _cli(*args, "--out", str(out))
    pointer = out / "checkpoints" / "profile-mlp__seed0" / "latest.json"
    deadline = time.time() + 600  # generous: a loaded shared machine starts the worker slowly
    while not pointer.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "runs" / "global-mean__seed0.json").exists()
    assert not (out / "runs" / "profile-mlp__seed0.json").exists()
    assert not (out / "results.json").exists()

    resumed = _cli("--resume", "--out", str(out))
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log
    assert "1 finished run(s) kept" in " ".join(log.split())
    # the uninterrupted reference, in worker processes (--jobs 2) for good measure
    cfg = resolve_config({"bench": {"dataset": "synthetic", "methods": ["global-mean", "profile-mlp"],
                                    "seeds": [0, 1], "epochs": 6, "n_boot": 50, "threads": 1, "progress": False,
                                    "synthetic": {"n_users": 300}, "jobs": 2},
                          "methods": {"profile-mlp": {"batch_size": 8}}})
    run_bench(cfg, out=tmp_path / "ref", console=quiet())

    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert b["environment"]["jobs"] == 2
    run = next(r for r in a["runs"] if r["method"] == "profile-mlp" and r["seed"] == 0)
    assert run["resumed_from_epoch"] >= 1 and run["epochs_done"] == 6
    assert _numbers(a) == _numbers(b)
    assert (out / "predictions.csv").read_text() == (tmp_path / "ref" / "predictions.csv").read_text()
    assert recompute(out) == 0


def test_cli_bench_and_report(tmp_path):
    from metarec.cli import main

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(main, ["bench", "--dataset", "synthetic", "--methods", "global-mean,baseline-predictor",
                               "--seeds", "0-1", "--n-boot", "20", "--out", str(out), "--no-progress",
                               "--set", "synthetic.n_users=120", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "baseline-predictor" in res.output and "C-C" in res.output
    (out / "summary.md").unlink()
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "summary.md").exists()  # re-rendered from results.json
    res = runner.invoke(main, ["report", str(out), "--reference"])
    assert res.exit_code != 0 and "covers: ml-1m, book-crossing" in res.output
    res = runner.invoke(main, ["report", str(out), str(out), "--label", "a", "--label", "b", "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "a: global-mean" in md and "b: baseline-predictor" in md
    res = runner.invoke(main, ["bench", "--dataset", "synthetic", "--methods", "global-mean", "--seeds", "x"])
    assert res.exit_code != 0 and "cannot read seed" in res.output


@pytest.mark.data
def test_ml1m_simple_baselines_end_to_end(shared_data_dir, tmp_path):
    """The acceptance run in small: real ML-1M, one seed; predictions.csv reproduces every number."""
    cfg = resolve_config({"bench": {"dataset": "ml-1m", "data_dir": str(shared_data_dir), "seeds": [0],
                                    "methods": ["global-mean", "baseline-predictor"], "n_boot": 50,
                                    "progress": False, "threads": 1}})
    results = run_bench(cfg, out=tmp_path / "ml", console=quiet())
    assert results["dataset"]["name"] == "ml-1m"
    assert results["dataset"]["canonical"] is False  # the shared ratings.dat is a reconstruction
    assert results["dataset"]["checksum"]
    cells = results["methods"]["baseline-predictor"]["cells"]
    assert cells["overall"]["n"] == 5 * cells["overall"]["n_users_per_seed"][0]
    assert 0 < cells["C-C"]["n"] < 100  # the cold/cold cell is tiny: hence its interval
    assert cells["overall"]["mae"]["mean"] < results["methods"]["global-mean"]["cells"]["overall"]["mae"]["mean"]
    assert recompute(tmp_path / "ml") == 0


def test_recompute_reads_gzipped_predictions(bench_run, tmp_path):
    """Committed results keep predictions as predictions.csv.gz; the check must read them too."""
    import gzip
    import shutil

    out, _ = bench_run
    copy = tmp_path / "committed"
    shutil.copytree(out, copy)
    with open(copy / "predictions.csv", "rb") as src, gzip.open(copy / "predictions.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (copy / "predictions.csv").unlink()
    assert recompute(copy) == 0
    # and it still catches a wrong number
    results = json.loads((copy / "results.json").read_text())
    results["methods"]["global-mean"]["cells"]["W-W"]["mae"]["mean"] += 0.01
    (copy / "results.json").write_text(json.dumps(results))
    assert recompute(copy) != 0


def test_resume_extends_a_finished_benchmark_with_seeds_and_methods(tmp_path):
    """More seeds (or methods) on --resume run only the new runs; the finished ones are kept as they are."""
    out = tmp_path / "run"
    run_bench(small_config(methods=["global-mean"], seeds=[0]), out=out, console=quiet())
    first = (out / "runs").glob("*.json")
    before = {p.name: p.read_bytes() for p in first}
    results = run_bench(small_config(methods=["global-mean", "baseline-predictor"], seeds=[1]), out=out,
                        resume=True, console=quiet())
    runs = {(r["method"], r["seed"]) for r in results["runs"]}
    assert runs == {("global-mean", 0), ("global-mean", 1), ("baseline-predictor", 0), ("baseline-predictor", 1)}
    assert all((out / "runs" / name).read_bytes() == data for name, data in before.items())
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["seeds"] == [0, 1] and saved["methods"] == ["global-mean", "baseline-predictor"]
    assert recompute(out) == 0
    # a method already in the folder cannot change its settings on the way
    changed = resolve_config({"bench": {**small_config().to_dict(), "methods": ["baseline-predictor"], "seeds": [0, 1]},
                              "methods": {"baseline-predictor": {"user_reg": 3.0}}})
    with pytest.raises(BenchError, match="settings of baseline-predictor"):
        run_bench(changed, out=out, resume=True, console=quiet())


def test_report_retest_adds_the_tests_of_this_metarec_and_keeps_every_metric(bench_run, tmp_path):
    import shutil

    from metarec.cli import main

    out, _ = bench_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    shutil.rmtree(old / "runs")  # a committed folder: aggregated predictions only
    res = json.loads((old / "results.json").read_text())
    for fam in (res["paired_tests"], res["baseline_tests"]["tests"]):
        for t in fam:
            t.pop("per_unique_user", None)  # as written before the unique-user test existed
    (old / "results.json").write_text(json.dumps(res))
    r = CliRunner().invoke(main, ["report", "--retest", str(old)])
    assert r.exit_code == 0, r.output
    new = json.loads((old / "results.json").read_text())
    written = json.loads((out / "results.json").read_text())
    for key in ("methods", "paired_tests", "baseline_tests", "runs", "metrics_info"):
        assert new[key] == written[key], key
    assert new["retested"]["how"].startswith("metarec report --retest")
    assert (old / "summary.md").read_text() == (out / "summary.md").read_text()
    assert recompute(old) == 0
    r = CliRunner().invoke(main, ["report", "--retest", "--rebuild", str(old)])
    assert r.exit_code != 0 and "not both" in r.output
