"""Speed table of a finished ``metarec bench`` run: training time per epoch, evaluation
throughput and peak memory per method, averaged over seeds.

    python benchmarks/speed_table.py RUN_DIR      # writes RUN_DIR/speed.json, prints a table

Every figure comes from the timings the harness recorded for each (method, seed) run in
``results.json``; the file keeps the run's environment (CPU, versions, git commit, data
checksum, jobs and threads) because timings mean nothing without it.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def speed_rows(results: dict) -> list[dict]:
    """One row per method: mean over its successful seeds."""
    by_method: dict[str, list[dict]] = {}
    for run in results["runs"]:
        if run.get("status") == "ok":
            by_method.setdefault(run["method"], []).append(run)
    rows = []
    for method in results["config"]["methods"]:
        runs = by_method.get(method, [])
        if not runs:
            continue
        epochs = [r["learner_config"].get("epochs") for r in runs]
        fit = [r["timings"]["fit_s"] for r in runs]
        per_epoch = [f / e for f, e in zip(fit, epochs) if e]
        users = [r["split"]["test_users"] / r["timings"]["predict_s"] for r in runs if r["timings"]["predict_s"] > 0]
        rows.append(
            {
                "method": method,
                "seeds": len(runs),
                "epochs": epochs[0],
                "fit_s": round(statistics.mean(fit), 2),
                "s_per_epoch": round(statistics.mean(per_epoch), 2) if per_epoch else None,
                "eval_users_per_s": round(statistics.mean(users), 1) if users else None,
                "peak_rss_mb": round(max(r["memory"]["peak_rss_mb"] for r in runs), 1),
            }
        )
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    results = json.loads((run_dir / "results.json").read_text("utf-8"))
    env = dict(results["environment"])
    env["data_checksum"] = results["dataset"].get("checksum")
    env["dataset"] = results["dataset"].get("name")
    rows = speed_rows(results)
    out = {
        "format": "metarec-speed-1",
        "what": "per method, mean over seeds: meta-training wall time (total and per epoch), "
        "test users adapted and predicted per second, peak resident memory of the run",
        "command": results.get("command"),
        "source": str(run_dir / "results.json"),
        "environment": env,
        "rows": rows,
    }
    (run_dir / "speed.json").write_text(json.dumps(out, indent=1) + "\n", "utf-8")
    keys = ["method", "seeds", "epochs", "fit_s", "s_per_epoch", "eval_users_per_s", "peak_rss_mb"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("–" if r[k] is None else str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
