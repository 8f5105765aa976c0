"""Where one s²Meta meta-step (fused backend, ``paper`` preset, 1 user) spends its time, and how
many ATen operators it dispatches, phase by phase, on real tasks.

The learner is built and trained as in ``bench_s2meta_speed.py`` (the same epoch order); the
phases are timed by wrapping the functions the meta-step calls (wall clock, the CPU runs them
synchronously, so nested phases are subtracted from their parents), and the operators are counted
with a :class:`~torch.utils._python_dispatch.TorchDispatchMode` in a second, separate pass over
the same users (counting slows the operators down, so it never overlaps the timing). Each phase
has its wall time and its thread CPU time (on a loaded machine the wall time also counts the
waits for a core; the CPU time does not). Phases:

* ``embedders``: :class:`~baselines.s2meta.FeatureInputs` (support + query inputs);
* ``setup``: the inner loop's per-user preparation (stacked controller weights, row buffers,
  masks) and its statistics -- ``adapt`` minus the phases inside it;
* ``predictor_grads``: the MLP's forward and analytic support gradient of every inner step;
* ``stop_controller``: gradient norms and the stop LSTM per inner step;
* ``controller_forward`` / ``controller_backward``: the native (or PyTorch-kernel) controller step;
* ``controller_glue``: :func:`~metarec.learned_optim.fused_step`'s Python around the kernel, and
  the loss input folded into the gate bias;
* ``query_loss``: the final query loss (forward);
* ``backward_other``: the autograd backward minus the controller kernel's backward (the chain of
  steps' glue, the final query loss, the stop controller, the embedders);
* ``clip_adam``: gradient value clipping and the fused Adam step; ``meta_step_rest``: the rest of
  ``meta_step`` (zero_grad, the stop draws, the REINFORCE term, the statistics).

    python benchmarks/s2meta_breakdown.py --data-dir ../shared/data --threads 1 --users 40
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, write_record


class _Phases:
    """Wall time and ATen operators per phase; the innermost active phase owns what runs."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.cpu_seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.child = [0.0, 0.0]

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            self.stack.append(name)
            outer_child, self.child = self.child, [0.0, 0.0]
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = time.perf_counter() - t0, time.thread_time() - c0
                self.seconds[name] += dt - self.child[0]  # exclusive of nested phases
                self.cpu_seconds[name] += dc - self.child[1]
                self.calls[name] += 1
                self.stack.pop()
                self.child = outer_child
                self.child[0] += dt
                self.child[1] += dc
        return wrapped

    def phase(self) -> str:
        return self.stack[-1] if self.stack else "outside"


