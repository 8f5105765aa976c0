"""The base class of item warm-up learners, and the plain backbones (the floor) built on it.

A user-task :class:`~metarec.learner.Learner` meta-trains on users and adapts to one user at a
time. An :class:`ItemWarmupLearner` instead follows the item warm-up stream
(:mod:`metarec.warmup.protocol`); the harness calls, in order::

    learner.fit(train)                 # old items' rows (+ the feature tables)
    learner.init_new_items(new_items)  # stage "cold": features only, no interaction of a new item
    learner.predict(test)              # -> click probabilities, test labels hidden (NaN)
    for rows in warm-up batches a, b, c:
        learner.warm_up(rows, stage)   # the stage's interactions of the new items
        learner.predict(test)

New items influence each other here (they share a backbone and an optimiser) -- that is the
protocol (CVAR's global update), unlike the user-task contract. Each learner declares
``protocol = "item-warmup"``; ``metarec bench --protocol item-warmup`` refuses any other.

The default hooks are the **floor**: the pre-trained backbone, new-item ID rows drawn afresh at
the initialisation distribution (no warm-up method), then ID-only training on each batch.
Methods override :meth:`after_pretrain`, :meth:`init_new_items`, :meth:`warm_up` or the
item-embedding hook of pre-training.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from metarec.config import ConfigError, ValidatedConfig, preset_config, setting
from metarec.runtime import resolve_device, torch_generator
from metarec.schema import FeatureSchema
from metarec.tasks import FeatureTable
from metarec.warmup.backbone import BackboneKind, CTRBackbone
from metarec.warmup.protocol import Interactions


@dataclass
class WarmupTrainData:
    """What a learner may see before the cold stage: feature tables and the old items' rows."""

    users: FeatureTable
    items: FeatureTable
    base: Interactions
    old_items: Tensor


@dataclass
class WarmupLearnerConfig(ValidatedConfig):
    """Backbone and optimiser settings shared by every item warm-up learner (CVAR's defaults)."""

    backbone: BackboneKind = "deepfm"
    embedding_dim: int = setting(16, ge=1)
    hidden: tuple[int, ...] = setting((16, 16), ge=1)
    dropout: float = setting(0.2, ge=0, lt=1)
    use_user_id: bool = True
    #: Pre-training on the old items' rows: epochs, rows per batch, Adam lr and L2 weight decay.
    pretrain_epochs: int = setting(1, ge=0)
    batch_size: int = setting(2048, ge=1)
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(1e-6, ge=0)
    #: Warm-up: epochs of ID-only Adam on each stage's rows (only new-item rows change).
    warm_epochs: int = setting(1, ge=0)
    warm_lr: float = setting(1e-3, gt=0)
    #: Rows per batch when predicting.
    eval_batch_size: int = setting(65536, ge=1)


