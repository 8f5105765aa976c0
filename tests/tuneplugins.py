"""Learners for the Ray tuning tests: importable by module path in the cluster's workers
(tests/conftest.py puts this folder on the nodes' PYTHONPATH, as a plugin installed on every
node would be)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar


from metarec.methods.simple import BaselinePredictor


class Flaky(BaselinePredictor):
    """Trials that draw ``item_reg`` above 50 raise (a simulated out-of-memory error)."""

    name: ClassVar[str] = "test-ray-flaky"
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "item_reg": {"type": "float", "low": 0.1, "high": 100.0, "log": True},
    }

    def _fit(self, train: Any) -> None:
        if self.config.item_reg > 50:
            raise RuntimeError("CUDA out of memory (simulated)")
        super()._fit(train)


class KillsItsWorkerOnce(BaselinePredictor):
    """The first trial that runs kills its own worker process (``os._exit``); later ones train."""

    name: ClassVar[str] = "test-ray-kills-once"
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "item_reg": {"type": "float", "low": 0.1, "high": 100.0, "log": True},
    }

    def _fit(self, train: Any) -> None:
        mark = Path(os.environ["METAREC_TEST_MARKERS"]) / "killed-once"
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            os._exit(9)
        super()._fit(train)
