"""Score named presets on a tune's tuning pool, exactly as its trials were scored.

    python benchmarks/pool_score_presets.py TUNE_DIR METHOD=PRESET [METHOD=PRESET ...] \
        [--set METHOD.KEY=VALUE ...] [--data-dir DIR] [--out FILE.json]

A hand-picked preset and a tuned setting can only be compared fairly on users that no test set
sees: this script trains each preset on the tune's training users (its ``split_seed``, its trial
seed, its protocol and pool) and scores the pool's query ratings with the tune's metric, so the
value stands next to the study's best trial. It is how a method's default is chosen between a
preset and the tuned settings without looking at a test user. ``--set`` applies to every
argument of its method. The JSON (default ``TUNE_DIR/pool-presets.json``) keeps the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from metarec.bench.config import BenchConfig, MethodSettings, layer_from_overrides, parse_presets
from metarec.bench.environment import environment_info
from metarec.bench.results import read_json, write_json
from metarec.config import config_to_dict
from metarec.registry import get_learner
from metarec.tuning.study import TuneConfig, fixed_values, load_tuning_split, pool_score


def _tune_config(saved: dict, presets: list[str], sets: list[str], data_dir: str | None) -> TuneConfig:
    """The tune's own config (``tune.json``'s: data, protocol, pool, split and trial seeds,
    metric), with the methods and settings replaced by the presets to score."""
    bench = BenchConfig.from_dict(saved["bench"])
    chosen = parse_presets(presets)
    overrides = layer_from_overrides(sets)["methods"]
    bench = dataclasses.replace(
        bench, methods=tuple(chosen), data_dir=data_dir or bench.data_dir,
        method_settings={m: MethodSettings(preset=v.get("preset"), overrides=overrides.get(m, {}))
                         for m, v in chosen.items()},
    )
    return TuneConfig.from_dict({**saved, "bench": bench.to_dict()})


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("tune_dir", type=Path)
    ap.add_argument("presets", nargs="+", metavar="METHOD=PRESET")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD.KEY=VALUE")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.tune_dir / "tune.json").exists():
        print(f"{args.tune_dir}: no tune.json; not a metarec tune folder", file=sys.stderr)
        return 2
    named = {p.partition("=")[0] for p in args.presets}
    stray = sorted({s.split(".")[0] for s in args.sets} - named)
    if stray:
        print(f"--set names method(s) without a METHOD=PRESET argument: {', '.join(stray)}", file=sys.stderr)
        return 2
    # one config per argument, so that two presets of one method can be compared; the split and
    # the pool depend only on the data and protocol, which every one of them shares
    saved = read_json(args.tune_dir / "tune.json")["config"]
    configs = [_tune_config(saved, [p], [s for s in args.sets if s.split(".")[0] == p.split("=")[0]],
                            args.data_dir) for p in args.presets]
    split = load_tuning_split(configs[0])
    summary = read_json(args.tune_dir / "summary.json") if (args.tune_dir / "summary.json").exists() else {}
    best = {row["method"]: row for row in summary.get("methods", [])}
    rows = []
    for cfg in configs:
        (method,) = cfg.bench.methods
        cls = get_learner(method)
        settings = cfg.bench.settings_for(method)
        # as a trial builds it: the preset, then the tune's fixed values (a bench-wide --epochs) and --set
        learner = cls.from_settings(split.train.schema, preset=settings.preset,
                                    overrides=fixed_values(cfg, method, cls), device="cpu", seed=cfg.seed)
        t0 = time.perf_counter()
        learner.meta_fit(split.train)
        value = pool_score(learner, split.tuning, cfg.metric, cfg.bench.k)
        # the resolved settings, so that a later rename or change of the preset is caught
        # (benchmarks/fair_config.py compares them with what the preset resolves to then)
        row = {"method": method, "preset": settings.preset, "overrides": settings.overrides,
               "settings": config_to_dict(learner.config),
               "metric": f"pool {cfg.metric}", "value": value, "train_s": time.perf_counter() - t0,
               "tuned_best": best.get(method, {}).get("best_value")}
        rows.append(row)
        print(f"{method:<22} preset {settings.preset!s:<10} pool {cfg.metric} {value:.4f}"
              f"  (tuned best {row['tuned_best'] if row['tuned_best'] is None else round(row['tuned_best'], 4)})"
              f"  {row['train_s']:.1f} s", flush=True)
    record = {"format": "metarec-pool-presets-1", "tune_dir": str(args.tune_dir), "command": ["python", *sys.argv],
              "pool_users": len(split.tuning), "split_seed": configs[0].split_seed, "seed": configs[0].seed,
              "environment": environment_info("cpu"), "rows": rows}
    out = args.out or args.tune_dir / "pool-presets.json"
    write_json(out, record)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
