"""Split-cache entries are verified on load: damaged or tampered entries are logged misses, rebuilt."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from datafiles import write_ml1m


def bench(tmp_path: Path, out: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "METAREC_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "metarec.cli", "bench", "--dataset", "ml-1m", "--data-dir",
                           str(tmp_path / "data"), "--methods", "global-mean", "--seeds", "0", "--n-boot", "20",
                           "--threads", "1", "--no-progress", "--out", str(tmp_path / out)],
                          capture_output=True, text=True, env=env, timeout=600)


def metrics(run: Path) -> dict:
    return json.loads((run / "runs" / "global-mean__seed0.json").read_text())["metrics"]


def test_damaged_and_tampered_entries_are_rebuilt(tmp_path):
    write_ml1m(tmp_path / "data" / "ml-1m", n_users=60)
    first = bench(tmp_path, "a")
    assert first.returncode == 0, first.stderr
    (entry,) = (tmp_path / "cache" / "ml-1m").glob("split-*.json")
    npz = next(entry.parent.glob(entry.stem + ".*.npz"))
    hit = bench(tmp_path, "hit")
    assert hit.returncode == 0 and "ignoring damaged entry" not in hit.stderr
    assert json.loads((tmp_path / "hit" / "runs" / "global-mean__seed0.json").read_text())["split"]["cache"]["hit"]

    # tampered but a valid .npz under the same name: every rating set to 5
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in arrays.items():
        if v.dtype.kind == "f":
            arrays[k] = np.full_like(v, 5.0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    tampered = bench(tmp_path, "b")
    assert tampered.returncode == 0, tampered.stderr
    assert "ignoring damaged entry" in tampered.stderr and str(npz) in tampered.stderr
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")

    # truncated
    npz = next(entry.parent.glob(entry.stem + ".*.npz"))
    npz.write_bytes(npz.read_bytes()[:200])
    truncated = bench(tmp_path, "c")
    assert truncated.returncode == 0, truncated.stderr
    assert "ignoring damaged entry" in truncated.stderr
    assert metrics(tmp_path / "c") == metrics(tmp_path / "a")
    again = bench(tmp_path, "d")  # rebuilt: a clean hit again
    assert "ignoring damaged entry" not in again.stderr


def test_cache_command_lists_and_prunes(tmp_path, monkeypatch):
    from metarec.commands.datasets import datasets
    from metarec.data import load_split

    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    write_ml1m(tmp_path / "data" / "ml-1m", n_users=60)
    for seed in (0, 1):
        load_split("ml-1m", data_dir=tmp_path / "data", seed=seed)
    listing = CliRunner().invoke(datasets, ["cache"])
    assert listing.exit_code == 0, listing.output
    assert "2 entries" in listing.output and str(tmp_path / "cache") in " ".join(listing.output.split())
    entries = sorted((tmp_path / "cache" / "ml-1m").glob("split-*.json"))
    old = time.time() - 10 * 86400
    os.utime(entries[0], (old, old))
    dry = CliRunner().invoke(datasets, ["cache", "--older-than", "7d", "--dry-run"])
    assert "1 entries" in dry.output and entries[0].exists()
    pruned = CliRunner().invoke(datasets, ["cache", "--older-than", "7d"])
    assert pruned.exit_code == 0 and "1 entries removed" in pruned.output and "1 left" in pruned.output
    assert not entries[0].exists() and not list(entries[0].parent.glob(entries[0].stem + ".*.npz"))
    assert entries[1].exists()
    everything = CliRunner().invoke(datasets, ["cache", "--all"])
    assert "1 entries removed" in everything.output and "0 left" in everything.output
    bad = CliRunner().invoke(datasets, ["cache", "--older-than", "soon"])  # main prints it as one line
    assert bad.exit_code != 0 and "--older-than 'soon'" in str(bad.exception)
