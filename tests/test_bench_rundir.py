"""The run folder under concurrency and damage, each with real ``metarec bench`` subprocesses.

One bench per folder (a second process is refused, naming the holder); ``--resume`` refuses a
folder whose data changed; damaged run records, a deleted predictions file, a truncated
checkpoint and orphaned temporaries are detected, reported by path and redone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from datafiles import write_ml1m
from metarec.bench.rundir import OutDirLock

COMMON = ["--n-boot", "30", "--threads", "1", "--no-progress"]
SYNTH = ["--dataset", "synthetic", "--set", "synthetic.n_users=150", "--set", "synthetic.n_items=120"]


def env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "METAREC_CACHE_DIR": str(tmp_path / "cache")}


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarec.cli", "bench", *args], capture_output=True, text=True,
                          env=env(tmp_path), timeout=600)


def popen(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "metarec.cli", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(tmp_path))


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_two_benches_started_together_on_one_folder(tmp_path):
    out = tmp_path / "run"
    args = [*SYNTH, "--methods", "global-mean", "--seeds", "0", *COMMON, "--out", str(out)]
    procs = [popen(tmp_path, *args) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refusal = next(err for code, err in results if code == 2)
    assert len(refusal.strip().splitlines()) == 1 and "Traceback" not in refusal
    # either it met the lock (pid and host named) or the finished folder
    assert ("in use by another metarec bench (pid" in refusal and socket.gethostname() in refusal) or \
        "already holds a benchmark" in refusal, refusal
    assert json.loads((out / "runs" / "global-mean__seed0.json").read_text())["status"] == "ok"


def test_a_held_folder_refuses_resume_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    res = bench(tmp_path, *SYNTH, "--methods", "global-mean", "--seeds", "0", *COMMON, "--out", str(out))
    assert res.returncode == 0, res.stderr
    with OutDirLock(out):  # this test process holds it, like a running bench would
        line = one_error_line(bench(tmp_path, "--resume", "--out", str(out), "--no-progress"))
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
    res = bench(tmp_path, "--resume", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr  # released: the resume runs


def test_resume_refuses_changed_data(tmp_path):
    fx = write_ml1m(tmp_path / "data" / "ml-1m", n_users=60)
    out = tmp_path / "run"
    args = ["--dataset", "ml-1m", "--data-dir", str(tmp_path / "data"), "--methods", "global-mean", *COMMON]
    res = bench(tmp_path, *args, "--seeds", "0", "--out", str(out))
    assert res.returncode == 0, res.stderr
    ratings = (fx.directory / "ratings.dat").read_text("latin-1").splitlines()
    u, m, r, t = ratings[0].split("::")
    ratings[0] = "::".join([u, m, str(1 + int(r) % 5), t])
    (fx.directory / "ratings.dat").write_text("\n".join(ratings) + "\n", "latin-1")
    line = one_error_line(bench(tmp_path, *args, "--seeds", "0,1", "--resume", "--out", str(out)))
    assert "the data changed" in line and "global-mean__seed0.json" in line
    assert not (out / "runs" / "global-mean__seed1.json").exists()  # nothing ran on the new data


def test_damaged_record_predictions_and_checkpoint_are_redone(tmp_path):
    out = tmp_path / "run"
    args = [*SYNTH, "--methods", "global-mean,baseline-predictor,profile-mlp", "--seeds", "0", "--epochs", "3",
            "--set", "profile-mlp.batch_size=16", "--set", "keep_checkpoints=true", *COMMON]
    res = bench(tmp_path, *args, "--out", str(out))
    assert res.returncode == 0, res.stderr
    runs = out / "runs"
    before = {m: json.loads((runs / f"{m}__seed0.json").read_text()) for m in ("global-mean", "baseline-predictor",
                                                                                  "profile-mlp")}
    before_preds = (out / "predictions.csv").read_text()
    # damage: a truncated run record, a deleted predictions file, an unfinished run whose newest
    # checkpoint is truncated, an orphaned temporary
    (runs / "global-mean__seed0.json").write_text('{"format": "metarec-bench-run-1", "met')
    (runs / "baseline-predictor__seed0.predictions.csv").unlink()
    (runs / "profile-mlp__seed0.json").unlink()
    (runs / "profile-mlp__seed0.predictions.csv").unlink()
    ckpt = out / "checkpoints" / "profile-mlp__seed0"
    newest = json.loads((ckpt / "latest.json").read_text())["path"]
    assert newest == "epoch-00003" and (ckpt / "epoch-00002").is_dir()
    npz = next((ckpt / newest).glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])
    orphan = runs / ".global-mean__seed0.json.abc123.tmp"
    orphan.write_text("half")

    res = bench(tmp_path, "--resume", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    log = res.stderr
    assert f"damaged run record {runs / 'global-mean__seed0.json'}" in log
    assert f"missing predictions file {runs / 'baseline-predictor__seed0.predictions.csv'}" in log
    assert str(npz.parent) in log and "damaged" in log
    assert f"removed an orphaned temporary file: {orphan}" in log and not orphan.exists()
    assert (runs / "global-mean__seed0.json.damaged").exists()  # set aside, not lost
    after = {m: json.loads((runs / f"{m}__seed0.json").read_text()) for m in before}
    for m in before:
        assert after[m]["metrics"] == before[m]["metrics"], m
    assert after["profile-mlp"]["resumed_from_epoch"] == 2  # the older, good checkpoint
    assert any(str(npz.parent) in n for n in after["profile-mlp"]["notes"])
    assert (out / "predictions.csv").read_text() == before_preds
