"""Strong simple baselines: what a cold-start method must beat before meta-learning earns its keep.

* :class:`GlobalMean` -- one number, the mean training rating.
* :class:`BaselinePredictor` -- the classic ``mu + b_i + b_u`` baseline (Koren, 2010): item
  biases learned on the training users, a user bias estimated from the test user's support set,
  both shrunk towards 0 by a regulariser.
* :class:`ProfileMLP` -- the profile-feature rating network (:class:`~metarec.nn.RatingMLP`,
  MeLU's decision network) trained by plain regression on every training rating, with no
  per-user adaptation: it shows what the features alone give.
* :class:`ProfileMLPFineTune` -- the same network, fine-tuned on each test user's support set by
  a few SGD steps (the engine's batched inner loop): "pre-train, then fine-tune", the usual
  non-meta answer to a new user.

All four read only the training users' ratings in :meth:`meta_fit` and only the test user's
support ratings in :meth:`adapt_and_predict`, exactly like the meta-learners they are compared to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor

from metarec import engine
from metarec.config import setting
from metarec.learner import Callback, EpisodicLearner, Learner, LearnerConfig, RatingMLPConfig
from metarec.nn import ITEM_EMBEDDING, RatingMLP
from metarec.tasks import TaskBatch, TaskSet

#: Where the defaults of ``baseline-predictor``, ``profile-mlp`` and ``profile-mlp-finetune``
#: come from: one ``metarec tune`` study per method, 20 trials each, on ML-1M's tuning pool.
TUNED_ON = "benchmarks/results/tune-ml1m-20trials-2026-12-02"


def _training_ratings(train: TaskSet) -> tuple[Tensor, Tensor]:
    """Every real (item row, rating) pair of the training users: support and query alike."""
    items = torch.cat([train.support_items[train.support_mask], train.query_items[train.query_mask]])
    ratings = torch.cat([train.support_ratings[train.support_mask], train.query_ratings[train.query_mask]])
    return items, ratings


def _non_episodic_fit(learner: Learner, callbacks: Sequence[Callback], fit: Any) -> None:
    """Run a closed-form ``fit()`` between the callbacks' start and end hooks (no epochs)."""
    for cb in callbacks:
        cb.on_fit_start(learner, epochs=0, batches_per_epoch=0)
    fit()
    for cb in callbacks:
        cb.on_fit_end(learner)


# --------------------------------------------------------------------------- global mean


class GlobalMean(Learner):
    """Predict the mean rating of all training users' ratings, for everyone and everything."""

    name: ClassVar[str] = "global-mean"
    description: ClassVar[str] = "mean training rating (a floor every method must clear)"
    Config: ClassVar[type] = LearnerConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}
    stochastic: ClassVar[bool] = False  # a mean: no random numbers anywhere
    #: Its one setting; tuning it costs seconds and keeps the budget equal for every method.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "clip_predictions": {"type": "categorical", "choices": [True, False]},
    }

    def build(self) -> None:
        self.mu = torch.zeros((), device=self.device)

    def meta_fit(
        self, train: TaskSet, *, callbacks: Sequence[Callback] = (), validation: TaskSet | None = None
    ) -> "GlobalMean":
        if len(train) == 0:
            raise ValueError("meta_fit needs at least one training task")

        def fit() -> None:
            _, ratings = _training_ratings(train)
            self.mu = ratings.double().mean().float().to(self.device)

        _non_episodic_fit(self, callbacks, fit)
        return self

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        return self.mu.expand(batch.query_ratings.shape).clone()


# --------------------------------------------------------------------------- baseline predictor


