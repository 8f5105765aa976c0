"""Choose the simple baselines' defaults on validation users, never on test users.

For each seed, the training users of that seed's split are divided once more: 20 % of them
(``ProtocolConfig.validation_fraction``) become validation users, the rest train. The test users
of the split are not predicted, not scored, not loaded into any model. Every grid point is scored
by the mean absolute error on the validation users' query ratings, averaged over the seeds; the
best point becomes the learner's default (``metarec/methods/simple.py``).

* ``baseline-predictor``: ``item_reg`` x ``user_reg`` x ``sweeps`` (closed form: seconds).
* ``profile-mlp`` / ``profile-mlp-finetune`` (``--mlp``): one ProfileMLP training per seed with
  its validation MAE after every epoch (the number of epochs), then ``finetune_steps`` x
  ``finetune_lr`` of the per-user fine-tuning on that trained network.

    python benchmarks/select_simple_baselines.py --data-dir ../shared/data --seeds 0-4 \\
        --out benchmarks/results/simple_baselines_selection_ml-1m.json [--mlp]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarec.bench.config import parse_seeds  # noqa: E402
from metarec.bench.environment import environment_info  # noqa: E402
from metarec.data import load_split  # noqa: E402
from metarec.data.protocol import ProtocolConfig  # noqa: E402
from metarec.learner import Callback  # noqa: E402
from metarec.methods.simple import BaselinePredictor, ProfileMLP, ProfileMLPFineTune  # noqa: E402

VALIDATION_FRACTION = 0.2
GRID_BP = {
    "item_reg": [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0, 50.0],
    "user_reg": [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0],
    "sweeps": [1, 2, 3],
}
GRID_FT = {"finetune_steps": [0, 5, 10, 20], "finetune_lr": [1e-3, 3e-3, 1e-2, 3e-2]}


def mae(pred: torch.Tensor, tasks) -> float:
    """Mean absolute error over the real query ratings of ``tasks``."""
    m = tasks.query_mask
    return float((pred - tasks.query_ratings).abs()[m].mean())


class EpochMAE(Callback):
    """Records the validation MAE that EpisodicLearner.meta_fit logs after every epoch."""

    def __init__(self) -> None:
        self.val_mae: list[float] = []

    def on_epoch_end(self, learner, *, epoch, logs) -> None:
        self.val_mae.append(float(logs["val_mae"]))


def best(scores: dict[str, list[float]]) -> tuple[str, float]:
    """The key with the lowest mean score over seeds."""
    key = min(scores, key=lambda k: sum(scores[k]) / len(scores[k]))
    return key, sum(scores[key]) / len(scores[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("METAREC_DATA_DIR", "../shared/data"))
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--mlp", action="store_true", help="also select profile-mlp(-finetune) settings (minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    protocol = ProtocolConfig(validation_fraction=VALIDATION_FRACTION)
    t0 = time.perf_counter()
    record: dict = {
        "what": "simple baselines' defaults chosen on validation users (20 % of each seed's training users); "
                "test users are never predicted",
        "command": ["python", *sys.argv],
        "dataset": args.dataset,
        "seeds": list(seeds),
        "validation_fraction": VALIDATION_FRACTION,
        "metric": "validation MAE, mean over seeds",
        "splits": {},
    }
    bp_scores: dict[str, list[float]] = {}
    mlp_curves: dict[int, list[float]] = {}
    ft_scores: dict[str, list[float]] = {}
    for seed in seeds:
        split = load_split(args.dataset, data_dir=args.data_dir, protocol=protocol, seed=seed)
        train, val = split.train, split.validation
        record["splits"][seed] = {"train_users": len(train), "validation_users": len(val),
                                  "test_users_not_used": len(split.test)}
        for values in itertools.product(*GRID_BP.values()):
            point = dict(zip(GRID_BP, values))
            learner = BaselinePredictor.from_settings(train.schema, overrides=point, seed=seed).meta_fit(train)
            bp_scores.setdefault(json.dumps(point), []).append(mae(learner.predict(val), val))
        print(f"seed {seed}: baseline-predictor grid done ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.mlp:
            curve = EpochMAE()
            mlp = ProfileMLP.from_settings(train.schema, seed=seed).meta_fit(train, callbacks=[curve], validation=val)
            mlp_curves[seed] = curve.val_mae
            for values in itertools.product(*GRID_FT.values()):
                point = dict(zip(GRID_FT, values))
                if point["finetune_steps"] == 0 and point["finetune_lr"] != GRID_FT["finetune_lr"][0]:
                    continue
                ft = ProfileMLPFineTune.from_settings(train.schema, overrides=point, seed=seed)
                ft.load_state_dict(mlp.state_dict())  # the same trained network, fine-tuned per user
                ft_scores.setdefault(json.dumps(point), []).append(mae(ft.predict(val), val))
            print(f"seed {seed}: profile-mlp done ({time.perf_counter() - t0:.0f} s)", flush=True)

    key, score = best(bp_scores)
    defaults = BaselinePredictor.Config()
    default_key = json.dumps({k: getattr(defaults, k) for k in GRID_BP})
    record["baseline-predictor"] = {
        "grid": GRID_BP,
        "scores": {k: {"mean": sum(v) / len(v), "per_seed": v} for k, v in bp_scores.items()},
        "best": {"settings": json.loads(key), "validation_mae": score},
        "previous_default": {"settings": json.loads(default_key),
                             "validation_mae": sum(bp_scores[default_key]) / len(bp_scores[default_key])
                             if default_key in bp_scores else None},
    }
    print("baseline-predictor best:", key, f"{score:.4f}")
    if args.mlp:
        n = min(len(c) for c in mlp_curves.values())
        mean_curve = [sum(mlp_curves[s][e] for s in mlp_curves) / len(mlp_curves) for e in range(n)]
        record["profile-mlp"] = {
            "validation_mae_per_epoch": {str(s): c for s, c in mlp_curves.items()},
            "mean_per_epoch": mean_curve,
            "best_epochs": 1 + min(range(n), key=lambda e: mean_curve[e]),
        }
        fkey, fscore = best(ft_scores)
        record["profile-mlp-finetune"] = {
            "grid": GRID_FT,
            "scores": {k: {"mean": sum(v) / len(v), "per_seed": v} for k, v in ft_scores.items()},
            "best": {"settings": json.loads(fkey), "validation_mae": fscore},
        }
        print("profile-mlp best epochs:", record["profile-mlp"]["best_epochs"], "finetune best:", fkey, f"{fscore:.4f}")
    record["wall_time_s"] = time.perf_counter() - t0
    record["environment"] = environment_info("cpu")
    out = Path(args.out or "benchmarks/results/simple_baselines_selection_ml-1m.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
