"""RUM (Chen et al., WSDM 2018): item-level and feature-level user memory, for cold-start ratings.

RUM is a matrix-factorisation recommender whose user vector is the sum of an intrinsic
embedding and a read from a per-user memory of the user's history::

    p_hat_u = p_u + alpha * READ(M_u, q_i)          # MERGE
    y_hat   = p_hat_u . q_i + b + b_i (+ b_u)       # score

* **Item-level** (:class:`ItemRUM`): the memory holds the embeddings of the user's K most recent
  items (FIFO); READ is attention with the candidate item,
  ``z_k = softmax_k(beta * q_i . m_k)``, ``read = sum_k z_k m_k``.
* **Feature-level** (:class:`FeatureRUM`): K global latent-feature keys ``F`` and a per-user
  value memory ``M_u`` written with the Neural-Turing-Machine erase-add rule after each item
  (``w_k = softmax_k(beta * q . f_k)``, ``e = sigmoid(E q + b_e)``, ``a = tanh(A q + b_a)``,
  ``m_k <- m_k * (1 - w_k e) + w_k a``); READ uses the same keys with the candidate item.

Both share everything else (:class:`RUMLearner`); a subclass only says how the memory is
written (:meth:`RUMLearner.build_memory_module`), which returns (keys, values, valid slots) that
the one shared :func:`memory_read` consumes.

How RUM is run inside the MAMO protocol -- choices the MAMO paper leaves open (appendix A.2:
"memory initialised by each user's history records and locally updated"), each a config key:

* **No ID embeddings.** Test users are unseen and cold items are barely seen, so ``p_u`` is the
  sum of one D-vector per value of the user's profile features and ``q_i`` the same over the
  item's features (SVDFeature style, :class:`metarec.nn.FeatureEmbedder`; multi-valued
  features: the mean of their values' vectors), not per-ID tables. The vectors start small
  (``init_std`` 0.1, as MF does): with torch's N(0, 1) embedding init, dot products start at
  ~sqrt(D) and SGD at the grid's rates diverges. A linear map from concatenated feature
  embeddings to D (tried first) diverges under SGD too, because its gradient scales with the
  squared norm of the whole concatenation.
* **The memory is built from each user's support set** (the 15 earliest ratings), written in
  time order; query items are predicted from it. Item-level: K = 20 >= 15 slots, so the memory is
  all support items (padding masked); feature-level: 15 erase-add writes from ``memory_init``
  (zeros, or a learned initial memory).
* **Ratings.** RUM was built for implicit feedback: its memory records *which* items a user
  consumed, not how they rated them. ``memory_values="item"`` (the paper) keeps that;
  ``"rated_item"`` writes ``(r - mean) * q`` instead, mean = the training mean (item-level: as
  the values; feature-level: as the erase/add input, addressing still by ``q``), so the memory
  says whether the user liked what it saw -- for item-level RUM this turns the read into an
  attention-weighted item-kNN term.
* **Local update** (``local_steps``, ``local_lr``): a few plain gradient steps on ``p_u`` (and
  ``b_u`` when ``user_bias``) on the support MSE, through :mod:`metarec.engine`; with
  ``local_steps > 0`` training differentiates through them (second order unless
  ``first_order``), i.e. the profile tower is meta-learned as an initialisation of ``p_u``.
  ``local_steps=0`` (the paper preset) uses the support ratings nowhere; only the memory
  personalises.
* **Loss and optimiser**: the original trains a sigmoid score with a log-likelihood loss and
  sampled negatives; here it is rating regression with MSE on the query ratings of batches of
  training users, SGD (appendix A.2.2 says SGD) with L2 regularisation as weight decay on all
  parameters. Global bias (initialised to the training mean) and an item bias from the item
  features are added -- the original has no biases, but a dot product alone has to spend
  dimensions to represent a rating offset of ~3.6.
* **beta** (read sharpness, not in MAMO's grid) is 1.

Presets, the same for both levels (grids of MAMO appendix A.2.2: lr {1, .1, .01, .001, .0001},
K = 20, alpha {0, .1, .., 1}, D {10, ..., 50}, L2 {.1, .01, .001, .0001}; the paper does not say
which point it used): ``paper`` = the best grid point of a search on ML-1M validation users under
the paper's rules (item-only memory, no local step): D = 10, alpha = 1, SGD lr 0.1, L2 1e-3;
``tuned`` (= the config defaults, what the harness runs) adds the rating-aware memory and one
local step on ``p_u`` (D = 30, local lr 0.5). See :data:`PAPER` / :data:`TUNED` for the search.
Batch size (32 users) and epochs (20) are not given for RUM; MeLU's values are used.
ML-1M test, seed 0 (``metarec bench``): item-level paper MAE 0.842 / tuned 0.776, feature-level
0.845 / 0.778 (global mean 0.915). The paper preset is unsteady across epochs (item-level: 0.820
after 10 epochs, 0.842 after 20) -- the protocol has no early stopping; the tuned one is not.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarec import engine
from metarec.config import setting
from metarec.learner import EpisodicConfig, EpisodicLearner
from metarec.nn import FeatureEmbedder
from metarec.tasks import TaskBatch, TaskSet

#: Best point of MAMO's grid under the paper's rules (item-only memory, no local steps), picked
#: on ML-1M validation users (20 % of the training users, seed 0; MAE): D {10, 30, 50} x alpha
#: {0, .2, .5, 1} x L2 {1e-3, 1e-4} at lr 0.1, then lr {1, .1, .01} x L2 {.1, .01} at the best
#: point. Item-level: 0.8025 (alpha 0: 0.8075; global mean 0.9175); feature-level: 0.8063
#: (alpha 0: 0.8071). lr 1 diverges, lr 0.01 is too slow for 20 epochs, larger D overfits.
PAPER: dict[str, Any] = {
    "embedding_dim": 10,
    "memory_slots": 20,
    "alpha": 1.0,
    "beta": 1.0,
    "optimizer": "sgd",
    "lr": 0.1,
    "l2": 1e-3,
    "memory_values": "item",
    "local_steps": 0,
    "user_bias": False,
    "batch_size": 32,
    "epochs": 20,
}

#: The paper point plus the two inferred additions that pay off on the same validation users:
#: rating-aware memory (item-level 0.8025 -> 0.7782 at D = 30) and one local step of 0.5 on p_u
#: (-> 0.7736; feature-level 0.7763). Searched: D {10, 30} x alpha {.5, 1} x local steps
#: {0, 1, 3} x local lr {.1, .5} (x memory_init {zeros, learned} for feature-level: no
#: difference); a fitted user bias changed nothing (0.7730).
TUNED: dict[str, Any] = {
    **PAPER,
    "embedding_dim": 30,
    "memory_values": "rated_item",
    "local_steps": 1,
    "local_lr": 0.5,
}


@dataclass
class RUMConfig(EpisodicConfig):
    """Settings shared by item- and feature-level RUM.

    The defaults are the ``tuned`` preset -- what ``metarec bench`` runs when no preset is named.
    """

    #: D: size of p_u, q_i and the memory vectors (MAMO grid: 10-50).
    embedding_dim: int = setting(TUNED["embedding_dim"], ge=1)
    multi_pooling: Literal["mean", "sum", "sigmoid"] = "mean"
    #: K: memory slots (item-level: most recent support items kept; feature-level: latent keys).
    memory_slots: int = setting(20, ge=1)
    #: MERGE weight: p_hat = p_u + alpha * read (0 = plain MF on profile features).
    alpha: float = setting(TUNED["alpha"], ge=0)
    #: Typical size of the entries of p_u and q_i at initialisation (MF-style small init: with
    #: torch's N(0, 1) embedding init the dot products start at ~sqrt(D) and SGD diverges).
    init_std: float = setting(0.1, gt=0)
    #: Read/write attention sharpness.
    beta: float = setting(1.0, ge=0)
    #: What the memory stores: the item embedding (paper) or the rating-centred one.
    memory_values: Literal["item", "rated_item"] = TUNED["memory_values"]
    #: Feature-level only: the per-user value memory starts at zeros or at a learned matrix.
    memory_init: Literal["zeros", "learned"] = "zeros"
    item_bias: bool = True
    user_bias: bool = False
    #: Plain gradient steps on p_u (and b_u) on the support set, at training and test time.
    local_steps: int = setting(TUNED["local_steps"], ge=0)
    local_lr: float = setting(TUNED["local_lr"], ge=0)
    #: Do not differentiate through the local steps during training.
    first_order: bool = False
    #: Global optimiser over all parameters.
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = setting(TUNED["lr"], gt=0)
    #: L2 regularisation (weight decay on every parameter).
    l2: float = setting(TUNED["l2"], ge=0)
    grad_clip: float | None = setting(None, gt=0)
    #: Users adapted at once inside vmap during the local fit (None = whole batch).
    chunk_size: int | None = setting(None, ge=1)


# --------------------------------------------------------------------------- memory


def memory_read(query: Tensor, keys: Tensor, values: Tensor, valid: Tensor, beta: float = 1.0) -> Tensor:
    """Attention read: ``sum_k softmax_k(beta * query . key_k) value_k`` over the valid slots.

    ``query [..., N, D]``, ``keys``/``values [..., K, D]``, ``valid`` bool ``[..., K]`` ->
    ``[..., N, D]``. A memory with no valid slot reads as zeros.
    """
    logits = beta * query @ keys.transpose(-1, -2)  # [..., N, K]
    mask = valid.unsqueeze(-2)
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1) * mask.to(logits.dtype)  # all-invalid rows -> 0
    return weights @ values


def most_recent(mask: Tensor, k: int) -> Tensor:
    """The last ``k`` True entries of each row of ``mask [B, S]`` (FIFO of size ``k``)."""
    from_end = mask.flip(-1).long().cumsum(-1).flip(-1)  # valid entries at or after each position
    return mask & (from_end <= k)


class ItemMemory(nn.Module):
    """Item-level memory: the K most recent support items; keys = item embeddings."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots

    def forward(self, q: Tensor, x: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """``q``: support item embeddings ``[B, S, D]`` in time order; ``x``: what to store."""
        return q, x, most_recent(mask, self.slots)


class FeatureMemory(nn.Module):
    """Feature-level memory: global latent-feature keys, per-user values written by erase-add."""

    def __init__(self, slots: int, dim: int, learned_init: bool) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, dim) / dim**0.5)
        self.erase = nn.Linear(dim, dim)
        self.add = nn.Linear(dim, dim)
        if learned_init:
            self.init = nn.Parameter(torch.zeros(slots, dim))
        else:
            self.register_buffer("init", torch.zeros(slots, dim))

    def write(self, memory: Tensor, q: Tensor, x: Tensor, beta: float) -> Tensor:
        """One NTM erase-add write of ``x`` (addressed by ``q``) into ``memory [B, K, D]``."""
        w = torch.softmax(beta * q @ self.keys.T, dim=-1).unsqueeze(-1)  # [B, K, 1]
        e = torch.sigmoid(self.erase(x)).unsqueeze(-2)  # [B, 1, D]
        a = torch.tanh(self.add(x)).unsqueeze(-2)
        return memory * (1 - w * e) + w * a

    def forward(self, q: Tensor, x: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """Erase-add writes of the support items in time order; returns (keys, values, valid)."""
        b = q.shape[0]
        memory = self.init.expand(b, *self.init.shape)
        for s in range(q.shape[1]):  # time order; a padded position leaves the memory unchanged
            new = self.write(memory, q[:, s], x[:, s], beta)
            memory = torch.where(mask[:, s, None, None], new, memory)
        keys = self.keys.expand(b, *self.keys.shape)
        return keys, memory, torch.ones(keys.shape[:2], dtype=torch.bool, device=q.device)


# --------------------------------------------------------------------------- network


def _feature_sum(embedder: FeatureEmbedder, x: Mapping[str, Tensor]) -> Tensor:
    """Sum of the per-feature vectors of ``embedder`` (``[..., n_features * d] -> [..., d]``)."""
    return embedder(x).unflatten(-1, (len(embedder.features), embedder.dim)).sum(-2)


def _bias(embedder: FeatureEmbedder | None, x: Mapping[str, Tensor], like: Tensor) -> Tensor:
    """Sum of per-feature-value biases (``[...]``), or zeros shaped like ``like[..., 0]``."""
    if embedder is None:
        return torch.zeros_like(like[..., 0])
    return _feature_sum(embedder, x).squeeze(-1)


class RUMNet(nn.Module):
    """Feature-sum embeddings for p_u and q_i (and the biases), plus the memory writer.

    A vector is the sum of one D-vector per feature value (multi-valued features: the mean of
    their values' vectors), like SVDFeature / factorisation machines: with a single ID feature
    this is exactly RUM's ID embedding, and every table row gets MF-sized SGD updates.
    """

    def __init__(self, schema, config: RUMConfig, memory: nn.Module) -> None:
        super().__init__()
        d = config.embedding_dim
        self.alpha, self.beta = config.alpha, config.beta
        pool = config.multi_pooling
        self.user_embedder = FeatureEmbedder(schema.user_features, d, multi_pooling=pool)
        self.item_embedder = FeatureEmbedder(schema.item_features, d, multi_pooling=pool)
        for emb in (self.user_embedder, self.item_embedder):  # MF-style small init of the sum
            std = config.init_std / len(emb.features) ** 0.5
            for param in emb.parameters():
                nn.init.normal_(param, std=std)
        self.item_bias = FeatureEmbedder(schema.item_features, 1, multi_pooling=pool) if config.item_bias else None
        self.user_bias = FeatureEmbedder(schema.user_features, 1, multi_pooling=pool) if config.user_bias else None
        for emb in (self.item_bias, self.user_bias):
            if emb is not None:
                for param in emb.parameters():
                    nn.init.zeros_(param)
        self.global_bias = nn.Parameter(torch.zeros(()))
        #: Rating subtracted before a rating-aware memory write (the training mean).
        self.register_buffer("rating_center", torch.zeros(()))
        self.memory = memory

    def user_vector(self, user_x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Intrinsic embedding p_u ``[..., D]`` and user bias ``[...]`` from profile features."""
        p = _feature_sum(self.user_embedder, user_x)
        return p, _bias(self.user_bias, user_x, p)

    def item_vector(self, items_x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Item embedding q_i ``[..., D]`` and item bias ``[...]`` from item features."""
        q = _feature_sum(self.item_embedder, items_x)
        return q, _bias(self.item_bias, items_x, q)

    def forward(
        self, items_x: Mapping[str, Tensor], p: Tensor, b_u: Tensor, keys: Tensor, values: Tensor, valid: Tensor
    ) -> Tensor:
        """Scores of ``items_x`` for a user with intrinsic vector ``p`` and memory (keys, values, valid)."""
        q, b_i = self.item_vector(items_x)
        merged = p.unsqueeze(-2) + self.alpha * memory_read(q, keys, values, valid, self.beta)
        return (merged * q).sum(-1) + b_i + b_u.unsqueeze(-1) + self.global_bias


# --------------------------------------------------------------------------- learners

#: Names of the per-user entries passed to the engine next to the network's parameters (a
#: prefix no module attribute of :class:`RUMNet` has, so they never shadow a parameter).
_STATE = "per_user."
_USER_P, _USER_B = _STATE + "p", _STATE + "b"
_KEYS, _VALUES, _VALID = _STATE + "keys", _STATE + "values", _STATE + "valid"


class RUMLearner(EpisodicLearner):
    """Shared RUM machinery; subclasses choose the memory (item- or feature-level)."""

    Config: ClassVar[type] = RUMConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "tuned": TUNED}
    #: The MAMO grid's D (10-50) and the settings the hand search covered, plus rates and L2.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "embedding_dim": {"type": "categorical", "choices": [10, 20, 30, 50]},
        "memory_slots": {"type": "int", "low": 5, "high": 40, "step": 5},
        "alpha": {"type": "float", "low": 0.0, "high": 1.5},
        "memory_values": {"type": "categorical", "choices": ["item", "rated_item"]},
        "local_steps": {"type": "int", "low": 0, "high": 3},
        "local_lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
        "lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
        "l2": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "epochs": {"type": "int", "low": 10, "high": 30, "step": 5},
    }

    @abc.abstractmethod
    def build_memory_module(self) -> nn.Module:
        """``module(q [B,S,D], x [B,S,D], mask [B,S], beta) -> (keys, values, valid)``."""

    def build(self) -> None:
        c = self.config
        self.net = RUMNet(self.schema, c, self.build_memory_module()).to(self.device)
        self.optimizer = engine.make_optimizer(c.optimizer, self.net.parameters(), c.lr, c.l2)
        self.local_names = [_USER_P] + ([_USER_B] if c.user_bias else [])

        def forward(
            params: Mapping[str, Tensor], user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]
        ) -> Tensor:
            net_params = {k: v for k, v in params.items() if not k.startswith(_STATE)}
            state = (params[_USER_P], params[_USER_B], params[_KEYS], params[_VALUES], params[_VALID])
            return functional_call(self.net, net_params, (items_x, *state))

        self.forward = forward

    def on_fit_start(self, train: TaskSet) -> None:
        if self.epochs_done == 0:  # a fresh run: start the global bias at the training mean
            ratings = [train.support_ratings[train.support_mask], train.query_ratings[train.query_mask]]
            mean = torch.cat(ratings).mean()
            with torch.no_grad():
                self.net.global_bias.fill_(float(mean))
                self.net.rating_center.fill_(float(mean))

    def user_state(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Per-user p_u, b_u and memory built from the support set, each ``[B, ...]``."""
        net = self.net
        p, b_u = net.user_vector(batch.user_features)
        q, _ = net.item_vector(batch.support_features)
        if self.config.memory_values == "rated_item":
            x = (batch.support_ratings - net.rating_center).unsqueeze(-1) * q
        else:
            x = q
        keys, values, valid = net.memory(q, x, batch.support_mask, self.config.beta)
        return {_USER_P: p, _USER_B: b_u, _KEYS: keys, _VALUES: values, _VALID: valid}

    def params(self) -> dict[str, Tensor]:
        """The network's parameters by name (what the optional local step starts from)."""
        return dict(self.net.named_parameters())

    def meta_step(self, batch: TaskBatch) -> float:
        c = self.config
        self.net.train()
        losses = engine.query_losses(
            self.forward, self.params(), self.local_names, batch,
            lr=c.local_lr, steps=c.local_steps, first_order=c.first_order,
            user_params=self.user_state(batch), chunk_size=c.chunk_size,
        )
        return engine.outer_step(self.optimizer, losses.mean(), grad_clip=c.grad_clip)

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        c = self.config
        self.net.eval()
        with torch.no_grad():
            state = self.user_state(batch)
        return engine.adapt_and_predict_batch(
            self.forward, self.params(), self.local_names, batch,
            lr=c.local_lr, steps=c.local_steps, user_params=state, chunk_size=c.chunk_size,
        )


class ItemRUM(RUMLearner):
    """Item-level RUM: attention over the embeddings of the user's most recent (support) items."""

    name: ClassVar[str] = "rum-item"
    description: ClassVar[str] = "Item-level RUM (Chen et al. 2018): memory of the user's items, read by attention"

    def build_memory_module(self) -> nn.Module:
        return ItemMemory(self.config.memory_slots)


class FeatureRUM(RUMLearner):
    """Feature-level RUM: latent-feature keys, per-user values written by erase-add."""

    name: ClassVar[str] = "rum-feature"
    description: ClassVar[str] = "Feature-level RUM (Chen et al. 2018): latent-feature memory, erase-add writes"

    def build_memory_module(self) -> nn.Module:
        c = self.config
        return FeatureMemory(c.memory_slots, c.embedding_dim, learned_init=c.memory_init == "learned")
