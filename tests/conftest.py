"""Shared test fixtures.

Tests run torch on one thread: on a 2-core machine shared with other processes, torch's
default intra-op threads spin against each other and slow small ops down by 10-50x.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAREC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def native_kernel_cache(tmp_path_factory):
    """Compile :mod:`metarec.native`'s kernels once per test session into a temporary directory
    (not the user's cache), unless ``METAREC_NATIVE_CACHE`` is set already (to reuse a build)."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("METAREC_NATIVE_CACHE"):
            mp.setenv("METAREC_NATIVE_CACHE", str(tmp_path_factory.mktemp("native-cache")))
        yield Path(os.environ["METAREC_NATIVE_CACHE"])


@pytest.fixture(scope="session")
def synthetic_data():
    from metarec.data.synthetic import make_synthetic

    return make_synthetic(n_users=300, n_items=200, seed=0)


@pytest.fixture(scope="session")
def synthetic_split(synthetic_data):
    from metarec.data.protocol import build_split

    return build_split(synthetic_data, seed=0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not (SHARED_DATA / "ml-1m" / "ratings.dat").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