@dataclass
class BaselinePredictorConfig(LearnerConfig):
    """Shrinkage of the biases and alternating passes.

    Defaults: the best of 20 Optuna trials on ML-1M's tuning pool (``protocol.tuning_fraction``
    0.1: users that are never a test user of any seed), the same budget every tuned method got,
    rounded to 4 significant digits -- see :data:`TUNED_ON` and the committed study. Koren's
    values (TKDD 2010, Sec. 2.1: 25 for items, 10 for users, one pass) are the ``koren`` preset.
    """

    #: Item-bias regulariser: ``b_i = sum(r - mu - b_u) / (item_reg + n_i)``. Items rated a few
    #: times get a bias near 0 instead of an over-confident one; cold items (never rated by a
    #: training user) get exactly 0.
    item_reg: float = setting(1.601, ge=0)
    #: User-bias regulariser: ``b_u = sum(r - mu - b_i) / (user_reg + n_u)`` over the support set,
    #: so 15 support ratings move a user only part of the way from the mean.
    user_reg: float = setting(0.2828, ge=0)
    #: Alternating passes over the training users (1 = Koren's one-pass estimate: item biases
    #: with user biases 0). More passes re-estimate the item biases after removing the
    #: training users' own biases (alternating least squares on the two bias vectors).
    sweeps: int = setting(2, ge=1)


def _shrunk_mean(residual: Tensor, group: Tensor, n_groups: int, reg: float, mask: Tensor | None = None) -> Tensor:
    """Per-group ``sum(residual) / (reg + count)``: a regularised mean, 0 for an empty group."""
    weight = torch.ones_like(residual) if mask is None else mask.to(residual.dtype)
    sums = torch.zeros(n_groups, dtype=residual.dtype, device=residual.device).index_add_(0, group, residual * weight)
    counts = torch.zeros(n_groups, dtype=residual.dtype, device=residual.device).index_add_(0, group, weight)
    denom = counts + reg
    return torch.where(denom > 0, sums / denom.clamp_min(1e-12), torch.zeros_like(sums))


class BaselinePredictor(Learner):
    """``mu + b_i + b_u``: the classic bias baseline, with the user bias read off the support set.

    ``mu`` and the item biases come from the training users; a test user's bias is their
    regularised mean residual on their support ratings. A warm item keeps its learned bias; a
    cold one (no training rating) falls back to ``mu + b_u``.
    """

    name: ClassVar[str] = "baseline-predictor"
    description: ClassVar[str] = "global mean + regularised item bias + support-set user bias"
    Config: ClassVar[type] = BaselinePredictorConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # Koren's published shrinkage (TKDD 2010) and one pass: the defaults before they were
        # chosen on validation users.
        "koren": {"item_reg": 25.0, "user_reg": 10.0, "sweeps": 1},
        # Without shrinkage: shows what the regularisers buy on rarely rated items.
        "unregularised": {"item_reg": 0.0, "user_reg": 0.0},
    }
    #: Shrinkage on a log scale around Koren's 25 / 10, and the alternating passes.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "item_reg": {"type": "float", "low": 0.1, "high": 200.0, "log": True},
        "user_reg": {"type": "float", "low": 0.1, "high": 100.0, "log": True},
        "sweeps": {"type": "int", "low": 1, "high": 5},
    }

    stochastic: ClassVar[bool] = False  # closed-form biases: no random numbers anywhere

    def build(self) -> None:
        self.mu = torch.zeros((), device=self.device)
        self.item_bias = torch.zeros(0, device=self.device)

    def meta_fit(
        self, train: TaskSet, *, callbacks: Sequence[Callback] = (), validation: TaskSet | None = None
    ) -> "BaselinePredictor":
        if len(train) == 0:
            raise ValueError("meta_fit needs at least one training task")
        _non_episodic_fit(self, callbacks, lambda: self._fit(train))
        return self

    def _fit(self, train: TaskSet) -> None:
        c = self.config
        n_items = len(train.items)
        # One row per training rating, with its task number (for the training users' biases).
        items = torch.cat([train.support_items, train.query_items], dim=1)
        ratings = torch.cat([train.support_ratings, train.query_ratings], dim=1).double()
        mask = torch.cat([train.support_mask, train.query_mask], dim=1)
        task = torch.arange(len(train)).unsqueeze(1).expand_as(items)
        items, ratings, task = items[mask], ratings[mask], task[mask]
        mu = ratings.mean()
        user_bias = torch.zeros(len(train), dtype=torch.float64)
        item_bias = torch.zeros(n_items, dtype=torch.float64)
        for _ in range(c.sweeps):
            item_bias = _shrunk_mean(ratings - mu - user_bias[task], items, n_items, c.item_reg)
            user_bias = _shrunk_mean(ratings - mu - item_bias[items], task, len(train), c.user_reg)
        self.mu = mu.float().to(self.device)
        self.item_bias = item_bias.float().to(self.device)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # The item table's size is only known after fitting: take the stored shape.
        if "item_bias" in state:
            self.item_bias = torch.zeros_like(state["item_bias"], device=self.device)
        super().load_state_dict(state)

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        if self.item_bias.numel() == 0:
            raise RuntimeError("BaselinePredictor.adapt_and_predict called before meta_fit")
        c = self.config
        s_res = batch.support_ratings - self.mu - self.item_bias[batch.support_items]
        m = batch.support_mask.to(s_res.dtype)
        b_u = (s_res * m).sum(1) / (m.sum(1) + c.user_reg).clamp_min(1e-12)
        return self.mu + self.item_bias[batch.query_items] + b_u.unsqueeze(1)


