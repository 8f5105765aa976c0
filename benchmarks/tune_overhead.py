"""Optuna's share of a finished ``metarec tune``: sampler, storage and pruning time against trial time.

    python benchmarks/tune_overhead.py TUNE_DIR     # writes TUNE_DIR/overhead.json, prints a table

Every figure comes from the per-trial timings the workers wrote (``<method>/timing-worker*.json``):
``ask`` (sampler + journal), ``suggest`` (drawing each value), ``tell`` (journal) and the
per-epoch ``report``/``should_prune`` calls (pruning), against the trial's whole time from ask
to tell. The file keeps the tune's environment (CPU, versions, jobs, threads), because timings
mean nothing without it; it is a ratio measured in one run, as the speed scripts report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metarec.bench.results import read_json, write_json
from metarec.tuning.outputs import overhead


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not (out / "tune.json").exists():
        print(f"{out}: no tune.json; not a metarec tune folder", file=sys.stderr)
        return 2
    tune = read_json(out / "tune.json")
    methods = {m: overhead(out, m) for m in tune["config"]["bench"]["methods"]}
    record = {
        "format": "metarec-tune-overhead-1",
        "tune_dir": str(out),
        "command": tune.get("command"),
        "environment": tune.get("environment"),
        "threads_per_trial": tune.get("threads_per_trial"),
        "jobs": tune["config"]["bench"].get("jobs"),
        "methods": methods,
    }
    write_json(out / "overhead.json", record)
    print(f"{'method':<22} {'trials':>6} {'trial s (mean)':>15} {'Optuna ms/trial':>16} {'share':>8} {'max':>8}")
    for m, o in methods.items():
        if not o:
            continue
        print(f"{m:<22} {o['trials_timed']:>6} {o['trial_s'] / o['trials_timed']:>15.2f} "
              f"{1000 * o['per_trial_overhead_s']:>16.1f} {100 * o['overhead_fraction']:>7.3f}% "
              f"{100 * o['max_fraction']:>7.3f}%")
    print(json.dumps({m: round(o.get("overhead_fraction", 0), 6) for m, o in methods.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
