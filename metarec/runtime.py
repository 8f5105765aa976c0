"""The one place where seeds and devices are decided.

Every run calls :func:`seed_everything` once with its seed; code that needs randomness takes a
:class:`torch.Generator` or :class:`numpy.random.Generator` derived from that seed (see
:func:`derive_seed`) instead of touching global state.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

from metarec.config import DEVICE_CHOICES  # noqa: F401  (re-exported: the names resolve_device accepts)


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device), and ask for deterministic kernels."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # Needed by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def derive_seed(seed: int, *names: str | int) -> int:
    """A stable sub-seed for one purpose (``derive_seed(0, "split")``), independent of call order."""
    text = ":".join([str(int(seed)), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def torch_generator(seed: int, *names: str | int, device: str | torch.device = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` seeded with ``derive_seed(seed, *names)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *names))
    return g


def numpy_generator(seed: int, *names: str | int) -> np.random.Generator:
    """A :class:`numpy.random.Generator` seeded with ``derive_seed(seed, *names)``."""
    return np.random.default_rng(derive_seed(seed, *names))


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; asking for CUDA without one is an error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = str(spec).lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {spec!r} was requested but torch reports no CUDA device "
                f"(torch {torch.__version__}); use --device cpu or --device auto"
            )
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {spec!r}; use one of: {', '.join(DEVICE_CHOICES)}")