# --------------------------------------------------------------------------- profile MLP


@dataclass
class ProfileMLPConfig(RatingMLPConfig):
    """The rating network (MeLU's :class:`~metarec.nn.RatingMLP`) and its plain training.

    Defaults: the best of 20 trials on ML-1M's tuning pool (:data:`TUNED_ON`), rounded to 4
    significant digits; MeLU's sizes and rate (32, 64-64, 1e-3, batches of 32, 20 epochs), with
    which the gap to MeLU measures meta-learning alone, are the ``melu-sizes`` preset.
    """

    embedding_dim: int = setting(16, ge=1)
    hidden: tuple[int, ...] = setting((64, 64), ge=1)
    epochs: int = setting(30, ge=0)
    batch_size: int = setting(16, ge=1)
    #: Adam on the mean squared error of all the batch users' ratings (support and query).
    lr: float = setting(9.535e-3, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    #: Clip the gradient's global norm (None = no clipping).
    grad_clip: float | None = setting(None, gt=0)


#: MeLU's network sizes and a plain Adam rate: the profile MLPs' defaults before they were tuned.
MELU_SIZES: dict[str, Any] = {"embedding_dim": 32, "hidden": (64, 64), "epochs": 20, "batch_size": 32, "lr": 1e-3,
                              "weight_decay": 0.0}


#: The rating network's width and its plain training: the same ranges as the MAML learners' network.
PROFILE_MLP_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "categorical", "choices": [0.0, 1e-5, 1e-4]},
    "embedding_dim": {"type": "categorical", "choices": [16, 32, 64]},
    "hidden": {"type": "categorical", "choices": [[64, 64], [128, 64], [64, 32], [128, 128]]},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "epochs": {"type": "int", "low": 5, "high": 30, "step": 5},
}


