"""The :class:`Learner` base class that every method subclasses, and training callbacks.

A learner is built from its config dataclass and the dataset's :class:`FeatureSchema`; it
meta-trains on the training users' tasks (:meth:`Learner.meta_fit`), then adapts to each test
user's support set and predicts the query ratings (:meth:`Learner.adapt_and_predict`).

Most meta-learners train the same way -- epochs over shuffled batches of users, one meta-step
per batch -- so :class:`EpisodicLearner` provides that loop (with seeding, callbacks and
resumable state) and asks a subclass only for :meth:`EpisodicLearner.meta_step`.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from metarec.config import ValidatedConfig, preset_config, setting
from metarec.nn import Activation, MultiPooling
from metarec.runtime import resolve_device, torch_generator
from metarec.schema import FeatureSchema
from metarec.tasks import TaskBatch, TaskSet


class LearnerContractError(RuntimeError):
    """A learner broke a rule every learner must keep; ``rule`` names it (see :mod:`metarec.testing`)."""

    def __init__(self, rule: str, message: str) -> None:
        self.rule = rule
        super().__init__(f"rule {rule!r} broken: {message}")


class Callback:
    """Hooks called during :meth:`Learner.meta_fit`; override the ones you need."""

    def on_fit_start(self, learner: "Learner", *, epochs: int, batches_per_epoch: int) -> None:
        """Called once before training (``epochs`` counts epochs still to run)."""

    def on_batch_end(self, learner: "Learner", *, epoch: int, batch: int, loss: float) -> None:
        """Called after each meta-step with the batch's meta-training loss."""

    def on_epoch_end(self, learner: "Learner", *, epoch: int, logs: dict[str, float]) -> None:
        """Called after each epoch; ``logs`` holds at least ``loss`` (mean over batches)."""

    def on_fit_end(self, learner: "Learner") -> None:
        """Called once after training."""


def _fire(callbacks: Iterable[Callback], hook: str, learner: "Learner", **kwargs: Any) -> None:
    for cb in callbacks:
        getattr(cb, hook)(learner, **kwargs)


@dataclass
class LearnerConfig(ValidatedConfig):
    """Settings every learner understands.

    Every field is validated at construction (type, choices, bounds: :mod:`metarec.config`), so
    a config built directly and one built from TOML or ``--set`` accept and refuse the same values.
    """

    #: Clip predictions to the dataset's rating range (a regressor can overshoot).
    clip_predictions: bool = True
    #: Users per batch when predicting.
    eval_batch_size: int = setting(256, ge=1)


