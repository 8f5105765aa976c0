"""Learners that misbehave on purpose, installed as a real distribution for the fault tests.

:func:`install` writes the package and a ``.dist-info`` folder (METADATA + entry_points.txt,
what ``pip install --target`` writes) into a site folder; a subprocess with that folder on
``PYTHONPATH`` finds the learners through the ``metarec.learners`` entry-point group like any
third-party plugin.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN_SOURCE = '''
"""Misbehaving learners (metarec fault tests)."""
import ctypes
import os
import signal
import sys

import torch

from metarec.methods.simple import GlobalMean


class MutateData(GlobalMean):
    """Changes its training data in place, then fits (a later method must not see it)."""

    def meta_fit(self, train, *, callbacks=(), validation=None):
        train.support_ratings.fill_(5.0)
        train.query_ratings.mul_(0.0).add_(1.0)
        next(iter(train.users.columns.values())).zero_()
        return super().meta_fit(train, callbacks=callbacks, validation=validation)


class SysExit(GlobalMean):
    def meta_fit(self, train, *, callbacks=(), validation=None):
        sys.exit(3)


class OsExit(GlobalMean):
    def meta_fit(self, train, *, callbacks=(), validation=None):
        os._exit(7)


class Flaky(GlobalMean):
    """Dies like OsExit while METAREC_TEST_FLAKY=1, then behaves like global-mean (for resume)."""

    def meta_fit(self, train, *, callbacks=(), validation=None):
        if os.environ.get("METAREC_TEST_FLAKY") == "1":
            os._exit(7)
        return super().meta_fit(train, callbacks=callbacks, validation=validation)


class Segfault(GlobalMean):
    def meta_fit(self, train, *, callbacks=(), validation=None):
        ctypes.string_at(0)


class KilledLikeOOM(GlobalMean):
    """What the out-of-memory killer does: SIGKILL."""

    def meta_fit(self, train, *, callbacks=(), validation=None):
        os.kill(os.getpid(), signal.SIGKILL)


class PlusInf(GlobalMean):
    def adapt_and_predict(self, batch):
        return torch.full(batch.query_ratings.shape, float("inf"))


class MinusInf(GlobalMean):
    def adapt_and_predict(self, batch):
        out = super().adapt_and_predict(batch)
        out[0, 0] = float("-inf")
        return out


class NanPrediction(GlobalMean):
    def adapt_and_predict(self, batch):
        out = super().adapt_and_predict(batch)
        out[-1, 0] = float("nan")
        return out
'''

ENTRY_POINTS = {
    "mutate-data": "MutateData",
    "sys-exit": "SysExit",
    "os-exit": "OsExit",
    "flaky": "Flaky",
    "segfault": "Segfault",
    "oom-killed": "KilledLikeOOM",
    "plus-inf": "PlusInf",
    "minus-inf": "MinusInf",
    "nan-prediction": "NanPrediction",
}


def write_distribution(site: Path, dist: str, version: str, package: str, source: str,
                       learners: dict[str, str], commands: dict[str, str] | None = None) -> Path:
    """Install a one-module distribution into ``site`` the way pip lays it out."""
    site.mkdir(parents=True, exist_ok=True)
    (site / package).mkdir(exist_ok=True)
    (site / package / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[metarec.learners]", *[f"{n} = {package}:{obj}" for n, obj in learners.items()]]
    if commands:
        lines += ["", "[metarec.cli]", *[f"{n} = {package}:{obj}" for n, obj in commands.items()]]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (info / "top_level.txt").write_text(package + "\n")
    (info / "RECORD").write_text("")
    return site


def install(site: Path) -> Path:
    """The fault learners as distribution ``metarec-fault-plugins``."""
    return write_distribution(site, "metarec-fault-plugins", "0.1", "metarec_fault_plugins", PLUGIN_SOURCE,
                              ENTRY_POINTS)