class ProfileMLP(EpisodicLearner):
    """Profile features + item features -> rating, trained on every training rating; no adaptation.

    Trained with the standard episodic loop (batches of training users, one gradient step per
    batch on all of their ratings), which gives it the same seeding, callbacks and resumable
    checkpoints as the meta-learners.
    """

    name: ClassVar[str] = "profile-mlp"
    description: ClassVar[str] = "profile-feature MLP trained on all training ratings, no per-user adaptation"
    Config: ClassVar[type] = ProfileMLPConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "melu-sizes": dict(MELU_SIZES),
        # A short run for smoke tests and CI; not a result to report.
        "quick": {"epochs": 2},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = PROFILE_MLP_SPACE

    def build(self) -> None:
        c = self.config
        self.model = RatingMLP.from_config(self.schema, c).to(self.device)
        self.optimizer = engine.make_optimizer("adam", self.model.parameters(), c.lr, c.weight_decay)

    def meta_step(self, batch: TaskBatch) -> float:
        self.model.train()
        pred = torch.cat(
            [self.model(batch.user_features, batch.support_features), self.model(batch.user_features, batch.query_features)],
            dim=1,
        )
        target = torch.cat([batch.support_ratings, batch.query_ratings], dim=1)
        mask = torch.cat([batch.support_mask, batch.query_mask], dim=1)
        loss = engine.masked_mse(pred, target, mask)
        return engine.outer_step(self.optimizer, loss, grad_clip=self.config.grad_clip)

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        self.model.eval()
        with torch.no_grad():
            return self.model(batch.user_features, batch.query_features)

    def precompute_item_inputs(self, items_x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The items' embedding: the item embedder is never adapted (fine-tuning moves the head only)."""
        self.model.eval()
        with torch.no_grad():
            return {ITEM_EMBEDDING: self.model.item_embedder(items_x)}


@dataclass
class ProfileMLPFineTuneConfig(ProfileMLPConfig):
    """:class:`ProfileMLPConfig` plus the per-user fine-tuning on the support set.

    Tuned on its own (the same 20-trial budget, :data:`TUNED_ON`), so its network is not the
    plain profile MLP's; ``--preset profile-mlp-finetune=melu-sizes`` trains the two alike.
    """

    embedding_dim: int = setting(32, ge=1)
    hidden: tuple[int, ...] = setting((128, 64), ge=1)
    epochs: int = setting(15, ge=0)
    lr: float = setting(7.63e-3, gt=0)
    #: Plain SGD steps on the user's support ratings (MSE), applied to every parameter of the
    #: MLP head (the embedders stay global, as in MeLU's local update). 0 = no fine-tuning.
    finetune_steps: int = setting(11, ge=0)
    #: Step size of those SGD steps. The network was not trained to be fine-tuned (no
    #: meta-learning), so too large a step overshoots (on the synthetic data 1e-2 is worse than
    #: no fine-tuning after 1-5 steps): the step has to be tuned with the network.
    finetune_lr: float = setting(5.161e-3, ge=0)


class ProfileMLPFineTune(ProfileMLP):
    """:class:`ProfileMLP`, then a few SGD steps on each test user's support set (head only).

    Training is :class:`ProfileMLP`'s; with the same network settings (e.g. both at preset
    ``melu-sizes``) and seed, the difference between the two rows of a benchmark is the per-user
    fine-tuning alone.
    """

    name: ClassVar[str] = "profile-mlp-finetune"
    description: ClassVar[str] = "profile-feature MLP, fine-tuned on each user's support set (SGD on the head)"
    Config: ClassVar[type] = ProfileMLPFineTuneConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        **ProfileMLP.presets,
        "melu-sizes": {**MELU_SIZES, "finetune_lr": 1e-3},
    }
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        **PROFILE_MLP_SPACE,
        "finetune_steps": {"type": "int", "low": 1, "high": 20},
        "finetune_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    }

    def build(self) -> None:
        super().build()
        self.forward = engine.module_forward(self.model)
        self.local_names = [n for n, _ in self.model.named_parameters() if n.startswith("head.")]

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        c = self.config
        self.model.eval()
        if c.finetune_steps == 0:
            return super().adapt_and_predict(batch)
        return engine.adapt_and_predict_head(
            self.model,
            self.forward,
            dict(self.model.named_parameters()),
            self.local_names,
            batch,
            lr=c.finetune_lr,
            steps=c.finetune_steps,
        )


__all__ = [
    "BaselinePredictor",
    "BaselinePredictorConfig",
    "GlobalMean",
    "ProfileMLP",
    "ProfileMLPConfig",
    "ProfileMLPFineTune",
    "ProfileMLPFineTuneConfig",
]
