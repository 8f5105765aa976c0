"""ColdNAS (Wu et al., WWW 2023): a hypernetwork modulates the predictor; the modulation is searched.

Three parts, all global (no inner loop; adaptation is one forward pass)::

    e      = [Linear(embed(item)); Linear(embed(user))]                 # 2 x 32
    params = Linear(masked_mean(LeakyReLU(Linear([e; y]))))             # the support set -> 4 x sum(dims)
    x = e;  for position i = 0..3:  x = modulate_i(x);  x = LeakyReLU(x);  x = fc_i(x) (i < 3)
    y_hat  = rating_min + (rating_max - rating_min) * sigmoid(Linear(x))

A position (the input embedding, and the outputs of fc1..fc3: widths 64, 128, 64, 32) applies
any subset of four operations in the fixed order ``max(x, p1) -> min(x, p2) -> x * relu(p3) ->
x + p4`` (the paper's proven reduction of its search space: 2^4 = 16 choices per position,
16^4 = 65,536 architectures), each op's parameters sliced from the hypernetwork's output.

**Search** (the first ``search_epochs`` epochs of :meth:`meta_fit`): a supernet relaxes every
(position, op) with a weight ``a = sigmoid(alpha)``, ``x <- a * op(x) + (1 - a) * x``, applied
in order (the official code's first version), and alpha is trained jointly with the weights by the
same Adam step on the training query MSE (one level, as the official code). The alpha kept is the
one of the search epoch with the lowest **validation** MSE when the harness passes validation
users, else the last one; the architecture keeps the ops with ``sigmoid(alpha) > threshold``
(or the ``top_k`` largest). **Final model** (the next ``epochs`` epochs): the fixed
architecture trained from its own initialisation, as the official ``evaluate.py`` retrains from
scratch. Both phases count on one epoch counter, so a run killed in either phase resumes there;
``searched_architecture`` holds the result.

Deviations from the paper / official code (LARS-research/ColdNAS), and why:

* **Data protocol**: MAMO's 15 support / 5 query ratings per user, ratings 1-5 and MSE, vs the
  paper's Last.fm episodes (20 support, all remaining as query, 0/1 labels) and MeLU-style ML-1M.
* **Features**: schema features via :class:`metarec.nn.FeatureEmbedder` and a linear map to 32
  per side, instead of a Linear on one-hot IDs (Last.fm) or the paper's ML-1M field embeddings.
* **Search selection**: on validation users, never test users (the official ``search.py`` keeps
  the alpha of the epoch with the lowest *test* MSE); the alpha index bug at position 4 of the
  official supernet (alpha[2] reused) is not reproduced; the later L1-normalised relaxation
  (which crashes at HEAD) is not used.
* **Discretisation**: the README's "top-K by alpha" leaves K open; ``threshold`` 0.5 (an op is kept
  when the supernet weights it above its skip) is the default, ``top_k`` is an option.
* **The paper's searched ML-1M architecture could not be established** (the official code holds
  only the Last.fm result; the paper's table was not readable here). Preset ``lastfm-searched``
  is that Last.fm result -- position 0 add, 1 add, 2 max then add, 3 none -- run without search;
  ``paper`` = the official hyper-parameters with the search.

Presets: ``paper`` = ``ColdNAS_options.py`` (embeddings 32 per side, hidden 128-64-32, context 256,
Adam 1e-4 in both phases, 32 users per batch, 100 search + 100 final epochs, rating_range * sigmoid
output); the config defaults are the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

import torch
from torch import Tensor, nn

from metarec import engine
from metarec.learner import EpisodicConfig, EpisodicLearner
from metarec.nn import FeatureEmbedder, SetEncoder, broadcast_user
from metarec.tasks import TaskBatch, TaskSet

#: The four modulation operations, in the order a position applies them.
OPS: tuple[str, ...] = ("max", "min", "mul", "add")


def parse_position(spec: str) -> tuple[bool, bool, bool, bool]:
    """``"max+add"`` -> which of :data:`OPS` a position applies; ``"none"`` (or ``""``) is none."""
    names = [s.strip() for s in spec.replace(" ", "").split("+") if s.strip()]
    if names == ["none"]:
        names = []
    bad = [n for n in names if n not in OPS]
    if bad or len(set(names)) != len(names):
        raise ValueError(
            f"modulation {spec!r}: use 'none' or ops from {', '.join(OPS)} joined by '+', each at most once"
        )
    return tuple(op in names for op in OPS)  # type: ignore[return-value]


def position_name(mask: Sequence[bool]) -> str:
    """Inverse of :func:`parse_position`, in the fixed op order."""
    return "+".join(op for op, on in zip(OPS, mask) if on) or "none"


def apply_ops(x: Tensor, params: Tensor, weights: Tensor) -> Tensor:
    """One position: ``x [B, N, d]``, ``params [B, 4, d]`` (one row per op), ``weights [4]`` in [0, 1].

    Each op in order: ``x <- w * op(x) + (1 - w) * x``; weights 0/1 apply or skip it exactly.
    """
    p = params.unsqueeze(-3)  # broadcast over the item axis
    results = (
        lambda v: torch.maximum(v, p[..., 0, :]),
        lambda v: torch.minimum(v, p[..., 1, :]),
        lambda v: v * torch.relu(p[..., 2, :]),
        lambda v: v + p[..., 3, :],
    )
    for k, op in enumerate(results):
        w = weights[k]
        if not w.requires_grad:
            if float(w) == 0.0:
                continue
            if float(w) == 1.0:
                x = op(x)
                continue
        x = w * op(x) + (1 - w) * x
    return x


@dataclass
class ColdNASConfig(EpisodicConfig):
    """ColdNAS's settings; the defaults are ``ColdNAS_options.py`` (the ``paper`` preset)."""

    #: Per-feature embedding size, and the size each side is mapped to (e = 2 x side_dim).
    embedding_dim: int = 32
    side_dim: int = 32
    multi_pooling: Literal["mean", "sum", "sigmoid"] = "mean"
    #: Predictor hidden sizes (positions 1..3 modulate their outputs; position 0 the input).
    hidden: tuple[int, ...] = (128, 64, 32)
    #: Width of the adaptation network's per-interaction layer (official: 8 x 32).
    context_dim: int = 256
    #: The architecture, one entry per position ("none", "add", "max+add", ...); None = search it.
    architecture: tuple[str, ...] | None = None
    search_epochs: int = 100
    search_lr: float = 1e-4
    #: How a searched alpha becomes an architecture.
    discretize: Literal["threshold", "top_k"] = "threshold"
    threshold: float = 0.5
    top_k: int = 4
    #: Init std of the supernet's weights and alpha (official: N(0, 0.01) for everything).
    search_init_std: float = 0.01
    meta_lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = None
    epochs: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(s < 1 for s in (self.embedding_dim, self.side_dim, self.context_dim, *self.hidden)):
            raise ValueError("every layer size must be >= 1")
        if self.architecture is not None:
            self.architecture = tuple(self.architecture)
            if len(self.architecture) != len(self.hidden) + 1:
                raise ValueError(
                    f"architecture needs {len(self.hidden) + 1} positions (input + {len(self.hidden)} hidden), "
                    f"got {len(self.architecture)}"
                )
            for spec in self.architecture:
                parse_position(spec)
        if self.search_epochs < 0 or not 0.0 < self.threshold < 1.0 or self.top_k < 1:
            raise ValueError("need search_epochs >= 0, 0 < threshold < 1 and top_k >= 1")
        if self.meta_lr <= 0 or self.search_lr <= 0:
            raise ValueError("learning rates must be > 0")


