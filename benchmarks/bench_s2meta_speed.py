"""One s²Meta meta-training epoch and one evaluation: the ``fused`` backend versus ``reference``,
in ONE run, on the same batches.

The learners are s²Meta with the same settings and seed and differ only in ``backend``: ``fused``
(one :mod:`metarec.learned_optim` step for all 8 adapted tensors per inner step, analytic
gradients; on the CPU the hand-written C++ controller step of :mod:`metarec.native` where it
builds, else compiled pointwise kernels) and ``reference`` (one LSTM call per tensor under
autograd: the original implementation). The tests prove they compute the same numbers. An epoch
is every training user once, in the learner's own seeded epoch order, one meta-step per batch
(``paper``: one user per Adam step). The fused learner trains on every batch; on every
``--reference-every``-th batch the reference learner is first given the fused learner's state
from just before that batch (weights, optimiser, step counter: so the same stop draws and the
same computation), then timed on it -- the backends take turns batch by batch, so a change of
load on a shared machine hits both, and the reference epoch is extrapolated from its batches
(reported as such; ``--reference-every 1`` times it on all). The ratio that counts is
``ratio_same_batches``: reference over fused time on exactly the batches both ran.

Then the fused learner (trained one epoch) predicts every test user (timed, after a warm-up
on a few users that compiles the evaluation shapes), with its default evaluation stop rule,
and the reference learner (given the same state) predicts the first ``--reference-eval-users``.
Where the fused learner runs the native kernel, a third learner (fused, PyTorch kernels) is
timed on the reference batches too, from the same state (``ratio_pytorch_kernels_over_native``).
Every batch's process CPU time is recorded too (``cpu_s``: on a shared machine the wall time
also counts the waits for a core). The record also has the time of one controller step with either kernel, the time of the matrix products alone of one fused inner step (the floor
of this formulation on this machine), the inner steps per user, the compile time and the peak
RSS of the process.

    python benchmarks/bench_s2meta_speed.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_s2meta_speed.py --data-dir ../shared/data --device cuda

``--max-users N`` stops the epoch after N users (a rehearsal; the record says so).
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from metarec.bench.timing import add_machine_options, load_timing_split, machine_from_options, timed, write_record


def matmul_floor_s(learner, device: torch.device, repeats: int = 20) -> float:
    """Seconds of the matrix products alone of one fused inner step (forward + backward), 1 user."""
    from metarec.learned_optim import SegmentLayout

    c = learner.config
    layout = SegmentLayout(tuple(p.numel() for p in learner.recommender.parameters()), 1)
    hidden, x_cols = c.lstm_hidden, 4 + c.lstm_hidden
    rows = layout.rows
    xh = torch.randn(rows, x_cols, device=device)
    dz = torch.randn(rows, 4 * hidden, device=device)
    w = torch.randn(len(layout.numels), x_cols, 4 * hidden, device=device)
    bias = torch.randn(len(layout.numels), 1, 4 * hidden, device=device)
    z = torch.empty(rows, 4 * hidden, device=device)
    dh = torch.empty(rows, hidden, device=device)
    dw = torch.empty_like(w)

    def step() -> None:
        for k, n in enumerate(layout.numels):
            s = layout.segment(k)
            torch.baddbmm(bias[k].unsqueeze(1), xh[s].view(1, n, -1), w[k].expand(1, -1, -1), out=z[s].view(1, n, -1))
            torch.mm(dz[s], w[k, 4:].t(), out=dh[s])
            torch.mm(xh[s].t(), dz[s], out=dw[k])

    step()
    _, seconds = timed(device, lambda: [step() for _ in range(repeats)])
    return seconds / repeats


def controller_step_s(learner, device: torch.device, native: bool, repeats: int = 20) -> float:
    """Seconds of one controller step (forward + backward) of the fused backend, 1 user: the
    native kernel or the PyTorch kernels (compiled as the learner's config says)."""
    from metarec.learned_optim import SegmentLayout, fused_step, gate_bias

    base = list(learner.recommender.parameters())
    layout = SegmentLayout(tuple(p.numel() for p in base), 1)
    weights = learner.update_controller.stacked()
    g = torch.Generator(device="cpu").manual_seed(0)
    theta = layout.flatten([p.detach().unsqueeze(0) for p in base]).requires_grad_()
    grad = (torch.randn(layout.rows, generator=g) * 1e-2).to(device)
    h, c = layout.per_row(weights.h0), layout.per_row(weights.c0)
    seg, active = layout.row_tensor(device), torch.ones(1, dtype=torch.bool, device=device)
    loss = torch.ones(1, device=device)
    cfg = learner.config

    def step() -> None:
        out = fused_step(theta, h, c, grad, active, gate_bias(weights, loss), weights, layout, seg,
                         clamp=cfg.grad_clamp, p=cfg.smooth_p, compiled=learner._compiled_fused(), native=native)
        torch.autograd.grad(out[0].sum() + out[1].sum() + out[2].sum(), [theta, weights.w])

    step()
    step()
    _, seconds = timed(device, lambda: [step() for _ in range(repeats)])
    return seconds / repeats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_machine_options(p, threads=2)  # the target: 2 CPU cores
    p.add_argument("--preset", default="paper", help="an s2Meta preset (default: paper)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="s2Meta config override for both backends, e.g. --set max_steps=10 (repeatable)")
    p.add_argument("--reference-every", type=int, default=1,
                   help="time the reference on every k-th batch only and extrapolate its epoch (default: all)")
    p.add_argument("--reference-eval-users", type=int, default=64,
                   help="test users the reference backend predicts (timed; 0: none)")
    p.add_argument("--max-users", type=int, default=None, help="stop the epoch after this many users (rehearsal)")
    p.add_argument("--eval-users", type=int, default=None, help="test users the fused backend predicts (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/s2meta_speed_<data>_<device>_<time>.json)")
    args = p.parse_args(argv)
    if args.reference_every < 1:
        p.error(f"--reference-every must be at least 1, got {args.reference_every}")
    load_before = os.getloadavg()
    device = machine_from_options(p, args)

    from baselines.s2meta import S2Meta
    from metarec.config import parse_overrides
    from metarec.runtime import torch_generator

    split = load_timing_split(args, synthetic_users=2000, synthetic_items=800, seed=args.seed)
    train, test = split.train, split.test
    if args.eval_users is not None:
        test = test.subset(range(min(args.eval_users, len(test))))
    overrides = parse_overrides(args.sets)

    def build(backend: str) -> S2Meta:
        return S2Meta.from_settings(train.schema, preset=args.preset, overrides={**overrides, "backend": backend},
                                    device=device, seed=args.seed)

    # the native controller kernel (compiled on first use, cached): its build time, and whether it runs
    from metarec import learned_optim, native

    t0 = time.perf_counter()
    native_built = native.load("coordinate_lstm_cpu")
    native_build_s = time.perf_counter() - t0
    fused, ref = build("fused"), build("reference")
    cfg = fused.config
    x = torch.zeros(1, device=device)
    uses_native = cfg.native_kernels is not False and learned_optim.native_available(x, fused.update_controller.stacked())

    def build_pytorch_kernels() -> S2Meta:  # the fused backend without the native kernel, for the ratio
        return S2Meta.from_settings(train.schema, preset=args.preset, device=device, seed=args.seed,
                                    overrides={**overrides, "backend": "fused", "native_kernels": False})
    order = torch.randperm(len(train), generator=torch_generator(args.seed, "epoch-order", 0))  # meta_fit's epoch 0
    n_users = len(train) if args.max_users is None else min(args.max_users, len(train))
    batches = [order[i : min(i + cfg.batch_size, n_users)] for i in range(0, n_users, cfg.batch_size)]

    # warm-up (compilation of the fused kernels, allocator, first-call dispatch) on a batch that
    # is not part of the epoch, then fresh learners
    warm = train.batch(order[-cfg.batch_size :], device=device)
    _, compile_train_s = timed(device, lambda: fused.meta_step(warm))
    ref.meta_step(warm)
    if uses_native:
        build_pytorch_kernels().meta_step(warm)
    fused, ref = build("fused"), build("reference")
    pt = build_pytorch_kernels() if uses_native else None

    out_path = args.out
    times = {"fused": [], "reference": []}
    same = {"fused": [], "reference": []}
    if pt is not None:
        times["fused_pytorch_kernels"], same["fused_pytorch_kernels"] = [], []
    # CPU time of the process (all its threads) per backend: on a shared machine the wall time also
    # counts the waits for a core
    cpu = {"fused": 0.0, "reference": 0.0, "fused_same": 0.0, "fused_before": 0.0}
    loss_diff: list[float] = []
    loss_diff_pt: list[float] = []
    ref_batches: list[int] = []
    t_epoch0 = time.perf_counter()

    def record(final: bool, extra: dict | None = None) -> Path:
        done = len(times["fused"])
        users_done = sum(len(batches[i]) for i in range(done))
        users_ref = sum(len(batches[i]) for i in ref_batches)
        fused_s, ref_s = sum(times["fused"]), sum(times["reference"])
        epoch = {"fused": fused_s * len(train) / max(users_done, 1),
                 "reference": ref_s * len(train) / max(users_ref, 1)}
        rec = {
            "what": "s2Meta: one meta-training epoch (every training user once, one meta_step per batch) and the "
                    "evaluation of the test users, fused vs reference backend in one run",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "complete": final and users_done == len(train),
            "data": args.data,
            "data_checksum": split.info.get("checksum"),
            "data_canonical": split.info.get("canonical"),
            "train_users": len(train),
            "users_timed": {"fused": users_done, "reference": users_ref},
            "batch_size": cfg.batch_size,
            "preset": args.preset,
            "overrides": overrides,
            "config": {k: v for k, v in vars(cfg).items() if k != "backend"},
            "reference_every": args.reference_every,
            "reference_extrapolated": users_ref < users_done,
            "epoch_s": epoch,
            "epoch_wall_s": time.perf_counter() - t_epoch0,
            "ratio_epoch": epoch["reference"] / epoch["fused"] if epoch["fused"] else None,
            "same_batches_s": {b: sum(v) for b, v in same.items()},
            "ratio_same_batches": sum(same["reference"]) / sum(same["fused"]) if sum(same["fused"]) else None,
            "cpu_s": {"what": "process CPU time (all threads), the same batches as the wall times",
                      "fused": cpu["fused"], "reference": cpu["reference"], "fused_same_batches": cpu["fused_same"],
                      "epoch_fused": cpu["fused"] * len(train) / max(users_done, 1),
                      "epoch_reference": cpu["reference"] * len(train) / max(users_ref, 1),
                      "ratio_same_batches": cpu["reference"] / cpu["fused_same"] if cpu["fused_same"] else None},
            "native_kernels": {"used": uses_native, "built": native_built, "load_or_build_s": native_build_s,
                               "what": "fused = the native C++ controller step; fused_pytorch_kernels = the same "
                                       "backend with the PyTorch kernels, timed on the reference batches"},
            "ratio_pytorch_kernels_over_native": (sum(same["fused_pytorch_kernels"]) / sum(same["fused"])
                                                  if pt is not None and sum(same["fused"]) else None),
            "batch_loss_difference_pytorch_kernels_vs_native": max(loss_diff_pt) if loss_diff_pt else None,
            "batch_loss_difference_vs_reference": {"first": loss_diff[0] if loss_diff else None,
                                                   "largest": max(loss_diff) if loss_diff else None},
            "median_batch_s": {b: statistics.median(t) for b, t in times.items() if t},
            "compile_s": {"train_first_meta_step": compile_train_s},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "batch_s": times,
            "reference_batches": ref_batches,
            **(extra or {}),
        }
        return write_record(rec, out_path, prefix=f"s2meta_speed_{args.data}_{args.device}", device=device,
                            load_before=load_before)

    for i, idx in enumerate(batches):
        batch = train.batch(idx, device=device)
        cpu["fused_before"] = cpu["fused"]
        on_ref = i % args.reference_every == 0
        state = copy.deepcopy(fused.state_dict()) if on_ref else None
        c0 = time.process_time()
        loss_f, seconds = timed(device, lambda: fused.meta_step(batch))
        cpu["fused"] += time.process_time() - c0
        times["fused"].append(seconds)
        if on_ref:
            ref.load_state_dict(state)
            c0 = time.process_time()
            loss_r, seconds_r = timed(device, lambda: ref.meta_step(batch))
            cpu["reference"] += time.process_time() - c0
            cpu["fused_same"] += cpu["fused"] - cpu["fused_before"]
            times["reference"].append(seconds_r)
            same["fused"].append(seconds)
            same["reference"].append(seconds_r)
            loss_diff.append(abs(loss_f - loss_r))
            ref_batches.append(i)
            if pt is not None:
                pt.load_state_dict(state)
                loss_p, seconds_p = timed(device, lambda: pt.meta_step(batch))
                times["fused_pytorch_kernels"].append(seconds_p)
                same["fused_pytorch_kernels"].append(seconds_p)
                loss_diff_pt.append(abs(loss_f - loss_p))
        if (i + 1) % 200 == 0:
            out_path = record(False)
            print(f"  batch {i + 1}/{len(batches)}: fused {sum(times['fused']):7.1f} s, reference "
                  f"{sum(same['reference']):7.1f} s on {len(ref_batches)} batches (fused {sum(same['fused']):6.1f} s "
                  f"on them), load {os.getloadavg()[0]:.1f}", flush=True)
    train_logs = {"fused": fused.on_epoch_end(0), "reference_on_its_batches": ref.on_epoch_end(0)}

    # evaluation: warm-up on a few users (compiles the evaluation shapes), then all test users
    _, compile_eval_s = timed(device, lambda: fused.predict(test.subset(range(min(2 * (cfg.chunk_size or 8), len(test))))))
    _, eval_fused_s = timed(device, lambda: fused.predict(test))
    eval_info = fused.run_info()["inner_steps"]
    eval_ref_s, ref_eval_users = None, 0
    if args.reference_eval_users > 0:
        ref.load_state_dict(fused.state_dict())
        sub = test.subset(range(min(args.reference_eval_users, len(test))))
        ref_eval_users = len(sub)
        _, eval_fused_sub_s = timed(device, lambda: fused.predict(sub))
        _, eval_ref_s = timed(device, lambda: ref.predict(sub))
    floor = matmul_floor_s(fused, device)
    step_native = controller_step_s(fused, device, native=True) if uses_native else None
    step_pytorch = controller_step_s(fused, device, native=False)
    mean_steps = train_logs["fused"].get("inner_steps", float("nan"))
    extra = {
        "train_logs": train_logs,
        "eval": {
            "test_users": len(test),
            "fused_s": eval_fused_s,
            "eval_stop_rule": cfg.eval_stop_rule,
            "inner_steps": eval_info,
            "reference_users": ref_eval_users,
            "reference_s": eval_ref_s,
            "fused_same_users_s": eval_fused_sub_s if ref_eval_users else None,
            "ratio_same_users": (eval_ref_s / eval_fused_sub_s) if ref_eval_users else None,
        },
        "compile_s": {"train_first_meta_step": compile_train_s, "eval_warmup": compile_eval_s},
        "matmul_floor": {
            "inner_step_s": floor,
            "what": "the matrix products alone of one fused inner step (gates forward, recurrent and weight "
                    "gradients; 8 adapted tensors, 1 user), timed in this run",
            "epoch_s_at_mean_inner_steps": floor * mean_steps * len(train),
        },
        "controller_step_s": {
            "native": step_native,
            "pytorch_kernels": step_pytorch,
            "what": "one fused controller step (forward + backward, 8 adapted tensors, 1 user), timed in this run",
        },
    }
    out = record(True, extra)
    r = __import__("json").loads(out.read_text())
    print(f"s2Meta epoch over {len(train)} users ({len(batches)} batches of {cfg.batch_size}), {args.device}, "
          f"{torch.get_num_threads()} threads, {mean_steps:.2f} inner steps per user:")
    print(f"  fused {r['epoch_s']['fused']:7.1f} s   reference {r['epoch_s']['reference']:7.1f} s"
          + (" (extrapolated)" if r["reference_extrapolated"] else "")
          + f"   reference / fused on the same batches: {r['ratio_same_batches']:.2f}x "
          f"(batch-loss difference: largest {r['batch_loss_difference_vs_reference']['largest']:.1e})")
    print(f"  CPU time: fused {r['cpu_s']['epoch_fused']:7.1f} s per epoch, reference {r['cpu_s']['epoch_reference']:7.1f} s, "
          f"reference / fused on the same batches {r['cpu_s']['ratio_same_batches']:.2f}x")
    print(f"  evaluation of {len(test)} test users (fused): {eval_fused_s:.1f} s, "
          f"{eval_info['eval']['mean']:.2f} inner steps per user ({cfg.eval_stop_rule} rule)"
          + (f"; reference / fused on {ref_eval_users} users: {r['eval']['ratio_same_users']:.2f}x" if ref_eval_users else ""))
    print(f"  matmul floor of one inner step {floor * 1e3:.2f} ms -> {r['matmul_floor']['epoch_s_at_mean_inner_steps']:.1f} s "
          f"per epoch; peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  controller step (fwd + bwd, 1 user): PyTorch kernels {step_pytorch * 1e3:.2f} ms"
          + (f", native {step_native * 1e3:.2f} ms; fused with PyTorch kernels / native on the reference batches: "
             f"{r['ratio_pytorch_kernels_over_native']:.2f}x" if uses_native else " (native kernel not used)"))
    print(f"wrote {out} (load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
