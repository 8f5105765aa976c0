"""What the speed scripts in ``benchmarks/`` share: their machine and data options, a timer
that waits for the GPU, and where their JSON records go.

Each script keeps only what it measures; the options, their checks and the record's machine
description (:func:`~metarec.bench.environment.timing_environment`) are the same for all, so
their results are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from metarec.bench.environment import REPO_ROOT, timing_environment

T = TypeVar("T")

#: Where the speed scripts write their records unless told otherwise.
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def add_machine_options(parser: argparse.ArgumentParser, *, threads: int) -> None:
    """``--device``, ``--threads``, ``--data`` and ``--data-dir``, as every speed script takes them."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=threads, help="torch intra-op threads on the CPU")
    parser.add_argument("--data", choices=["ml-1m", "synthetic"], default=None,
                        help="default: ml-1m when --data-dir is given, else synthetic")
    parser.add_argument("--data-dir", default=None, help="folder holding ml-1m/ (e.g. ../shared/data)")


def machine_from_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Check the options of :func:`add_machine_options`, set the thread count, return the device.

    Fills in ``args.data``; a wrong combination exits through ``parser.error`` with a message
    that says what to pass.
    """
    args.data = args.data or ("ml-1m" if args.data_dir else "synthetic")
    if args.data == "ml-1m" and not args.data_dir:
        parser.error("--data ml-1m needs --data-dir (the folder holding ml-1m/)")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch")
    return device


def load_timing_split(args: argparse.Namespace, *, synthetic_users: int, synthetic_items: int, seed: int = 0):
    """The split a speed script times on: ML-1M under the paper's protocol, or synthetic data."""
    if args.data == "ml-1m":
        from metarec.data import load_split

        return load_split("ml-1m", data_dir=args.data_dir, seed=seed)
    from metarec.data.protocol import build_split
    from metarec.data.synthetic import make_synthetic

    return build_split(make_synthetic(n_users=synthetic_users, n_items=synthetic_items, seed=seed), seed=seed)


def timed(device: torch.device, fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds; on CUDA the queued work is waited for on both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t0


def default_record_path(prefix: str) -> Path:
    """``benchmarks/results/<prefix>_<UTC time>.json``."""
    return RESULTS_DIR / f"{prefix}_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"


def write_record(record: dict[str, Any], out: str | Path | None, *, device: torch.device, prefix: str | None = None,
                 load_before: tuple[float, float, float], extra_environment: dict[str, Any] | None = None) -> Path:
    """Add the machine (and the load average before and after) to ``record`` and write it as JSON.

    ``out`` None: :func:`default_record_path` of ``prefix``. Writing the same path again replaces
    the file, so a script may write its record after every measurement and keep what it had
    when it is stopped.
    """
    if not out and not prefix:
        raise ValueError("write_record needs an output path or a prefix for the default one")
    record = {**record, "environment": {
        **timing_environment(device),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        **(extra_environment or {}),
    }}
    path = Path(out) if out else default_record_path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


__all__ = ["RESULTS_DIR", "add_machine_options", "default_record_path", "load_timing_split", "machine_from_options", "timed", "write_record"]
