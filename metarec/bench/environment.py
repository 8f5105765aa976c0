"""What a timing or a result needs next to it: versions, hardware and the code's revision.

Shared by the harness (``results.json``) and every script in ``benchmarks/``, so that all of
them describe the machine the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_info(root: str | Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``root`` (None values outside git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def git_label(root: str | Path = REPO_ROOT) -> str:
    """The commit as one string, ``<sha>+dirty`` when tracked files have uncommitted changes."""
    info = git_info(root)
    if info["commit"] is None:
        return "unknown"
    return info["commit"] + ("+dirty" if info["dirty"] else "")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info(device: str) -> dict[str, Any]:
    """Versions, hardware and code revision: what someone needs to reproduce the numbers."""
    import scipy
    import torch

    import metarec

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "metarec": metarec.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "device_requested": device,
        "cuda_available": torch.cuda.is_available(),
        "git": git_info(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def timing_environment(device: "object") -> dict[str, Any]:
    """What a speed measurement records about its machine: device, CPU, threads, versions, commit, time."""
    from datetime import datetime, timezone

    import torch

    device = torch.device(device)
    return {
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "git_commit": git_label(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