class Learner(abc.ABC):
    """Base class of every method.

    Subclasses set ``name``/``description``, a ``Config`` dataclass (subclass of
    :class:`LearnerConfig`), optional named ``presets`` (partial configs) and a ``search_space``
    (config field -> range, plain dicts; see :mod:`metarec.tuning.space`) for ``metarec tune``,
    build their models in :meth:`build`, and implement :meth:`meta_fit` and :meth:`adapt_and_predict`.

    State (for checkpoints) is every :class:`torch.nn.Module`, :class:`torch.optim.Optimizer` and
    :class:`torch.Tensor` attribute, collected by :meth:`state_dict`; override it if a learner
    keeps state elsewhere.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The evaluation protocol this learner follows: ``user-cold`` (tasks are users, MAMO's four
    #: cells). Item warm-up learners (:mod:`metarec.warmup`) say ``item-warmup``; ``metarec bench``
    #: refuses a learner whose protocol is not the one asked for.
    protocol: ClassVar[str] = "user-cold"
    Config: ClassVar[type] = LearnerConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Whether building or fitting draws random numbers from the run seed. A closed-form learner
    #: sets False: :func:`metarec.testing.check_learner` then requires the same predictions for
    #: every seed instead of different ones.
    stochastic: ClassVar[bool] = True
    #: What :meth:`adapt_and_predict` returns: ``rating`` -- calibrated ratings on the dataset's
    #: scale (MAE/RMSE are meaningful) -- or ``score`` -- only the order within a user counts
    #: (e.g. a model trained with a ranking loss); the harness then reports MAE as n/a and skips
    #: clipping to the rating range.
    output: ClassVar[Literal["rating", "score"]] = "rating"
    #: Presets that hold a paper's published values (the rest are hand-picked); results say which.
    paper_presets: ClassVar[tuple[str, ...]] = ("paper",)
    #: What ``metarec tune`` searches: ``{field: {"type": "float"|"int"|"categorical", ...}}``.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        schema: FeatureSchema,
        config: Any | None = None,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if config is None:
            config = self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} expects a {self.Config.__name__} config, "
                f"got {type(config).__name__}"
            )
        self.schema = schema
        self.config = config
        self.device = resolve_device(device)
        self.seed = int(seed)
        # Model initialisation is part of the run's randomness: seed it from the run seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.build()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_settings(
        cls,
        schema: FeatureSchema,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> "Learner":
        """Build from layered settings: Config defaults < ``preset`` < ``overrides``."""
        return cls(schema, preset_config(cls, preset, overrides), device=device, seed=seed)

    def build(self) -> None:
        """Create models and other state; called by ``__init__`` under the run's seed."""

    # ----------------------------------------------------------------- the contract
    @abc.abstractmethod
    def meta_fit(
        self,
        train: TaskSet,
        *,
        callbacks: Sequence[Callback] = (),
        validation: TaskSet | None = None,
    ) -> "Learner":
        """Meta-train on the training users' tasks; returns ``self``."""

    @abc.abstractmethod
    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        """Adapt to each user's support set and predict the query ratings, ``[B, Q]``.

        The batch's query *items* are given, their ratings are not: ``batch.query_ratings`` is
        all NaN here (:meth:`predict` hides them). Must not change the learner's state: test
        users never influence each other.
        """

    def precompute_item_inputs(self, items_x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Item inputs that depend on the item features alone, for a caller to compute once.

        Whatever this returns (``{key: [N, ...]}`` for the ``N`` rows of ``items_x``) must be the
        same for every user and unchanged by adaptation: an embedding of the item features by an
        embedder that is never adapted locally, the first layer's output on it, ... A caller that
        scores the same items for many users (the serving path, :mod:`metarec.serving.model`)
        computes it once under ``no_grad`` and passes the rows it needs back inside
        ``support_features`` / ``query_features``, under the same keys, next to the raw
        columns; :meth:`adapt_and_predict` then uses them instead of recomputing them and must
        give the same numbers either way (the contract tests check it). Default: nothing to
        precompute. Only valid for the learner's current parameters: recompute after training.
        """
        return {}

    # ----------------------------------------------------------------- helpers
    def predict(self, tasks: TaskSet, batch_size: int | None = None) -> Tensor:
        """Predictions for every query rating of ``tasks``, ``[N, Q]`` on the CPU, in task order.

        The learner never sees the query ratings: they are replaced by NaN before any batch is
        built, so a learner that reads them predicts NaN, which is refused here with a
        :class:`LearnerContractError` naming the rule (``query-blind``).
        """
        batch_size = batch_size or self.config.eval_batch_size
        tasks = tasks.without_query_ratings()
        out = []
        for batch in tasks.batches(batch_size, device=self.device):
            pred = self.adapt_and_predict(batch)
            if not isinstance(pred, Tensor) or pred.shape != batch.query_items.shape:
                shape = list(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
                raise LearnerContractError(
                    "prediction-shape",
                    f"{type(self).__name__}.adapt_and_predict returned {shape} for a batch of "
                    f"{list(batch.query_items.shape)} query items",
                )
            real = pred.detach()[batch.query_mask]
            if not bool(torch.isfinite(real).all()):
                n_nan = int(torch.isnan(real).sum())
                raise LearnerContractError(
                    "query-blind" if n_nan else "finite-predictions",
                    f"{type(self).__name__}.adapt_and_predict returned {n_nan} NaN and "
                    f"{int(torch.isinf(real).sum())} infinite predictions. At prediction time the "
                    "query rating slots are NaN: a learner must use only the support ratings and the "
                    "query items' features (if it does, NaN means training diverged: lower the rates)",
                )
            out.append(self.postprocess(pred).detach().cpu())
        if not out:
            return torch.empty(0, tasks.n_query)
        return torch.cat(out)

    def postprocess(self, pred: Tensor) -> Tensor:
        """Clip to the rating range when ``config.clip_predictions`` is on (ratings only, not scores)."""
        if self.config.clip_predictions and self.output == "rating":
            return pred.clamp(self.schema.rating_min, self.schema.rating_max)
        return pred

    # ----------------------------------------------------------------- state
    def _state_attributes(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in vars(self).items()
            if isinstance(v, (nn.Module, torch.optim.Optimizer, Tensor))
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to restore this learner (modules, optimizers, tensors, counters)."""
        state: dict[str, Any] = {}
        for k, v in self._state_attributes().items():
            state[k] = v.detach().clone() if isinstance(v, Tensor) else v.state_dict()
        state["__extra__"] = self.extra_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (strict: every key must match)."""
        own = self._state_attributes()
        missing = set(own) - set(state)
        unexpected = set(state) - set(own) - {"__extra__"}
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        for k, v in own.items():
            if isinstance(v, Tensor):
                with torch.no_grad():
                    v.copy_(state[k].to(v.device))
            elif isinstance(v, torch.optim.Optimizer):
                v.load_state_dict(state[k])
            else:
                v.load_state_dict(state[k])
        self.load_extra_state(state.get("__extra__", {}))

    def extra_state(self) -> dict[str, Any]:
        """JSON-able counters to checkpoint besides tensors (override to add more)."""
        return {}

    def run_info(self) -> dict[str, Any]:
        """JSON-able diagnostics of the fit and the last :meth:`predict` for a run's record
        (``results.json`` ``learner_info``), e.g. s2Meta's inner steps per user; none by default."""
        return {}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{type(self).__name__}({fields})"


@dataclass
class EpisodicConfig(LearnerConfig):
    """Settings of the standard episodic training loop."""

    #: Passes over all training users.
    epochs: int = setting(20, ge=0)
    #: Users per meta-update.
    batch_size: int = setting(32, ge=1)
    #: Drop the last, smaller batch of an epoch (MeLU's reference code does).
    drop_last: bool = False


@dataclass
class RatingMLPConfig(EpisodicConfig):
    """Episodic training of :class:`metarec.nn.RatingMLP`: the network's settings (MeLU's sizes)."""

    #: Embedding size per feature and hidden layers of the rating MLP (MeLU: 32 and 64-64).
    embedding_dim: int = setting(32, ge=1)
    hidden: tuple[int, ...] = setting((64, 64), ge=1)
    activation: Activation = "relu"
    #: How a multi-valued feature (genres, directors) is pooled: mean (MeLU), sum, sigmoid (MAMO).
    multi_pooling: MultiPooling = "mean"


class EpisodicLearner(Learner):
    """A learner trained by epochs of meta-steps over shuffled batches of training users.

    Subclasses implement :meth:`meta_step` (one meta-update on a batch, returning its loss) and
    :meth:`adapt_and_predict`. The user order of each epoch comes from the run seed and the epoch
    number, so an interrupted run resumed from a checkpoint continues exactly as it would have.
    """

    Config: ClassVar[type] = EpisodicConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.epochs_done = 0
        super().__init__(*args, **kwargs)

    @abc.abstractmethod
    def meta_step(self, batch: TaskBatch) -> float:
        """One meta-update on ``batch``; returns the meta-training loss."""

    def on_fit_start(self, train: TaskSet) -> None:
        """Hook before the first epoch (create optimisers lazily here if needed)."""

    def total_epochs(self) -> int:
        """Epochs :meth:`meta_fit` runs in all (``config.epochs``); a learner with several
        training phases (ColdNAS: search, then the final model) counts them all here, so that
        checkpoints and resume see one epoch counter."""
        return self.config.epochs

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Hook after each epoch; may return extra numbers for the logs."""
        return {}

    def meta_fit(
        self,
        train: TaskSet,
        *,
        callbacks: Sequence[Callback] = (),
        validation: TaskSet | None = None,
    ) -> "EpisodicLearner":
        cfg = self.config
        if len(train) == 0:
            raise ValueError("meta_fit needs at least one training task")
        self.on_fit_start(train)
        n_batches = train.num_batches(cfg.batch_size, cfg.drop_last)
        total_epochs = self.total_epochs()
        _fire(callbacks, "on_fit_start", self, epochs=total_epochs - self.epochs_done, batches_per_epoch=n_batches)
        for epoch in range(self.epochs_done, total_epochs):
            gen = torch_generator(self.seed, "epoch-order", epoch)
            total, count = 0.0, 0
            batches = train.batches(
                cfg.batch_size, shuffle=True, generator=gen, drop_last=cfg.drop_last, device=self.device
            )
            for b, batch in enumerate(batches):
                loss = float(self.meta_step(batch))
                total += loss
                count += 1
                _fire(callbacks, "on_batch_end", self, epoch=epoch, batch=b, loss=loss)
            self.epochs_done = epoch + 1
            logs = {"loss": total / max(count, 1), **self.on_epoch_end(epoch)}
            if validation is not None and len(validation):
                pred = self.predict(validation)
                mask = validation.query_mask
                logs["val_mae"] = float((pred - validation.query_ratings).abs()[mask].mean())
            _fire(callbacks, "on_epoch_end", self, epoch=epoch, logs=logs)
        _fire(callbacks, "on_fit_end", self)
        return self

    def extra_state(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self.epochs_done = int(extra.get("epochs_done", 0))
