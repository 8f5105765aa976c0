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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A real multi-node Ray cluster on this machine, loopback only: Ray's own
    ``ray.cluster_utils.Cluster`` with a head node (no CPUs: it only schedules) and two worker
    nodes of one CPU each, as separate raylet processes; this process is connected to it as a
    driver, exactly as to a remote cluster. Yields ``(cluster, [worker nodes])``; shared by the
    Ray test modules (a test that removes a node adds one back)."""
    # every Ray service on 127.0.0.1, never the host's outward address; read at Ray's import
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'metarec[ray]'")
    from ray.cluster_utils import Cluster

    # what every node's workers get (their raylets start with this environment): the test
    # learners of tests/tuneplugins.py importable, as a plugin installed on every node would be,
    # and a folder where a test learner leaves its marks
    # (kept for the session: a test that replaces a node starts the new one with it too)
    tests_dir = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([tests_dir, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["METAREC_TEST_MARKERS"] = str(tmp_path_factory.mktemp("ray-markers"))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    assert c.address.startswith("127.0.0.1:"), c.address
    yield c, workers
    ray.shutdown()
    c.shutdown()
