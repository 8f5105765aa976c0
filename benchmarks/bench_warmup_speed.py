"""Per-method time of one full item warm-up protocol run: backbone pre-training on the old items,
the method's own training, the cold stage and the three warm-up stages, each scored on the test rows.

Each method runs the whole stream once (``metarec.warmup.bench.run_stream``, the function
``metarec bench --protocol item-warmup`` calls) with its default settings (the presets the
bench runs), one after the other in this process on one seed's split. Every stage is batched
over the new items (one ID table, mini-batches of rows), never a loop over items. Because the
machine is shared and noisy, the comparable figures are the process CPU time and the ratio to
the plain backbone (``--reference``, default ``deepfm``) measured in the same run; the record is rewritten after
every method, so a run stopped early keeps what it measured::

    python benchmarks/bench_warmup_speed.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_warmup_speed.py --methods deepfm,cvar --data synthetic --threads 1

The JSON (phase timings per method, ratios, settings, machine, load average before and after,
versions, git commit, data checksum) goes to
``benchmarks/results/warmup_speed_<data>_<device>_<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from metarec.bench.timing import add_machine_options, default_record_path, machine_from_options, write_record

DEFAULT_METHODS = "deepfm,feature-only,dropoutnet,metaemb,mwuf,cvar,lwa,nlba"


def load_warmup_split(args: argparse.Namespace, seed: int):
    """ML-1M (or small synthetic data) under the item warm-up protocol's dataset preset."""
    from metarec.warmup.protocol import build_warmup_split, warmup_config_for

    if args.data == "ml-1m":
        from metarec.data.load import load_dataset

        data = load_dataset("ml-1m", data_dir=args.data_dir)
        return build_warmup_split(data, warmup_config_for("ml-1m"), seed=seed)
    from metarec.data.synthetic import make_synthetic

    data = make_synthetic(n_users=400, n_items=300, ratings_per_user=40, seed=seed)
    return build_warmup_split(data, warmup_config_for("synthetic", {"old_min_count": 60, "stage_size": 6}), seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=2)  # the target: the 2-core CPU
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default: {DEFAULT_METHODS})")
    p.add_argument("--reference", default="deepfm", help="the method the ratios are relative to (default: deepfm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/warmup_speed_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)

    from metarec.warmup.bench import WarmupBenchError, resolve_warmup_methods, run_stream

    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        classes = resolve_warmup_methods(names)
    except WarmupBenchError as exc:
        p.error(str(exc))
    split = load_warmup_split(args, args.seed)
    out = Path(args.out) if args.out else default_record_path(f"warmup_speed_{args.data}_{args.device}")
    record = {
        "format": "metarec-warmup-speed-1",
        "what": "per method, alone in this process: wall time of one whole item warm-up stream (pre-training + the "
                "method's own training = fit_s, cold stage, warm-up a, b, c; each stage includes predicting the test "
                "rows), and its ratio to the reference method measured in the same run",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "split": {k: split.info[k] for k in ("old_items", "new_items", "rows_base", "rows_per_stage", "rows_test")},
        "seed": args.seed,
        "methods": names,
        "reference": args.reference,
        "rows": [],
    }
    for name in names:
        res = run_stream(classes[name], split, method=name, seed=args.seed, preset=None, overrides={},
                         device=str(device))
        t = res["timings"]
        row = {"method": name, **t, "warm_abc_s": sum(v for k, v in t.items() if k.startswith("warm_")),
               "cpu_total_s": res["cpu_timings"]["total_s"], "cpu_fit_s": res["cpu_timings"]["fit_s"]}
        record["rows"].append(row)
        ref = next((r for r in record["rows"] if r["method"] == args.reference), None)
        for r in record["rows"]:
            r["total_vs_reference"] = r["total_s"] / ref["total_s"] if ref else None
            r["cpu_total_vs_reference"] = r["cpu_total_s"] / ref["cpu_total_s"] if ref else None
        print(f"{name:14s} fit {t['fit_s']:8.1f} s  cold {t['cold_s']:6.1f} s  warm a+b+c {row['warm_abc_s']:7.1f} s  "
              f"total {t['total_s']:8.1f} s", flush=True)
        write_record(record, out, device=device, load_before=load_before)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
