"""A generic MAML learner: a model, a set of locally adapted parameters, and the engine.

MeLU and MetaCS-DNN are this class with a different network or a different local set; the
docs tutorial's "add your own method" learner is one too. Subclasses override
:meth:`MAMLLearner.build_model` and/or :meth:`MAMLLearner.local_parameter_names`.

The inner loop runs on a choice of backends (config ``backend``) that compute the same numbers:
metarec's batched ``torch.func`` engine (default), a per-user ``loop`` reference, or
``learn2learn`` (:mod:`metarec.backends.learn2learn`, optional dependency) for interoperability.
``algorithm="metasgd"`` learns one inner step size per local weight (Meta-SGD) on any backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from metarec import engine
from metarec.config import setting
from metarec.learner import EpisodicLearner, RatingMLPConfig
from metarec.nn import ITEM_EMBEDDING, RatingMLP
from metarec.tasks import TaskBatch


@dataclass
class MAMLConfig(RatingMLPConfig):
    """Settings of a MAML-trained rating model (defaults: MeLU's published values)."""

    #: Local (inner) learning rate and number of plain gradient steps on the support set.
    inner_lr: float = setting(5e-6, ge=0)
    inner_steps: int = setting(1, ge=0)
    #: Inner steps at evaluation (None = same as training).
    eval_inner_steps: int | None = setting(None, ge=0)
    #: Drop second-order terms (FOMAML). False = true MAML, differentiating through the inner steps.
    first_order: bool = False
    meta_lr: float = setting(5e-5, gt=0)
    meta_optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = setting(0.0, ge=0)
    #: Clip the meta-gradient's global norm (None = no clipping).
    grad_clip: float | None = setting(None, gt=0)
    #: Users adapted at once inside vmap (None = the whole batch); bounds memory.
    chunk_size: int | None = setting(None, ge=1)
    #: ``torch.func`` (batched over users) or ``loop`` (one user at a time; same numbers, slower),
    #: or ``learn2learn`` (one user at a time through ``learn2learn.algorithms``; needs the optional
    #: learn2learn package, see :mod:`metarec.backends.learn2learn`; same numbers as the others).
    backend: Literal["torch.func", "loop", "learn2learn"] = "torch.func"
    #: ``maml``: one inner step size ``inner_lr``. ``metasgd`` (Meta-SGD, Li et al. 2017): one
    #: learned step size per entry of every local parameter, initialised to ``inner_lr`` and
    #: meta-trained with the model (run by ``learn2learn.algorithms.MetaSGD`` on that backend).
    algorithm: Literal["maml", "metasgd"] = "maml"


#: MAML's rates on a log scale (the published 5e-6 local rate at the bottom), local steps, the
#: network's width (the same choices as the simple profile MLP's) and the training length.
MAML_SPACE: dict[str, dict[str, Any]] = {
    "inner_lr": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "inner_steps": {"type": "int", "low": 1, "high": 5},
    "meta_lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "grad_clip": {"type": "categorical", "choices": [1.0, 10.0, 100.0]},
    "embedding_dim": {"type": "categorical", "choices": [16, 32, 64]},
    "hidden": {"type": "categorical", "choices": [[64, 64], [128, 64], [64, 32], [128, 128]]},
    "epochs": {"type": "int", "low": 5, "high": 30, "step": 5},
}


class MAMLLearner(EpisodicLearner):
    """MAML over users on a profile-feature rating MLP; local update of the MLP head only."""

    name: ClassVar[str] = "maml"
    description: ClassVar[str] = "MAML on a profile-feature rating MLP (head adapted locally)"
    Config: ClassVar[type] = MAMLConfig
    search_space: ClassVar[dict[str, dict[str, Any]]] = MAML_SPACE

    # -- what a subclass changes -------------------------------------------------
    def build_model(self) -> nn.Module:
        """The rating model; override to use another network (it must map ``(user_x, items_x)`` to ``[N]``)."""
        c = self.config
        return RatingMLP.from_config(self.schema, c)

    def local_parameter_names(self) -> list[str]:
        """Parameters adapted on each user's support set (the rest are global-only)."""
        return [n for n, _ in self.model.named_parameters() if n.startswith("head.")]

    # -- machinery ----------------------------------------------------------------
    def build(self) -> None:
        c = self.config
        self.model = self.build_model().to(self.device)
        self.local_names = self.local_parameter_names()
        if not self.local_names:
            raise ValueError(f"{type(self).__name__}: no locally adapted parameters were declared")
        self.forward = engine.module_forward(self.model)
        meta_params: list = [{"params": list(self.model.parameters())}]
        if c.algorithm == "metasgd":
            # One step size per entry of each local parameter (ParameterDict keys may not hold dots).
            self.inner_lrs = nn.ParameterDict({
                _lr_key(n): nn.Parameter(torch.full_like(p, c.inner_lr))
                for n, p in self.model.named_parameters() if n in self.local_names
            })
            if len(self.inner_lrs) != len(self.local_names):
                raise ValueError(f"{type(self).__name__}: local parameter names collide once dots become '__'")
            meta_params.append({"params": list(self.inner_lrs.parameters()), "weight_decay": 0.0})
        self.optimizer = engine.make_optimizer(c.meta_optimizer, meta_params, c.meta_lr, c.weight_decay)
        # The learn2learn glue is a plain object (not a module): checkpoints do not depend on the backend.
        self._l2l = None
        if c.backend == "learn2learn":
            from metarec.backends.learn2learn import Learn2LearnInnerLoop  # imports learn2learn only now

            self._l2l = Learn2LearnInnerLoop(
                self.model, self.local_names, lr=c.inner_lr, first_order=c.first_order,
                algorithm=c.algorithm, lrs=self.per_parameter_lrs() if c.algorithm == "metasgd" else None,
            )

    def params(self) -> dict[str, Tensor]:
        """The model's parameters by name: the meta-parameters the engine starts each user from."""
        return dict(self.model.named_parameters())

    def per_parameter_lrs(self) -> dict[str, Tensor]:
        """Meta-SGD's learned step sizes by local parameter name (the engine takes this mapping as ``lr``)."""
        return {n: self.inner_lrs[_lr_key(n)] for n in self.local_names}

    def inner_lr(self, *, detach: bool = False) -> engine.LearningRate:
        """The inner step size: ``config.inner_lr``, or Meta-SGD's per-parameter mapping."""
        if self.config.algorithm != "metasgd":
            return self.config.inner_lr
        return {n: s.detach() if detach else s for n, s in self.per_parameter_lrs().items()}

    def precompute_item_inputs(self, items_x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The items' embedding, when the model has an ``item_embedder`` that is not adapted locally."""
        return _item_embedding(self.model, self.local_names, items_x)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """Mean query loss over the batch's users after local adaptation."""
        c = self.config
        if c.backend == "learn2learn":
            return self._l2l.query_losses(self.forward, self.params(), batch, steps=c.inner_steps).mean()
        fn = engine.query_losses if c.backend == "torch.func" else engine.query_losses_looped
        kwargs = {"chunk_size": c.chunk_size} if c.backend == "torch.func" else {}
        losses = fn(
            self.forward, self.params(), self.local_names, batch,
            lr=self.inner_lr(), steps=c.inner_steps, first_order=c.first_order, **kwargs,
        )
        return losses.mean()

    def meta_step(self, batch: TaskBatch) -> float:
        self.model.train()
        return engine.outer_step(self.optimizer, self.meta_loss(batch), grad_clip=self.config.grad_clip)

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        c = self.config
        self.model.eval()
        steps = c.inner_steps if c.eval_inner_steps is None else c.eval_inner_steps
        if c.backend == "learn2learn":
            return self._l2l.adapt_and_predict(self.forward, self.params(), batch, steps=steps)
        return engine.adapt_and_predict_head(
            self.model, self.forward, self.params(), self.local_names, batch,
            lr=self.inner_lr(detach=True), steps=steps, chunk_size=c.chunk_size,
        )


def _item_embedding(model: nn.Module, local_names: Sequence[str], items_x: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{ITEM_EMBEDDING: model.item_embedder(items_x)}`` for a model whose item embedder is global
    (none of ``local_names`` under ``item_embedder.``), else nothing (it changes per user)."""
    embedder = getattr(model, "item_embedder", None)
    if not isinstance(embedder, nn.Module) or any(n.startswith("item_embedder.") for n in local_names):
        return {}
    with torch.no_grad():
        return {ITEM_EMBEDDING: embedder(items_x)}


def _lr_key(name: str) -> str:
    return name.replace(".", "__")
