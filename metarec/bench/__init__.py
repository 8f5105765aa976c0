"""The benchmark harness behind ``metarec bench`` and ``metarec report``.

* :mod:`metarec.bench.config` -- :class:`BenchConfig` and its TOML/CLI layers;
* :mod:`metarec.bench.runner` -- runs every (method, seed), resumably, in parallel if asked;
* :mod:`metarec.bench.results` -- per-run files, aggregation, paired tests, ``results.json``;
* :mod:`metarec.bench.report` / :mod:`metarec.bench.plot` -- tables and figures;
* :mod:`metarec.bench.progress` -- the live display.

Programmatic use::

    from metarec.bench import BenchConfig, run_bench
    results = run_bench(BenchConfig(methods=("global-mean", "baseline-predictor"), dataset="synthetic",
                                    seeds=(0, 1)), out="runs/demo")
"""

# Loaded on first access (PEP 562): importing a submodule such as metarec.bench.config must not pull
# in the runner, the metrics and SciPy with it.
_LAZY = {"BenchConfig": "metarec.bench.config", "MethodSettings": "metarec.bench.config",
         "resolve_config": "metarec.bench.config", "BenchError": "metarec.bench.runner",
         "run_bench": "metarec.bench.runner"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metarec.bench' has no attribute {name!r}")

__all__ = ["BenchConfig", "BenchError", "MethodSettings", "resolve_config", "run_bench"]
