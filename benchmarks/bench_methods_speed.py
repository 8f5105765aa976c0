"""Per-method speed on one device, each method alone: meta-training time per epoch, test users
adapted and predicted per second, peak memory -- the speed table of the Table 1 reproduction,
measured the same way on a CPU and on a GPU.

Each method runs with its settings from a bench config (default: ``benchmarks/configs/table1-ml1m.toml``,
so the presets of the Table 1 run) for ONE epoch on the first ``--train-users`` users of the
seed's training set (default: all), and predicts the first ``--eval-users`` test users (default:
all). Epoch time is that fit's wall time scaled to the whole training set (reported as
extrapolated when fewer users ran); learners without epochs (closed-form baselines) report their
whole fit. Methods run one after the other in this process, so nothing else shares the device;
the record is rewritten after each method, so a run stopped early keeps what it measured::

    python benchmarks/bench_methods_speed.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_methods_speed.py --data-dir ../shared/data --device cuda

The JSON (every figure, the settings, machine, versions, git commit, data checksum) goes to
``benchmarks/results/methods_speed_<data>_<device>_<time>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from metarec.bench.timing import (add_machine_options, default_record_path, load_timing_split, machine_from_options,
                                  timed, write_record)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "benchmarks" / "configs" / "table1-ml1m.toml"


def one_epoch_config(config_path: Path | None):
    """The bench config's method settings with the harness's bench-wide ``epochs = 1`` on top:
    every learner that has epochs trains one, the others (closed-form baselines) fit as usual."""
    from metarec.bench.config import layer_from_file, resolve_config

    layers = [layer_from_file(config_path)] if config_path else []
    return resolve_config(*layers, {"bench": {"epochs": 1}})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=2)  # the target: 2 CPU cores
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="bench config whose method settings to use ('' = defaults)")
    p.add_argument("--methods", default=None, help="comma-separated (default: the config's methods)")
    p.add_argument("--train-users", type=int, default=None, help="users of the timed epoch (default: all)")
    p.add_argument("--eval-users", type=int, default=None, help="test users predicted (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/methods_speed_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)
    for name in ("train_users", "eval_users"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")

    from metarec.bench.runner import PeakMemory
    from metarec.config import ConfigError
    from metarec.registry import get_learner

    try:
        cfg = one_epoch_config(Path(args.config) if args.config else None)
        names = [m.strip() for m in args.methods.split(",")] if args.methods else list(cfg.methods)
        classes = {m: get_learner(m) for m in names}
    except (ConfigError, KeyError, OSError) as exc:
        p.error(str(exc))
    split = load_timing_split(args, synthetic_users=600, synthetic_items=400, seed=args.seed)
    train, test = split.train, split.test
    n_train = min(args.train_users or len(train), len(train))
    n_eval = min(args.eval_users or len(test), len(test))
    train_part, test_part = train.subset(range(n_train)), test.subset(range(n_eval))

    out = Path(args.out) if args.out else default_record_path(f"methods_speed_{args.data}_{args.device}")
    record = {
        "format": "metarec-methods-speed-1",
        "what": "per method, alone on the device: one meta-training epoch (extrapolated from "
        "train_users_timed when fewer than all), test users adapted and predicted per second, peak memory",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": args.config or None,
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "data_canonical": split.info.get("canonical"),
        "train_users": len(train),
        "test_users": len(test),
        "seed": args.seed,
        "methods": names,
        "rows": [],
    }
    rows = record["rows"]
    for name in names:
        cls, preset = classes[name], cfg.settings_for(name).preset
        fields = [f.name for f in dataclasses.fields(cls.Config)]
        has_epochs = "epochs" in fields
        overrides = cfg.learner_overrides(name, fields)
        learner = cls.from_settings(train.schema, preset=preset, overrides=overrides, device=device, seed=args.seed)
        with PeakMemory(device) as memory:
            _, fit_s = timed(device, lambda: learner.meta_fit(train_part))
            _, predict_s = timed(device, lambda: learner.predict(test_part))
            peak = memory.read()
        row = {
            "method": name,
            "preset": preset,
            "overrides": overrides,
            "fit_s": fit_s,
            "train_users_timed": n_train,
            "s_per_epoch": fit_s * len(train) / n_train if has_epochs else None,
            "whole_fit_s": None if has_epochs else fit_s,
            "eval_users": n_eval,
            "predict_s": predict_s,
            "eval_users_per_s": n_eval / predict_s if predict_s > 0 else None,
            **peak,
        }
        rows.append(row)
        epoch = f"{row['s_per_epoch']:8.2f} s/epoch" if has_epochs else f"{fit_s:8.2f} s fit  "
        mem = f"{peak.get('peak_cuda_allocated_mb', peak['peak_rss_mb']):8.1f} MB"
        print(f"{name:22s} {epoch}  {row['eval_users_per_s'] or 0:10.1f} users/s  {mem}", flush=True)
        # after every method: a run stopped at its time limit keeps the methods it finished
        write_record(record, out, device=device, load_before=load_before)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
