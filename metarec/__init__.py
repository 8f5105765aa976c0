"""metarec: meta-learning for cold-start recommendation.

The package is layered the way data flows through a benchmark::

    data (loaders, protocol)  ->  tasks (Task, TaskSet, TaskBatch)
    ->  learners (Learner, engine, nn, methods)  ->  metrics  ->  bench (runner, report)

Importing :mod:`metarec` stays cheap: heavy modules are imported on first use.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("metarec")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from metarec.lazy import lazy_exports
from metarec.schema import Feature, FeatureSchema, SCENARIOS

# The task containers need torch (about a second to import): they load on first access, so that
# `metarec --help` and the CLI's one-line refusals do not wait for it.
__getattr__ = lazy_exports(__name__, {"metarec.tasks": ("FeatureTable", "Task", "TaskBatch", "TaskSet")})



def load_model(path, **kwargs):
    """A model folder written by ``metarec fit`` (see :func:`metarec.serving.persist.load_model`)."""
    from metarec.serving import load_model as _load

    return _load(path, **kwargs)


__all__ = [
    "Feature",
    "FeatureSchema",
    "FeatureTable",
    "SCENARIOS",
    "Task",
    "TaskBatch",
    "TaskSet",
    "__version__",
    "load_model",
]
