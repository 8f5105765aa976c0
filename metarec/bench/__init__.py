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

from metarec.lazy import lazy_exports

# Loaded on first access: importing a submodule such as metarec.bench.config must not pull in the
# runner, the metrics and SciPy with it.
__getattr__ = lazy_exports(__name__, {"metarec.bench.config": ("BenchConfig", "MethodSettings", "resolve_config"),
                                      "metarec.bench.runner": ("BenchError", "run_bench")})

__all__ = ["BenchConfig", "BenchError", "MethodSettings", "resolve_config", "run_bench"]