class ColdNASNet(nn.Module):
    """Embedding layer, adaptation network (hypernetwork) and modulated predictor."""

    def __init__(self, schema: Any, c: ColdNASConfig) -> None:
        super().__init__()
        self.user_embedder = FeatureEmbedder(schema.user_features, c.embedding_dim, multi_pooling=c.multi_pooling)
        self.item_embedder = FeatureEmbedder(schema.item_features, c.embedding_dim, multi_pooling=c.multi_pooling)
        self.user_proj = nn.Linear(self.user_embedder.out_dim, c.side_dim)
        self.item_proj = nn.Linear(self.item_embedder.out_dim, c.side_dim)
        self.dims = (2 * c.side_dim, *c.hidden)
        self.adapt = SetEncoder([2 * c.side_dim + 1, c.context_dim], activation="leaky_relu", final_activation=True)
        self.adapt_out = nn.Linear(c.context_dim, len(OPS) * sum(self.dims))
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.dims[:-1], self.dims[1:]))
        self.out = nn.Linear(self.dims[-1], 1)
        self.act = nn.LeakyReLU()
        self.low, self.span = schema.rating_min, schema.rating_max - schema.rating_min

    def interactions(self, user_x: Any, items_x: Any) -> Tensor:
        """``e [B, N, 2 * side_dim]``."""
        items = self.item_proj(self.item_embedder(items_x))
        return torch.cat([items, broadcast_user(self.user_proj(self.user_embedder(user_x)), items)], dim=-1)

    def modulation_params(self, e: Tensor, y: Tensor, mask: Tensor) -> list[Tensor]:
        """Per position, ``[B, 4, d_i]``: the hypernetwork's output for each user's support set."""
        flat = self.adapt_out(self.adapt(e, y, mask)).view(e.shape[0], len(OPS), sum(self.dims))
        return list(flat.split(list(self.dims), dim=-1))

    def predict(self, e: Tensor, params: list[Tensor], weights: Tensor) -> Tensor:
        """Ratings ``[B, N]`` of interactions ``e`` under op weights ``[positions, 4]``."""
        x = e
        for i, p in enumerate(params):
            x = self.act(apply_ops(x, p, weights[i]))
            if i < len(self.fcs):
                x = self.fcs[i](x)
        return self.low + self.span * torch.sigmoid(self.out(x).squeeze(-1))

    def forward(self, batch: TaskBatch, weights: Tensor) -> Tensor:
        """Adapt to the support sets of ``batch`` and predict its query items, ``[B, Q]``."""
        e_s = self.interactions(batch.user_features, batch.support_features)
        y_s = (batch.support_ratings - self.low) / self.span
        params = self.modulation_params(e_s, y_s, batch.support_mask)
        return self.predict(self.interactions(batch.user_features, batch.query_features), params, weights)


