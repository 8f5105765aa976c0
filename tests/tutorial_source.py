"""The tutorial's Reptile learner imported from its source in docs/ (not the installed plugin)."""

from __future__ import annotations

import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial" / "toy_learner"


def tutorial_reptile() -> type:
    """The class, with no source copy left in ``sys.modules``: the docs' plugin tests import the
    installed copy and must not find this one cached."""
    sys.path.insert(0, str(TUTORIAL))
    try:
        from toy_learner.reptile import Reptile
    finally:
        sys.path.remove(str(TUTORIAL))
        for mod in [m for m in sys.modules if m == "toy_learner" or m.startswith("toy_learner.")]:
            del sys.modules[mod]
    return Reptile
