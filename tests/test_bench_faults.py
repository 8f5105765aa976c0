"""Fault injection, each in a real ``metarec bench`` subprocess: one bad method never changes another's numbers.

The misbehaving learners (tests/faultplugins.py) are a real installed distribution found
through the ``metarec.learners`` entry points. Every healthy run must equal the same run of a
clean benchmark (metrics, intervals and predictions, byte for byte); every bad run must be
recorded as failed with its cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import faultplugins
from metarec.bench.config import resolve_config
from metarec.bench.runner import run_bench

SYNTH = ["--set", "synthetic.n_users=150", "--set", "synthetic.n_items=120"]
COMMON = ["--dataset", "synthetic", *SYNTH, "--seeds", "0", "--n-boot", "50", "--threads", "1", "--no-progress"]
HEALTHY = ("global-mean", "baseline-predictor")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return faultplugins.install(tmp_path_factory.mktemp("faults") / "site")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """The healthy methods alone (in-process, inline executor)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    cfg = resolve_config({"bench": {"dataset": "synthetic", "synthetic": {"n_users": 150, "n_items": 120},
                                    "seeds": [0], "n_boot": 50, "threads": 1, "progress": False,
                                    "executor": "inline", "methods": list(HEALTHY)}})
    from rich.console import Console

    run_bench(cfg, out=out, console=Console(file=open(os.devnull, "w")))
    return out


def bench(site: Path, *args: str, flaky: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env["METAREC_TEST_FLAKY"] = "1" if flaky else "0"
    return subprocess.run([sys.executable, "-m", "metarec.cli", "bench", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def run_record(out: Path, method: str) -> dict:
    return json.loads((out / "runs" / f"{method}__seed0.json").read_text())


def assert_healthy_identical(out: Path, clean: Path) -> None:
    for m in HEALTHY:
        a, b = run_record(out, m), run_record(clean, m)
        assert a["status"] == "ok"
        assert (a["metrics"], a["ci"]) == (b["metrics"], b["ci"]), m
        name = f"{m}__seed0.predictions.csv"
        assert (out / "runs" / name).read_bytes() == (clean / "runs" / name).read_bytes(), m


def test_mutation_exit_and_inf_with_one_job_then_resume(site, clean, tmp_path):
    out = tmp_path / "run"
    methods = "mutate-data,global-mean,sys-exit,flaky,baseline-predictor,plus-inf"
    res = bench(site, *COMMON, "--methods", methods, "--jobs", "1", "--out", str(out), flaky=True)
    assert res.returncode == 1, res.stderr  # failures reported, the benchmark itself completed
    assert "Traceback" not in res.stderr
    assert_healthy_identical(out, clean)
    mutate = run_record(out, "mutate-data")
    assert mutate["status"] == "failed" and "changed its input data in place" in mutate["error"]
    assert "train.support_ratings" in mutate["error"]
    exited = run_record(out, "sys-exit")
    assert exited["failure"] == {"kind": "sys.exit", "code": 3}
    flaky = run_record(out, "flaky")
    assert flaky["failure"] == {"kind": "exit-code", "exitcode": 7}
    inf = run_record(out, "plus-inf")
    assert "infinite prediction(s) before clipping" in inf["error"]
    # one line per finished run although stderr is not a terminal and --no-progress is given
    for m in methods.split(","):
        assert any(line.startswith(("✓", "✗")) and m in line for line in res.stderr.splitlines()), m

    # --resume re-attempts every failed run: flaky now succeeds, the others fail again
    res = bench(site, "--resume", "--out", str(out), "--no-progress")
    assert res.returncode == 1, res.stderr
    assert "4 failed before, re-attempted" in res.stderr
    assert run_record(out, "flaky")["status"] == "ok"
    assert run_record(out, "sys-exit")["status"] == "failed"
    # --drop-failed completes the folder: the always-failing runs leave the benchmark, listed
    res = bench(site, "--resume", "--drop-failed", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    assert sorted(d["method"] for d in results["dropped_runs"]) == ["mutate-data", "plus-inf", "sys-exit"]
    assert results["methods"]["sys-exit"]["status"] == "dropped"
    assert results["methods"]["flaky"]["status"] == "ok"
    assert (out / "runs" / "dropped" / "sys-exit__seed0.json").exists()
    assert_healthy_identical(out, clean)


def test_dead_workers_are_replaced_with_two_jobs(site, clean, tmp_path):
    out = tmp_path / "run"
    methods = "os-exit,global-mean,segfault,oom-killed,baseline-predictor,minus-inf,nan-prediction"
    res = bench(site, *COMMON, "--methods", methods, "--jobs", "2", "--out", str(out))
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert_healthy_identical(out, clean)
    assert run_record(out, "os-exit")["failure"] == {"kind": "exit-code", "exitcode": 7}
    assert run_record(out, "segfault")["failure"]["signal"] == "SIGSEGV"
    assert run_record(out, "oom-killed")["failure"]["signal"] == "SIGKILL"
    assert "out-of-memory killer" in run_record(out, "oom-killed")["error"]
    assert "1 NaN and 0 infinite" in run_record(out, "nan-prediction")["error"]
    assert "0 NaN and 1 infinite" in run_record(out, "minus-inf")["error"]
    results = json.loads((out / "results.json").read_text())
    dist = results["methods"]["global-mean"]["learner_distribution"]
    assert dist["name"] == "metarec" and dist["version"]
    assert all(r["status"] == "failed" for r in results["runs"] if r["method"] not in HEALTHY)