class ColdNAS(EpisodicLearner):
    """ColdNAS: a hypernetwork modulates the predictor at searched positions with searched functions."""

    name: ClassVar[str] = "coldnas"
    description: ClassVar[str] = "ColdNAS (Wu et al. 2023): searched hypernetwork modulation, no inner loop"
    Config: ClassVar[type] = ColdNASConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "embedding_dim": 32, "side_dim": 32, "hidden": (128, 64, 32), "context_dim": 256,
            "architecture": None, "search_epochs": 100, "search_lr": 1e-4, "meta_lr": 1e-4,
            "batch_size": 32, "epochs": 100,
        },
        # The official code's hard-coded Last.fm result (model_lfm4.py), run without a search.
        "lastfm-searched": {
            "architecture": ("add", "add", "max+add", "none"), "search_epochs": 0,
            "meta_lr": 1e-4, "batch_size": 32, "epochs": 100,
        },
    }
    search_space: ClassVar[dict[str, dict]] = {
        "epochs": {"type": "int", "low": 10, "high": 150, "step": 10},
        "search_epochs": {"type": "int", "low": 10, "high": 100, "step": 10},
        "meta_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "search_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "context_dim": {"type": "categorical", "choices": [64, 128, 256]},
        "hidden": {"type": "categorical", "choices": [[128, 64, 32], [64, 64, 32], [256, 128, 64]]},
        "threshold": {"type": "float", "low": 0.3, "high": 0.7},
    }

    # ------------------------------------------------------------------ construction
    @property
    def searching(self) -> bool:
        """Whether this run searches its architecture (``config.architecture`` is None)."""
        return self.config.architecture is None

    def build(self) -> None:
        c = self.config
        self.model = ColdNASNet(self.schema, c).to(self.device)
        self.optimizer = engine.make_optimizer("adam", self.model.parameters(), c.meta_lr, c.weight_decay)
        n_pos = len(c.hidden) + 1
        self.searched_architecture: tuple[str, ...] | None = None
        self.best_search_mse: float | None = None
        if self.searching:
            # initialised on the CPU generator (seeded by the run), then moved: same start on every device
            supernet = ColdNASNet(self.schema, c)
            with torch.no_grad():
                for p in supernet.parameters():
                    p.normal_(0.0, c.search_init_std)
            self.supernet = supernet.to(self.device)
            self.alpha = nn.Parameter((torch.randn(n_pos, len(OPS)) * c.search_init_std).to(self.device))
            self.best_alpha = self.alpha.detach().clone()
            self.search_optimizer = engine.make_optimizer(
                "adam", [*self.supernet.parameters(), self.alpha], c.search_lr, c.weight_decay
            )

    # ------------------------------------------------------------------ phases
    def total_epochs(self) -> int:
        return (self.config.search_epochs if self.searching else 0) + self.config.epochs

    @property
    def in_search(self) -> bool:
        """True while the next epoch is a search epoch."""
        return self.searching and self.epochs_done < self.config.search_epochs

    def architecture(self) -> tuple[str, ...]:
        """The final model's architecture: the configured one, else the searched one."""
        if self.config.architecture is not None:
            return tuple(self.config.architecture)
        if self.searched_architecture is None:
            return self.discretize(self.best_alpha)
        return self.searched_architecture

    def discretize(self, alpha: Tensor) -> tuple[str, ...]:
        """Turn supernet weights ``sigmoid(alpha)`` into one op subset per position."""
        c = self.config
        w = torch.sigmoid(alpha.detach().cpu())
        if c.discretize == "threshold":
            keep = w > c.threshold
        else:
            keep = torch.zeros_like(w, dtype=torch.bool)
            keep.view(-1)[w.view(-1).topk(min(c.top_k, w.numel())).indices] = True
        return tuple(position_name(row.tolist()) for row in keep)

    def fixed_weights(self) -> Tensor:
        """The final architecture as 0/1 op weights ``[positions, 4]``."""
        rows = [parse_position(spec) for spec in self.architecture()]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------ training
    def meta_step(self, batch: TaskBatch) -> float:
        c = self.config
        if self.in_search:
            self.supernet.train()
            pred = self.supernet(batch, torch.sigmoid(self.alpha))
            loss = engine.masked_mse.per_user(pred, batch.query_ratings, batch.query_mask).mean()
            return engine.outer_step(self.search_optimizer, loss, grad_clip=c.grad_clip)
        self.model.train()
        pred = self.model(batch, self.fixed_weights())
        loss = engine.masked_mse.per_user(pred, batch.query_ratings, batch.query_mask).mean()
        return engine.outer_step(self.optimizer, loss, grad_clip=c.grad_clip)

    def meta_fit(self, train: TaskSet, *, callbacks: Sequence[Any] = (), validation: TaskSet | None = None):
        self._validation = validation
        try:
            return super().meta_fit(train, callbacks=callbacks, validation=validation)
        finally:
            self._validation = None

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        c = self.config
        if not self.searching or epoch >= c.search_epochs:
            return {}
        logs: dict[str, float] = {"search": 1.0}
        val = getattr(self, "_validation", None)
        if val is not None and len(val):
            mse = self._supernet_mse(val)
            logs["val_mse_supernet"] = mse
            if self.best_search_mse is None or mse < self.best_search_mse:
                self.best_search_mse = mse
                self.best_alpha = self.alpha.detach().clone()
        else:
            self.best_alpha = self.alpha.detach().clone()
        if epoch == c.search_epochs - 1:
            self.searched_architecture = self.discretize(self.best_alpha)
        return logs

    def _supernet_mse(self, tasks: TaskSet) -> float:
        self.supernet.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            weights = torch.sigmoid(self.alpha)
            for b in tasks.batches(self.config.eval_batch_size, device=self.device):
                err = (self.supernet(b, weights) - b.query_ratings) ** 2
                total += float(err[b.query_mask].sum())
                count += int(b.query_mask.sum())
        return total / max(count, 1)

    # ------------------------------------------------------------------ prediction
    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        with torch.no_grad():
            if self.in_search:  # asked mid-search (e.g. validation logs): the supernet's prediction
                self.supernet.eval()
                return self.supernet(batch, torch.sigmoid(self.alpha))
            self.model.eval()
            return self.model(batch, self.fixed_weights())

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {
            **super().extra_state(),
            "searched_architecture": None if self.searched_architecture is None else list(self.searched_architecture),
            "best_search_mse": self.best_search_mse,
        }

    def load_extra_state(self, extra: Any) -> None:
        super().load_extra_state(extra)
        arch = extra.get("searched_architecture")
        self.searched_architecture = None if arch is None else tuple(arch)
        self.best_search_mse = extra.get("best_search_mse")
