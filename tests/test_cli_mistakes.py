"""Every user mistake the harness audit listed, as a real subprocess: ONE line on stderr, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from datafiles import write_ml1m

SYN = ["--dataset", "synthetic", "--set", "synthetic.n_users=150", "--seeds", "0", "--no-progress", "--threads", "1"]


def _ml(tmp: Path, name: str, damage) -> str:
    """A tiny ML-1M folder with one file damaged by ``damage(directory)``; returns the data dir."""
    root = tmp / name
    fx = write_ml1m(root / "ml-1m", n_users=40)
    if damage is not None:
        damage(fx.directory)
    return str(root)


def _replace_timestamp(value: str):
    def damage(d: Path) -> None:
        lines = (d / "ratings.dat").read_text("latin-1").splitlines()
        u, m, r, _ = lines[4].split("::")
        lines[4] = "::".join([u, m, r, value])
        (d / "ratings.dat").write_text("\n".join(lines) + "\n", "latin-1")
    return damage


def _bad_line(d: Path) -> None:
    lines = (d / "ratings.dat").read_text("latin-1").splitlines()
    lines[7] = lines[7].replace("::", ":", 1)
    (d / "ratings.dat").write_text("\n".join(lines) + "\n", "latin-1")


def _empty(name: str):
    return lambda d: (d / name).write_bytes(b"")


def mistakes(tmp: Path) -> dict[str, list[str]]:
    """name -> argv after ``metarec``; every one must be refused in one line."""
    drop_cfg = tmp / "drop.toml"
    drop_cfg.write_text('[loader]\nunknown_users = "drop"\n')
    ml = lambda name, dmg: ["--dataset", "ml-1m", "--data-dir", _ml(tmp, name, dmg)]  # noqa: E731
    bench = ["bench", "--out", str(tmp / "never"), "--no-progress", "--threads", "1", "--seeds", "0"]
    cases = {
        "unknown dataset": ["bench", "--dataset", "ml1m"],
        "unknown method": ["bench", *SYN, "--methods", "global-maen"],
        "unknown preset": ["bench", *SYN, "--methods", "global-mean", "--preset", "global-mean=defualt"],
        "unknown bench key": ["bench", *SYN, "--set", "jobz=2"],
        "unknown method key": ["bench", *SYN, "--methods", "global-mean", "--set", "global-mean.learning=1"],
        "set for unselected method": ["bench", *SYN, "--methods", "global-mean", "--set", "mamo.epochs=1"],
        "threads 1e20": ["bench", *SYN, "--threads", "1e20"],
        "threads 100000": ["bench", *SYN, "--threads", "100000"],
        "jobs 0": ["bench", *SYN, "--jobs", "0"],
        "n-boot 1e9": ["bench", *SYN, "--n-boot", "1000000000"],
        "clip-size 1e20": ["bench", *SYN, "--clip-size", "1e20"],
        "clip-size huge": ["bench", *SYN, "--clip-size", "100000000000"],
        "seeds 1e20": ["bench", "--dataset", "synthetic", "--seeds", "1e20"],
        "seeds huge range": ["bench", "--dataset", "synthetic", "--seeds", "0-100000000000"],
        "seed too large": ["bench", "--dataset", "synthetic", "--seeds", "99999999999999"],
        "epochs negative": ["bench", *SYN, "--epochs", "-1"],
        "epochs huge": ["bench", *SYN, "--epochs", "10000000"],
        "ci_level 1.5": ["bench", *SYN, "--set", "ci_level=1.5"],
        "lr nan": ["bench", *SYN, "--methods", "profile-mlp", "--set", "profile-mlp.lr=nan"],
        "lr inf": ["bench", *SYN, "--methods", "profile-mlp", "--set", "profile-mlp.lr=inf"],
        "lr 1e30": ["bench", *SYN, "--methods", "profile-mlp", "--set", "profile-mlp.lr=1e30"],
        "protocol ratings_per_user=100000": ["bench", *SYN, "--set", "protocol.ratings_per_user=100000"],
        "device cuda without CUDA": ["bench", *SYN, "--device", "cuda"],
        "missing config file": ["bench", *SYN, "--config", str(tmp / "nope.toml")],
        "bad backend": ["bench", *SYN, "--methods", "mamo", "--backend", "bogus"],
        "resume a folder that is no bench": ["bench", "--resume", "--out", str(tmp)],
        "drop-failed without resume": ["bench", *SYN, "--drop-failed", "--out", str(tmp / "x")],
        "missing data dir": [*bench, "--dataset", "ml-1m", "--data-dir", str(tmp / "no-such-dir")],
        "malformed ratings line": [*bench, *ml("bad-line", _bad_line)],
        "empty movies.dat": [*bench, *ml("empty-movies", _empty("movies.dat"))],
        "empty ratings.dat": [*bench, *ml("empty-ratings", _empty("ratings.dat"))],
        "empty users.dat + drop": [*bench, *ml("empty-users", _empty("users.dat")), "--dataset-config", str(drop_cfg)],
        "timestamp cut short": [*bench, *ml("ts-short", _replace_timestamp("97830"))],
        "timestamp 23 digits": [*bench, *ml("ts-long", _replace_timestamp("97830012345678901234567"))],
        "timestamp negative": [*bench, *ml("ts-neg", _replace_timestamp("-978300123"))],
        "info: unknown dataset": ["datasets", "info", "ml1m"],
        "info: missing data dir": ["datasets", "info", "ml-1m", "--data-dir", str(tmp / "no-such-dir")],
        "info: malformed ratings line": ["datasets", "info", "ml-1m", "--no-cache", "--data-dir",
                                         _ml(tmp, "i-bad-line", _bad_line)],
        "info: empty movies.dat": ["datasets", "info", "ml-1m", "--data-dir", _ml(tmp, "i-empty", _empty("movies.dat"))],
        "info: timestamp 23 digits": ["datasets", "info", "ml-1m", "--data-dir",
                                      _ml(tmp, "i-ts", _replace_timestamp("97830012345678901234567"))],
        "info: protocol ratings_per_user=100000": ["datasets", "info", "ml-1m", "--data-dir", _ml(tmp, "i-ok", None),
                                                   "-p", "ratings_per_user=100000"],
        "info: unknown protocol key": ["datasets", "info", "ml-1m", "--data-dir", _ml(tmp, "i-ok2", None),
                                       "-p", "n_suport=3"],
        "download: unknown dataset": ["datasets", "download", "ml1m"],
    }
    return cases


PARTS = 4  # the ~45 subprocesses in four tests, so that parallel test workers share them


@pytest.mark.parametrize("part", range(PARTS))
def test_every_listed_mistake_is_one_line_exit_2(tmp_path, part):
    every = mistakes(tmp_path)
    cases = {name: every[name] for name in sorted(every)[part::PARTS]}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "METAREC_CACHE_DIR": str(tmp_path / "cache"),
           "METAREC_DATA_DIR": str(tmp_path / "no-data-here")}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "metarec.cli", *argv], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)

    results = {name: run(argv) for name, argv in cases.items()}
    bad = {}
    for name, res in results.items():
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        if res.returncode != 2 or len(lines) != 1 or "Traceback" in res.stderr or not lines[0].startswith("metarec"):
            bad[name] = (res.returncode, res.stderr[-2000:])
    print(f"\nmistakes tried: {len(cases)}, one-line errors with exit 2: {len(cases) - len(bad)}")
    assert not bad, bad
    assert not (tmp_path / "never").exists()  # refused before any work: no output folder


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "metarec.cli", "--debug", "bench", "--dataset", "ml1m"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" in res.stderr and "UnknownDatasetError" in res.stderr
