"""Learners for the Ray tests (tuning and benchmark faults): importable by module path in the
cluster's workers (tests/conftest.py puts this folder on the nodes' PYTHONPATH, as a plugin
installed on every node would be). They leave and read marks in ``$METAREC_TEST_MARKERS``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, ClassVar

from metarec.methods.simple import BaselinePredictor, GlobalMean


def _marks() -> Path:
    return Path(os.environ["METAREC_TEST_MARKERS"])


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
        mark = _marks() / "killed-once"
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            os._exit(9)
        super()._fit(train)


class Raises(GlobalMean):
    """A method that raises in training (isolated inside its task, recorded as a failed run)."""

    name: ClassVar[str] = "test-ray-raises"

    def meta_fit(self, train: Any, *, callbacks: Any = (), validation: Any = None) -> Any:
        raise RuntimeError("this method always fails (test)")


class SigkillsOnce(GlobalMean):
    """``kill -9`` of its own worker process on its first run; the retry trains like global-mean."""

    name: ClassVar[str] = "test-ray-sigkill-once"

    def meta_fit(self, train: Any, *, callbacks: Any = (), validation: Any = None) -> Any:
        mark = _marks() / "bench-sigkilled-once"
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().meta_fit(train, callbacks=callbacks, validation=validation)


class SigkillsAlways(GlobalMean):
    """``kill -9`` of its own worker process on every attempt (what the out-of-memory killer does)."""

    name: ClassVar[str] = "test-ray-sigkill-always"

    def meta_fit(self, train: Any, *, callbacks: Any = (), validation: Any = None) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)


class Holds(GlobalMean):
    """Keeps its worker busy while the mark ``hold`` exists (a run still going when the driver is
    interrupted); marks ``holding`` when it starts; then trains like global-mean."""

    name: ClassVar[str] = "test-ray-holds"

    def meta_fit(self, train: Any, *, callbacks: Any = (), validation: Any = None) -> Any:
        (_marks() / "holding").write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while (_marks() / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return super().meta_fit(train, callbacks=callbacks, validation=validation)
