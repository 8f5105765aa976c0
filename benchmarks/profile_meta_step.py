"""Where a meta-step's time goes, per method: forward (by top-level submodule of the model),
backward and optimiser, and the operators that take the most time.

Each method is built with the given preset (default ``paper``) on the seed's training split and
runs ``--warmup`` + ``--steps`` meta-steps on consecutive batches of a seeded shuffle (its own
``batch_size``), timed one by one; ``s_per_epoch`` is the mean step times the steps of one epoch
(``cpu_s_per_epoch`` the same in process CPU time, without the waits of a loaded machine). The
split below is in CPU time.
The backward and optimiser times are measured inside :func:`metarec.engine.outer_step` (every
episodic method here ends its meta-step there); the forward is the rest of the step. Forward
time per submodule: forward hooks on the model's children (a nested module counts towards the
outermost hooked one; ``other`` = the forward outside any of them: losses, inner loops written
as functions). Then ``--profile-steps`` more steps under :mod:`torch.profiler` give the top
operators by self CPU time. Variants: ``coldnas`` is its first phase (the supernet search),
``coldnas-final`` the final model of a fixed architecture (the ``lastfm-searched`` preset's)::

    python benchmarks/profile_meta_step.py --data-dir ../shared/data --methods tanp,coldnas,coldnas-final

The JSON (settings, machine, versions, git commit, data checksum) goes to
``benchmarks/results/meta_step_profile_<data>_<device>_<time>.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from metarec.bench.timing import add_machine_options, default_record_path, load_timing_split, machine_from_options, write_record

#: name -> (registered method, preset, overrides)
VARIANTS = {"coldnas-final": ("coldnas", "lastfm-searched", {})}


class StepClock:
    """Backward / optimiser CPU seconds inside ``engine.outer_step``; forward CPU seconds by submodule."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.depth, self.start, self.handles = 0, 0.0, []
        for name, child in model.named_children():
            # a ModuleList / ModuleDict is never called itself: hook its members, under its name
            modules = list(child) if isinstance(child, torch.nn.ModuleList) else (
                list(child.values()) if isinstance(child, torch.nn.ModuleDict) else [child])
            for m in modules:
                self.handles.append(m.register_forward_pre_hook(self._enter))
                self.handles.append(m.register_forward_hook(lambda *_, n=name: self._leave(n)))

    def _enter(self, *_) -> None:
        if self.depth == 0:
            self.start = time.process_time()
        self.depth += 1

    def _leave(self, name: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.parts[f"forward:{name}"] += time.process_time() - self.start

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def timed_outer_step(clock_ref: list):
    """A drop-in ``engine.outer_step`` that charges backward and optimiser time to ``clock_ref[0]``."""
    from metarec import engine

    original = engine.outer_step

    def outer_step(optimizer, loss, *, grad_clip=None, clip_value=None):  # noqa: ANN001, ANN202
        t0 = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t1 = time.process_time()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, clip_value)
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        t2 = time.process_time()
        if clock_ref:
            clock_ref[0].parts["backward"] += t1 - t0
            clock_ref[0].parts["optimizer"] += t2 - t1
        return float(loss.detach())

    return original, outer_step


def profile_method(name: str, preset: str, overrides: dict, train, device, args) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from metarec import engine
    from metarec.registry import get_learner

    method, preset, extra = VARIANTS.get(name, (name, preset, {}))
    cls = get_learner(method)
    learner = cls.from_settings(train.schema, preset=preset, overrides={**extra, **overrides}, device=device, seed=args.seed)
    learner.on_fit_start(train)
    bs = learner.config.batch_size
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    n = args.warmup + args.steps + args.profile_steps
    batches = [train.batch(order[i * bs:(i + 1) * bs], device=device) for i in range(n)]
    model = getattr(learner, "supernet", None) if getattr(learner, "in_search", False) else learner.model
    clock_ref: list = []
    original, patched = timed_outer_step(clock_ref)
    engine.outer_step = patched
    try:
        for b in batches[:args.warmup]:
            learner.meta_step(b)
        clock = StepClock(model)
        clock_ref.append(clock)
        steps, cpu = [], []
        for b in batches[args.warmup:args.warmup + args.steps]:
            t0, c0 = time.perf_counter(), time.process_time()
            learner.meta_step(b)
            steps.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        clock_ref.clear()
        clock.close()
        top = []
        if args.profile_steps:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for b in batches[args.warmup + args.steps:]:
                    learner.meta_step(b)
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            top = [{"op": e.key, "calls_per_step": e.count / args.profile_steps,
                    "self_s_per_step": e.self_cpu_time_total / 1e6 / args.profile_steps} for e in events[:args.top_ops]]
    finally:
        engine.outer_step = original
    total = sum(steps)
    parts = {k: v / len(steps) for k, v in clock.parts.items()}
    hooked = sum(v for k, v in parts.items() if k.startswith("forward:"))
    mean, mean_cpu = total / len(steps), sum(cpu) / len(cpu)
    parts["forward:other"] = mean_cpu - parts.get("backward", 0.0) - parts.get("optimizer", 0.0) - hooked
    per_epoch = len(train) // bs if learner.config.drop_last else -(-len(train) // bs)
    return {
        "method": method, "variant": name, "preset": preset, "overrides": {**extra, **overrides},
        "batch_size": bs, "steps_per_epoch": per_epoch,
        "meta_step_s": steps, "meta_step_mean_s": mean, "meta_step_median_s": statistics.median(steps),
        "s_per_epoch": mean * per_epoch,
        "meta_step_cpu_s": cpu, "cpu_s_per_epoch": sum(cpu) / len(cpu) * per_epoch,
        "meta_step_cpu_mean_s": mean_cpu,
        "per_step_cpu_s": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "top_ops_self_s": top,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=1)
    p.add_argument("--methods", default="tanp,coldnas,coldnas-final,metahin")
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--top-ops", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 0:
        p.error("--steps must be >= 1, --warmup and --profile-steps >= 0")
    split = load_timing_split(args, synthetic_users=600, synthetic_items=400, seed=args.seed)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = Path(args.out) if args.out else default_record_path(f"meta_step_profile_{args.data}_{args.device}")
    record = {
        "format": "metarec-meta-step-profile-1",
        "what": "per method: meta-step CPU time split into forward (by model submodule), backward and optimiser; "
        "s_per_epoch = mean step x steps per epoch; top operators from a profiled pass",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data, "data_checksum": split.info.get("checksum"), "train_users": len(split.train),
        "seed": args.seed, "rows": [],
    }
    for name in names:
        row = profile_method(name, args.preset, {}, split.train, device, args)
        record["rows"].append(row)
        write_record(record, out, device=device, load_before=load_before)
        parts = ", ".join(f"{k} {1000 * v:.1f}" for k, v in row["per_step_cpu_s"].items() if v >= 5e-5)
        print(f"{name:14s} {1000 * row['meta_step_mean_s']:7.1f} ms/step {row['s_per_epoch']:7.1f} s/epoch | cpu "
              f"{1000 * row['meta_step_cpu_mean_s']:.1f} ms/step {row['cpu_s_per_epoch']:.1f} s/epoch: {parts}", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
