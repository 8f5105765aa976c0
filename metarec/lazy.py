"""Package attributes that import their module on first access (PEP 562).

A package re-exports names from heavy modules (torch, the metrics, SciPy) without paying for them
at import time: ``import metarec`` and ``metarec --help`` stay fast, and ``from metarec import Task``
still works.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: every name in ``exports[module]`` imports
    ``module`` when first asked for, and is then kept in the package's namespace."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
