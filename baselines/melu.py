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
  ``benchmarks/configs/melu.toml``) is the best of a 20-trial ``metarec tune`` study on the
  tuning pool (:data:`TUNED`: 16-d embeddings, a 128-64 network, 5 local steps of 4.5e-3, Adam
  1.1e-4, clip 10, 15 epochs). ``hand`` is the earlier hand-picked search (:data:`HAND`: local
  lr 0.01 x 1 step, Adam 1e-4, clip 10), which scores worse on the pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from metarec.config import setting
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

#: Rates that actually adapt (issue #10), picked by hand on ML-1M validation users (20 % of the
#: training users, seed 0 -- users that are test users of the other seeds; MAE after 20 epochs):
#: paper 0.818 (global mean 0.918). Local lr {0.005, 0.01, 0.05, 0.1} x steps {1, 2} at Adam
#: 1e-3: best 0.802 (local 0.01, 1 step) but the meta-training loss keeps falling while
#: validation MAE rises -- Adam 1e-3 overfits in 20 epochs; at local 0.01 x 1 step, Adam {1e-4,
#: 3e-4}: 0.796 / 0.796 (1e-4 is better on cold items). Clipping the meta-gradient norm at 10
#: guards the first steps, where the support error (~3.5 before the output has learned the mean)
#: is large. The defaults until the tuned preset replaced them; Table 1 of 2026-12-01 ran these.
HAND: dict[str, Any] = {
    **PAPER,
    "inner_lr": 1e-2,
    "inner_steps": 1,
    "meta_lr": 1e-4,
    "grad_clip": 10.0,
}

#: The best of 20 ``metarec tune`` trials on ML-1M's tuning pool (users that are never test
#: users; benchmarks/results/tune-ml1m-20trials-2026-12-02), rounded to 4 significant digits.
#: On that pool it beats :data:`HAND` (see the folder's NOTES.md), so it is the default.
TUNED: dict[str, Any] = {
    **PAPER,
    "embedding_dim": 16,
    "hidden": (128, 64),
    "epochs": 15,
    "inner_lr": 4.456e-3,
    "inner_steps": 5,
    "meta_lr": 1.104e-4,
    "grad_clip": 10.0,
}


@dataclass
class MeLUConfig(MAMLConfig):
    """MeLU's settings. The defaults are the ``tuned`` preset -- what ``metarec bench`` runs when
    no preset is named; ``paper`` holds the published values, ``hand`` the earlier hand-picked rates."""

    embedding_dim: int = setting(TUNED["embedding_dim"], ge=1)
    hidden: tuple[int, ...] = setting(TUNED["hidden"], ge=1)
    epochs: int = setting(TUNED["epochs"], ge=0)
    drop_last: bool = True
    inner_lr: float = setting(TUNED["inner_lr"], ge=0)
    inner_steps: int = setting(TUNED["inner_steps"], ge=0)
    meta_lr: float = setting(TUNED["meta_lr"], gt=0)
    grad_clip: float | None = setting(TUNED["grad_clip"], gt=0)


class MeLU(MAMLLearner):
    """MeLU: MAML on a profile-feature MLP; only the decision layers adapt to each user."""

    name: ClassVar[str] = "melu"
    description: ClassVar[str] = "MeLU (Lee et al. 2019): MAML, decision layers adapted per user"
    Config: ClassVar[type] = MeLUConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "tuned": TUNED, "hand": HAND}
    #: MAML's space (metarec.methods.maml.MAML_SPACE): local/global rates, local steps, widths, epochs.
    search_space: ClassVar[dict[str, dict[str, Any]]] = MAML_SPACE

    def local_parameter_names(self) -> list[str]:
        """The decision MLP (``head.*``): MeLU's ``fc1``, ``fc2`` and ``linear_out``."""
        return [n for n, _ in self.model.named_parameters() if n.startswith("head.")]