class _Count(TorchDispatchMode):
    def __init__(self, phases: _Phases) -> None:
        super().__init__()
        self.phases = phases

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.phases.ops[self.phases.phase()][str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def instrumented(learner, phases: _Phases):
    """Wrap the functions of one fused meta-step into the phases (undone on exit)."""
    import baselines.s2meta as s2
    import metarec.learned_optim as lo

    saved = []

    def patch(owner, attr, name, static=False):
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        fn = original.__func__ if isinstance(original, staticmethod) else original
        w = phases.wrap(name, fn)
        setattr(owner, attr, staticmethod(w) if static else w)
        saved.append((owner, attr, original))

    patch(learner, "meta_step", "meta_step_rest")
    patch(s2.FeatureInputs, "forward", "embedders")
    patch(s2.S2Meta, "_adapt_fused", "setup")
    patch(s2, "per_user_relu_mlp_mse_grads", "predictor_grads")
    patch(s2.StopController, "forward", "stop_controller")
    patch(s2.S2Meta, "_stop_decision", "stop_controller")
    patch(s2, "fused_step", "controller_glue")
    patch(s2, "gate_bias", "controller_glue")
    patch(lo.NativeCoordinateLSTMStep, "forward", "controller_forward", static=True)
    patch(lo.NativeCoordinateLSTMStep, "backward", "controller_backward", static=True)
    patch(lo.FusedCoordinateLSTMStep, "forward", "controller_forward", static=True)
    patch(lo.FusedCoordinateLSTMStep, "backward", "controller_backward", static=True)
    patch(s2.S2Meta, "_query_losses", "query_loss")
    patch(torch.Tensor, "backward", "backward_other")
    patch(torch.nn.utils, "clip_grad_value_", "clip_adam")
    patch(learner.optimizer, "step", "clip_adam")
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if isinstance(owner, (type, types.ModuleType)):
                setattr(owner, attr, original)
            else:  # an instance: drop the wrapper, the class's method shows again
                delattr(owner, attr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=1)
    p.add_argument("--users", type=int, default=40, help="training users timed (after --skip users)")
    p.add_argument("--skip", type=int, default=8, help="users trained first, untimed (warm-up)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    device = machine_from_options(p, args)

    from baselines.s2meta import S2Meta
    from metarec.config import parse_overrides
    from metarec.runtime import torch_generator

    split = load_timing_split(args, synthetic_users=2000, synthetic_items=800, seed=args.seed)
    train = split.train
    overrides = parse_overrides(args.sets)
    learner = S2Meta.from_settings(train.schema, preset="paper", overrides={**overrides, "backend": "fused"},
                                   device=device, seed=args.seed)
    order = torch.randperm(len(train), generator=torch_generator(args.seed, "epoch-order", 0))
    for i in range(args.skip):
        learner.meta_step(train.batch(order[i : i + 1], device=device))
    users = [train.batch(order[i : i + 1], device=device) for i in range(args.skip, args.skip + args.users)]
    state = copy.deepcopy(learner.state_dict())  # weights, optimiser, step counter

    def reset() -> None:
        learner.load_state_dict(state)
        learner._stats = {}

    # pass 1: wall time per phase (no operator counting)
    timing = _Phases()
    per_user_s, per_user_cpu = [], []
    with instrumented(learner, timing):
        for b in users:
            t0, c0 = time.perf_counter(), time.thread_time()
            learner.meta_step(b)
            per_user_s.append(time.perf_counter() - t0)
            per_user_cpu.append(time.thread_time() - c0)
    steps_hist = learner.on_epoch_end(0)
    # pass 2: the same users from the same state, counting operators
    reset()
    counting = _Phases()
    with instrumented(learner, counting), _Count(counting):
        for b in users:
            learner.meta_step(b)
    inner_steps = counting.calls["controller_forward"]
    n = len(users)
    total = sum(timing.seconds.values())
    total_cpu = sum(timing.cpu_seconds.values())
    ops_total = {ph: sum(c.values()) for ph, c in counting.ops.items()}
    per_step_phases = ("predictor_grads", "stop_controller", "controller_glue", "controller_forward",
                       "controller_backward")
    rec = {
        "what": "one s2Meta fused meta-step (paper preset, 1 user per Adam step) split into phases: wall "
                "time (exclusive of nested phases) and ATen operators dispatched",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": args.data,
        "data_checksum": split.info.get("checksum"),
        "users": n,
        "skipped_users": args.skip,
        "inner_steps_total": inner_steps,
        "inner_steps_per_user": inner_steps / n,
        "mean_inner_steps_logged": steps_hist.get("inner_steps"),
        "config": {k: v for k, v in vars(learner.config).items()},
        "per_user_ms": {"mean": 1e3 * sum(per_user_s) / n, "median": 1e3 * statistics.median(per_user_s),
                        "phases_sum": 1e3 * total / n},
        "cpu_per_user_ms": {"mean": 1e3 * sum(per_user_cpu) / n, "median": 1e3 * statistics.median(per_user_cpu)},
        "what_cpu": "thread CPU time: on a loaded machine the wall time also counts waiting for a core",
        "phase_ms_per_user": {ph: 1e3 * s / n for ph, s in sorted(timing.seconds.items(), key=lambda kv: -kv[1])},
        "phase_share": {ph: s / total for ph, s in sorted(timing.seconds.items(), key=lambda kv: -kv[1])},
        "phase_cpu_ms_per_user": {ph: 1e3 * s / n for ph, s in sorted(timing.cpu_seconds.items(), key=lambda kv: -kv[1])},
        "phase_cpu_share": {ph: s / total_cpu for ph, s in sorted(timing.cpu_seconds.items(), key=lambda kv: -kv[1])},
        "phase_ms_per_inner_step": {ph: 1e3 * timing.seconds[ph] / inner_steps for ph in per_step_phases},
        "phase_cpu_ms_per_inner_step": {ph: 1e3 * timing.cpu_seconds[ph] / inner_steps for ph in per_step_phases},
        "aten_ops_per_user": {ph: c / n for ph, c in sorted(ops_total.items(), key=lambda kv: -kv[1])},
        "aten_ops_per_user_total": sum(ops_total.values()) / n,
        "aten_ops_per_inner_step": {ph: ops_total.get(ph, 0) / inner_steps for ph in per_step_phases},
        "aten_ops_per_inner_step_total": sum(ops_total.get(ph, 0) for ph in per_step_phases) / inner_steps,
        "top_ops_per_user": {ph: {op: k / n for op, k in c.most_common(12)} for ph, c in counting.ops.items()},
    }
    out = write_record(rec, args.out, prefix=f"s2meta_breakdown_{args.data}_{args.device}", device=device,
                       load_before=load_before)
    print(f"s2Meta fused meta-step, {n} users, {inner_steps / n:.2f} inner steps per user, "
          f"{torch.get_num_threads()} thread(s): {rec['per_user_ms']['mean']:.1f} ms per user "
          f"(median {rec['per_user_ms']['median']:.1f}), CPU {rec['cpu_per_user_ms']['mean']:.1f} ms per user, "
          f"{rec['aten_ops_per_user_total']:.0f} ATen ops per user, {rec['aten_ops_per_inner_step_total']:.0f} per inner step")
    for ph, ms in rec["phase_cpu_ms_per_user"].items():
        print(f"  {ph:22s} CPU {ms:7.2f} ms/user  {100 * rec['phase_cpu_share'][ph]:5.1f} %  (wall "
              f"{rec['phase_ms_per_user'][ph]:7.2f})  {rec['aten_ops_per_user'].get(ph, 0):7.1f} ops/user")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