class ItemWarmupLearner(abc.ABC):
    """Base class of item warm-up methods; the default hooks are the no-warm-up floor."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The protocol this learner follows (user-task learners: ``user-cold``).
    protocol: ClassVar[str] = "item-warmup"
    Config: ClassVar[type] = WarmupLearnerConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    paper_presets: ClassVar[tuple[str, ...]] = ("paper",)
    stochastic: ClassVar[bool] = True
    #: Whether the backbone has an item-ID field (False: the feature-only baseline).
    uses_item_id: ClassVar[bool] = True

    def __init__(
        self,
        schema: FeatureSchema,
        config: Any | None = None,
        *,
        n_users: int,
        n_items: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__} config, got {type(config).__name__}")
        self.schema, self.config, self.seed = schema, config, int(seed)
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.device = resolve_device(device)
        self.users: FeatureTable | None = None
        self.items: FeatureTable | None = None
        self.info: dict[str, Any] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.build()

    @classmethod
    def from_settings(cls, schema: FeatureSchema, *, n_users: int, n_items: int, preset: str | None = None,
                      overrides: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                      seed: int = 0) -> "ItemWarmupLearner":
        """Config defaults < ``preset`` < ``overrides``, as for user-task learners."""
        return cls(schema, preset_config(cls, preset, overrides), n_users=n_users, n_items=n_items, device=device,
                   seed=seed)

    # ----------------------------------------------------------------- construction
    def build(self) -> None:
        """Create the backbone (and a method's own modules); called under the run seed."""
        c = self.config
        self.backbone = CTRBackbone(
            self.schema, self.n_users, self.n_items, kind=c.backbone, dim=c.embedding_dim, hidden=c.hidden,
            dropout=c.dropout, use_item_id=self.uses_item_id, use_user_id=c.use_user_id,
        ).to(self.device)

    # ----------------------------------------------------------------- helpers for methods
    def cols(self, rows: Interactions) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """User and item feature columns of ``rows``."""
        return self.users.gather(rows.user), self.items.gather(rows.item)

    def logits(self, rows: Interactions, item_emb: Tensor | None = None) -> Tensor:
        """Backbone logits of ``rows`` (``item_emb`` ``[n, dim]`` injected when given)."""
        u, i = self.cols(rows)
        return self.backbone(rows.user, rows.item, u, i, item_emb)

    def item_fields(self, items: Tensor, *, detach: bool = True) -> Tensor:
        """Flattened item-feature fields of ``items`` ``[n, n_item_features * dim]`` (generator input)."""
        if not self.schema.item_features:
            raise ConfigError(f"{self.name}: needs item features to generate item embeddings, and the dataset has none")
        f = self.backbone.item_feature_fields(self.items.gather(items)).flatten(1)
        return f.detach() if detach else f

    def generator(self, name: str, *names: Any) -> torch.Generator:
        """A torch generator from the run seed and ``names`` (shuffles, draws)."""
        return torch_generator(self.seed, name, *names)

    def train_rows(self, rows: Interactions, params: list[Tensor], loss_fn, *, epochs: int, lr: float,
                   weight_decay: float = 0.0, tag: str = "train", batch_size: int | None = None) -> float:
        """Adam on ``params`` over shuffled batches of ``rows``; ``loss_fn(batch) -> loss``. Returns the last epoch's mean loss."""
        if not params or epochs <= 0 or len(rows) == 0:
            return float("nan")
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        mean = float("nan")
        for epoch in range(epochs):
            total, n = 0.0, 0
            for batch in rows.batches(batch_size or self.config.batch_size, generator=self.generator(tag, epoch)):
                loss = loss_fn(batch.to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()), n + 1
            mean = total / max(n, 1)
        return mean

    def bce(self, batch: Interactions, item_emb: Tensor | None = None) -> Tensor:
        """Mean binary cross-entropy of the backbone on ``batch``."""
        return F.binary_cross_entropy_with_logits(self.logits(batch, item_emb), batch.label)

    # ----------------------------------------------------------------- the protocol hooks
    def fit(self, train: WarmupTrainData) -> "ItemWarmupLearner":
        """Pre-train the backbone on the old items' rows, then :meth:`after_pretrain`."""
        self.users, self.items = train.users.to(self.device), train.items.to(self.device)
        self.old_items = train.old_items.to(self.device)
        self.backbone.train()
        c = self.config
        self.info["pretrain_loss"] = self.train_rows(
            train.base, list(self.backbone.parameters()), self.pretrain_loss, epochs=c.pretrain_epochs, lr=c.lr,
            weight_decay=c.weight_decay, tag="pretrain")
        self.after_pretrain(train)
        return self

    def pretrain_loss(self, batch: Interactions) -> Tensor:
        """The pre-training loss of one batch (DropoutNet overrides it)."""
        return self.bce(batch)

    def after_pretrain(self, train: WarmupTrainData) -> None:
        """Train a method's own modules on the old items (the backbone is frozen from here)."""

    def init_new_items(self, new_items: Tensor) -> None:
        """Write the cold ID embeddings of ``new_items``; floor: fresh draws at the init distribution."""
        if self.backbone.item_id is None:
            return
        r = self.backbone.init_range
        g = self.generator("cold-init")
        rows = (torch.rand(len(new_items), self.config.embedding_dim, generator=g) * 2 - 1) * r
        self.write_item_embeddings(new_items, rows)

    def write_item_embeddings(self, items: Tensor, emb: Tensor) -> None:
        """Overwrite the backbone's ID rows of ``items`` with ``emb``."""
        with torch.no_grad():
            self.backbone.item_id.weight[items.to(self.device)] = emb.detach().to(self.device)

    def warm_up(self, rows: Interactions, stage: str) -> None:
        """One warm-up batch: ID-only training of the new items' rows on the stage's interactions."""
        self.train_item_ids(rows, stage)

    def train_item_ids(self, rows: Interactions, stage: str) -> None:
        """Adam on the item-ID table only, ``warm_epochs`` over ``rows``; rows not in ``rows`` never move."""
        if self.backbone.item_id is None:
            return
        c = self.config
        weight = self.backbone.item_id.weight
        self.backbone.requires_grad_(False)
        weight.requires_grad_(True)
        self.backbone.train()
        self.train_rows(rows, [weight], self.bce, epochs=c.warm_epochs, lr=c.warm_lr, tag=f"warm-{stage}")
        self.backbone.requires_grad_(True)

    @torch.no_grad()
    def predict(self, rows: Interactions) -> Tensor:
        """Click probabilities of ``rows`` (labels hidden), ``[n]`` on the CPU."""
        self.backbone.eval()
        out = [torch.sigmoid(self.predict_logits(b.to(self.device))).cpu()
               for b in rows.batches(self.config.eval_batch_size)]
        self.backbone.train()
        return torch.cat(out) if out else torch.empty(0)

    def predict_logits(self, batch: Interactions) -> Tensor:
        """Logits of one prediction batch (LWA/NLBA override it)."""
        return self.logits(batch)

    def run_info(self) -> dict[str, Any]:
        """JSON-able diagnostics for the run record."""
        return dict(self.info)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{type(self).__name__}({fields})"


class _Backbone(ItemWarmupLearner):
    """The plain backbone: the no-warm-up floor."""

    presets = {"paper": {}}  # CVAR's code: dim 16, MLP (16, 16), dropout 0.2, Adam 1e-3 / 1e-6, batch 2048, 1 epoch


class FMFloor(_Backbone):
    """FM backbone; new items start from random ID embeddings (no warm-up method)."""

    name = "fm"
    description = "FM backbone, random new-item ID embeddings, ID-only warm-up (item-warmup floor)"

    Config = dataclasses.make_dataclass("FMFloorConfig", [("backbone", BackboneKind, "fm")], bases=(WarmupLearnerConfig,))


class DeepFMFloor(_Backbone):
    """DeepFM backbone; new items start from random ID embeddings (no warm-up method)."""

    name = "deepfm"
    description = "DeepFM backbone, random new-item ID embeddings, ID-only warm-up (item-warmup floor)"

    Config = dataclasses.make_dataclass("DeepFMFloorConfig", [("backbone", BackboneKind, "deepfm")], bases=(WarmupLearnerConfig,))


class WideDeepFloor(_Backbone):
    """Wide&Deep backbone; new items start from random ID embeddings (no warm-up method)."""

    name = "wide-deep"
    description = "Wide&Deep backbone, random new-item ID embeddings, ID-only warm-up (item-warmup floor)"

    Config = dataclasses.make_dataclass("WideDeepFloorConfig", [("backbone", BackboneKind, "wide-deep")], bases=(WarmupLearnerConfig,))


class FeatureOnly(ItemWarmupLearner):
    """The backbone without an item-ID field: new items are scored from their features alone.

    A strong simple baseline: every item-ID method must beat it once IDs have data. It has
    nothing item-specific to warm up, so its four stages score the same model.
    """

    name = "feature-only"
    description = "backbone without item IDs: user (ID + features) x item features (item-warmup baseline)"
    uses_item_id = False
    presets = {"paper": {}}

    def warm_up(self, rows: Interactions, stage: str) -> None:
        """Nothing item-specific to update."""


__all__ = ["DeepFMFloor", "FMFloor", "FeatureOnly", "ItemWarmupLearner", "WarmupLearnerConfig", "WarmupTrainData",
           "WideDeepFloor"]
