"""MeLU (Lee et al., KDD 2019): MAML over users on a profile-feature MLP, decision layers adapted.

Model (the paper's, fed with the dataset schema's features)::

    e_item = [emb(f) for f in item features]      # 32-d each; multi-valued: mean of active rows
    e_user = [emb(f) for f in user features]      # 32-d each
    y_hat  = MLP([e_item; e_user]) : width -> 64 -> ReLU -> 64 -> ReLU -> 1

Local update: one plain gradient step on the support MSE, applied to the decision MLP only
(``head.*``); embeddings are global-only. Global update: Adam on every parameter, over the mean
query MSE of a batch of 32 users. True second-order MAML by default (``first_order`` switches
to FOMAML).

Deviations from the paper / reference code (hoyeoplee/MeLU), and why:

* **Features**: the schema's features instead of MeLU's own (ML-1M in the MAMO protocol has
  rate, year, genres, directors / gender, age, occupation -- no actors, no zip code; MeLU does
  not use the year), because the MAMO authors fed every method the same inputs. Input width =
  32 x number of features (224 on ML-1M).
* **Data protocol**: MAMO's tasks (first 15 ratings by time = support, last 5 = query), not
  MeLU's random per-user split.
* **Second order**: the reference code copies the adapted weights into the module with
  ``load_state_dict``, which cuts the graph, so it is silently first-order (issue #9). We
  differentiate through the inner step (functional fast weights); ``first_order=True`` gives the
  reference code's effective behaviour.
* **Predictions are clipped** to the rating range at evaluation (``clip_predictions``; the
  reference code has no evaluation code, issue #7).
* **Presets**: ``paper`` = the reference code's ``options.py`` (local lr 5e-6, 1 step, Adam
  5e-5, 32 users, 20 epochs, last partial batch dropped) -- the values the MAMO authors used.
  With a 5e-6 local step the "adaptation" changes predictions by ~1e-4 of a rating: MeLU-paper
  is in effect a global profile MLP (the rates are known to be too small, issue #10).
  ``tuned`` (= the config defaults, so what the harness runs unless told otherwise; also
  ``benchmarks/configs/melu.toml``) uses rates found by a small search on ML-1M validation
  users, documented at :data:`TUNED`: local lr 0.01 x 1 step, Adam 1e-4, meta-gradient norm
  clipped at 10. ML-1M test, seed 0: paper MAE 0.829, tuned 0.798 (global mean 0.915).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from metarec.methods.maml import MAML_SPACE, MAMLConfig, MAMLLearner

#: The reference code's ``options.py`` values (what the MAMO authors ran).
PAPER: dict[str, Any] = {
    "embedding_dim": 32,
    "hidden": (64, 64),
    "multi_pooling": "mean",
    "inner_lr": 5e-6,
    "inner_steps": 1,
    "meta_lr": 5e-5,
    "meta_optimizer": "adam",
    "batch_size": 32,
    "epochs": 20,
    "drop_last": True,
    "first_order": False,
    "grad_clip": None,
}

#: Rates that actually adapt (issue #10), picked on ML-1M validation users (20 % of the training
#: users, seed 0; MAE after 20 epochs): paper 0.818 (global mean 0.918). Local lr {0.005, 0.01,
#: 0.05, 0.1} x steps {1, 2} at Adam 1e-3: best 0.802 (local 0.01, 1 step) but the meta-training
#: loss keeps falling while validation MAE rises -- Adam 1e-3 overfits in 20 epochs; at local
#: 0.01 x 1 step, Adam {1e-4, 3e-4}: 0.796 / 0.796 (1e-4 is better on cold items). More local
#: steps did not help on ML-1M (2: 0.813, 5: 0.810 at Adam 1e-3). On synthetic data (1,500
#: users) the same search favoured local 0.01 x 2 steps at Adam 1e-3 (0.489 vs paper 0.626).
#: Clipping the meta-gradient norm at 10 guards the first steps, where the support error (~3.5
#: before the output has learned the mean) is large.
TUNED: dict[str, Any] = {
    **PAPER,
    "inner_lr": 1e-2,
    "inner_steps": 1,
    "meta_lr": 1e-4,
    "grad_clip": 10.0,
}


@dataclass
class MeLUConfig(MAMLConfig):
    """MeLU's settings. The defaults are the ``tuned`` preset -- what ``metarec bench`` runs when
    no preset is named -- and ``paper`` holds the published values."""

    drop_last: bool = True
    inner_lr: float = TUNED["inner_lr"]
    inner_steps: int = TUNED["inner_steps"]
    meta_lr: float = TUNED["meta_lr"]
    grad_clip: float | None = TUNED["grad_clip"]


class MeLU(MAMLLearner):
    """MeLU: MAML on a profile-feature MLP; only the decision layers adapt to each user."""

    name: ClassVar[str] = "melu"
    description: ClassVar[str] = "MeLU (Lee et al. 2019): MAML, decision layers adapted per user"
    Config: ClassVar[type] = MeLUConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "tuned": TUNED}
    #: MAML's space (metarec.methods.maml.MAML_SPACE): local/global rates, local steps, widths, epochs.
    search_space: ClassVar[dict[str, dict[str, Any]]] = MAML_SPACE

    def local_parameter_names(self) -> list[str]:
        """The decision MLP (``head.*``): MeLU's ``fc1``, ``fc2`` and ``linear_out``."""
        return [n for n, _ in self.model.named_parameters() if n.startswith("head.")]
