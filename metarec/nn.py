"""Shared building blocks: feature embedders and MLPs, used by every method.

Methods compose these instead of writing their own, so that "embed the schema's features" means
the same thing in MAMO, MeLU, MetaCS-DNN, s2Meta and RUM. Every block works on unbatched
inputs (one user) and on batched ones, and under :func:`torch.func.vmap`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from metarec.schema import Feature, FeatureSchema

if TYPE_CHECKING:  # pragma: no cover
    from metarec.tasks import TaskBatch

MultiPooling = Literal["mean", "sum", "sigmoid"]
#: Names :func:`make_activation` knows (config fields use this type, so a typo fails at construction).
Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid", "identity"]

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),  # slope 0.1, as in MAMO's reference code
    "tanh": lambda: nn.Tanh(),
    "sigmoid": lambda: nn.Sigmoid(),
    "identity": lambda: nn.Identity(),
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``leaky_relu`` (slope 0.1), ``tanh``, ``sigmoid``, ``identity``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(_ACTIVATIONS)}") from None


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    final_activation: bool = False,
    bias: bool = True,
    zero_bias: bool = False,
) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) -> act -> ... -> Linear(sizes[-2], sizes[-1])``.

    ``final_activation`` adds the activation after the last layer too (MAMO's embedding MLPs);
    ``zero_bias`` initialises biases to 0 (MAMO and s2Meta reference code do).
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b, bias=bias)
        if bias and zero_bias:
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2 or final_activation:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class MultiHotEmbedding(nn.Module):
    """A bias-free linear map of a multi-hot vector, computed from padded index lists.

    ``x`` is ``long [..., L]`` with -1 as padding. ``pooling``: ``sum`` (the linear map itself),
    ``mean`` (divided by the number of active values; MeLU) or ``sigmoid`` (sigmoid of the sum;
    MAMO's reference code).
    """

    def __init__(self, cardinality: int, dim: int, pooling: MultiPooling = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "sum", "sigmoid"):
            raise ValueError(f"unknown multi-value pooling {pooling!r}; use mean, sum or sigmoid")
        self.pooling = pooling
        self.weight = nn.Parameter(torch.empty(cardinality, dim))
        bound = 1.0 / math.sqrt(cardinality)  # nn.Linear's default init for this fan-in
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Pool the embedding rows of the active indices of ``x`` (``[..., L]``) into ``[..., dim]``."""
        mask = (x >= 0).to(self.weight.dtype)
        rows = self.weight[x.clamp(min=0)]
        summed = (rows * mask.unsqueeze(-1)).sum(-2)
        if self.pooling == "mean":
            return summed / mask.sum(-1, keepdim=True).clamp_min(1.0)
        if self.pooling == "sigmoid":
            return torch.sigmoid(summed)
        return summed


def _module_key(name: str) -> str:
    return name.replace(".", "_")


class FeatureEmbedder(nn.Module):
    """One ``dim``-vector per feature of a schema side, concatenated in schema order.

    Categorical features use an embedding table, multi-valued ones a :class:`MultiHotEmbedding`,
    numeric ones ``Linear(1, dim)`` on the (standardised) value. Output: ``[..., n_features * dim]``.
    """

    def __init__(
        self,
        features: Sequence[Feature],
        dim: int,
        *,
        multi_pooling: MultiPooling = "mean",
    ) -> None:
        super().__init__()
        if not features:
            raise ValueError("FeatureEmbedder needs at least one feature")
        self.features = tuple(features)
        self.dim = dim
        self.embed = nn.ModuleDict()
        for f in self.features:
            key = _module_key(f.name)
            if f.kind == "categorical":
                self.embed[key] = nn.Embedding(f.cardinality, dim)
            elif f.kind == "multi_categorical":
                self.embed[key] = MultiHotEmbedding(f.cardinality, dim, multi_pooling)
            else:
                self.embed[key] = nn.Linear(1, dim)

    @property
    def out_dim(self) -> int:
        """Width of the output: number of features times ``dim``."""
        return len(self.features) * self.dim

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        """Embed each feature of ``x`` (columns as in a :class:`~metarec.tasks.FeatureTable`) and concatenate."""
        parts = []
        for f in self.features:
            value = x[f.name]
            module = self.embed[_module_key(f.name)]
            if f.kind == "numeric":
                parts.append(module(value.unsqueeze(-1).to(module.weight.dtype)))
            else:
                parts.append(module(value))
        return torch.cat(parts, dim=-1)

    # A linear embedder is a design matrix times a block-diagonal table: ``forward(x) ==
    # from_design(design(x))``. The design rows are data only (no parameters), so a fixed linear
    # operator over items (a mean over neighbours, say) can be applied to them once and cached,
    # while the tables keep training.

    @property
    def is_linear(self) -> bool:
        """Whether every feature's embedding is linear in a design row (not ``sigmoid`` pooling)."""
        return all(
            not (f.kind == "multi_categorical" and self.embed[_module_key(f.name)].pooling == "sigmoid")
            for f in self.features
        )

    @property
    def design_sizes(self) -> list[int]:
        """Columns of each feature's block of :meth:`design`: its cardinality, 2 for a numeric one."""
        return [2 if f.kind == "numeric" else f.cardinality for f in self.features]

    def design(self, x: Mapping[str, Tensor]) -> Tensor:
        """Design rows ``[..., sum(design_sizes)]``: a one-hot (categorical), the pooling weights of
        the active values (multi-valued: ``1 / count`` for ``mean``, ``1`` for ``sum``) or
        ``[value, 1]`` (numeric). Needs :attr:`is_linear`."""
        if not self.is_linear:
            raise ValueError("design(): sigmoid pooling is not linear in the embedding table")
        dtype = self.table(0).dtype
        parts = []
        for f, size in zip(self.features, self.design_sizes):
            value = x[f.name]
            if f.kind == "numeric":
                v = value.to(dtype).unsqueeze(-1)
                parts.append(torch.cat([v, torch.ones_like(v)], dim=-1))
            elif f.kind == "categorical":
                parts.append(nn.functional.one_hot(value, size).to(dtype))
            else:
                ok = (value >= 0).to(dtype)
                if self.embed[_module_key(f.name)].pooling == "mean":
                    ok = ok / ok.sum(-1, keepdim=True).clamp_min(1.0)
                rows = torch.zeros(*value.shape[:-1], size, dtype=dtype, device=value.device)
                parts.append(rows.scatter_add_(-1, value.clamp_min(0), ok))
        return torch.cat(parts, dim=-1)

    def table(self, i: int) -> Tensor:
        """Feature ``i``'s embedding table ``[design_sizes[i], dim]`` (numeric: ``[weight; bias]``)."""
        f = self.features[i]
        module = self.embed[_module_key(f.name)]
        if f.kind == "numeric":
            return torch.cat([module.weight.t(), module.bias.unsqueeze(0)], dim=0)
        return module.weight

    def from_design(self, d: Tensor) -> Tensor:
        """Embeddings ``[..., out_dim]`` from design rows (or any linear combination of them)."""
        blocks = torch.split(d, self.design_sizes, dim=-1)
        return torch.cat([b @ self.table(i) for i, b in enumerate(blocks)], dim=-1)


#: Key under which item features may carry their embedding, computed beforehand by the learner's
#: own (never locally adapted) item embedder (see ``Learner.precompute_item_inputs``).
ITEM_EMBEDDING = "__item_embedding__"


def embed_items(embedder: nn.Module, items_x: Mapping[str, Tensor]) -> Tensor:
    """``embedder(items_x)``, or the embedding precomputed for these rows under :data:`ITEM_EMBEDDING`.

    Embedding the features of the same items again for every user is the same arithmetic every
    time; only an embedder that adaptation never changes may be precomputed (the learner decides).
    """
    pre = items_x.get(ITEM_EMBEDDING)
    return embedder(items_x) if pre is None else pre


def broadcast_user(user: Tensor, items: Tensor) -> Tensor:
    """Repeat a user vector ``[d]`` (or ``[B, d]``) along the item axis of ``items`` ``[(B,) N, e]``."""
    return user.unsqueeze(-2).expand(*items.shape[:-1], user.shape[-1])


class RatingMLP(nn.Module):
    """Profile features of a user + features of items -> one predicted rating per item.

    ``x = [item embedding; user embedding] -> MLP(hidden...) -> 1`` : MeLU's decision network,
    also the simple profile-MLP baselines' model. Parameters of the MLP live under ``head.``,
    the embedders under ``user_embedder.`` / ``item_embedder.``.
    """

    def __init__(
        self,
        user_features: Sequence[Feature],
        item_features: Sequence[Feature],
        *,
        embedding_dim: int = 32,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        multi_pooling: MultiPooling = "mean",
    ) -> None:
        super().__init__()
        self.user_embedder = FeatureEmbedder(user_features, embedding_dim, multi_pooling=multi_pooling)
        self.item_embedder = FeatureEmbedder(item_features, embedding_dim, multi_pooling=multi_pooling)
        width = self.user_embedder.out_dim + self.item_embedder.out_dim
        self.head = mlp([width, *hidden, 1], activation=activation)

    @classmethod
    def from_config(cls, schema: "FeatureSchema", config: object) -> "RatingMLP":
        """Build from a schema and any config with ``embedding_dim``, ``hidden``, ``activation`` and
        ``multi_pooling`` (e.g. :class:`metarec.learner.RatingMLPConfig`)."""
        return cls(
            schema.user_features,
            schema.item_features,
            embedding_dim=config.embedding_dim,
            hidden=config.hidden,
            activation=config.activation,
            multi_pooling=config.multi_pooling,
        )

    def forward(self, user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        """Predicted ratings ``[..., N]`` of one user (or a batch) for ``N`` items."""
        items = embed_items(self.item_embedder, items_x)
        user = broadcast_user(self.user_embedder(user_x), items)
        return self.head(torch.cat([items, user], dim=-1)).squeeze(-1)

    def relu_head(self) -> list[nn.Linear] | None:
        """The head's linear layers when it is a plain ReLU MLP with biases and one output
        (what :func:`per_user_relu_mlp` computes), else None."""
        return relu_mlp_linears(self.head)

    def adapt_head_and_predict(
        self, batch: "TaskBatch", *, lr: float, steps: int
    ) -> Tensor:
        """Each user's head after ``steps`` plain SGD steps of rate ``lr`` on the masked MSE of
        their support set, scored on their query items: ``[B, Q]``. Needs :meth:`relu_head`.

        The same first-order local update as :func:`metarec.engine.adapt_and_predict_batch`
        (which gets there with :func:`torch.func.grad` under vmap), with the gradients written
        out (:func:`per_user_relu_mlp_mse_grads`) and the users' weights as ``[B, out, in]``
        stacks: a step is a dozen batched products whatever the batch size. The query is scored
        with the first layer split into its item and user columns (``[items; user] W^T = items
        W_i^T + user W_u^T``), so the user's part is computed once, not once per item.
        """
        linears = self.relu_head()
        if linears is None:
            raise ValueError("adapt_head_and_predict needs a ReLU head with biases and one output")
        with torch.no_grad():
            user = self.user_embedder(batch.user_features)  # [B, Du]
            support = embed_items(self.item_embedder, batch.support_features)  # [B, S, Di]
            b = user.shape[0]
            params: list[Tensor] = []
            for lin in linears:
                params += [lin.weight.expand(b, *lin.weight.shape), lin.bias.expand(b, -1)]
            if steps > 0:
                x = torch.cat([support, broadcast_user(user, support)], dim=-1)
                y, mask = batch.support_ratings.to(x.dtype), batch.support_mask
                for _ in range(steps):
                    _, grads = per_user_relu_mlp_mse_grads(params, x, y, mask)
                    params = [torch.add(p, g, alpha=-lr) for p, g in zip(params, grads)]
            query = embed_items(self.item_embedder, batch.query_features)  # [B, Q, Di]
            di = query.shape[-1]
            w1, b1 = params[0], params[1]
            user_part = torch.baddbmm(b1.unsqueeze(1), user.unsqueeze(1), w1[:, :, di:].transpose(1, 2))  # [B, 1, H]
            w1_items = w1[:, :, :di].transpose(1, 2)
            out = []
            for rows in item_chunks(query.shape[1], b):
                z = torch.baddbmm(user_part, query[:, rows], w1_items)
                for layer in range(1, len(params) // 2):
                    z = torch.baddbmm(params[2 * layer + 1].unsqueeze(1), z.relu_(), params[2 * layer].transpose(1, 2))
                out.append(z.squeeze(-1))
            return out[0] if len(out) == 1 else torch.cat(out, 1)


# --------------------------------------------------------------------------- attentive memories


def cosine_attention(query: Tensor, keys: Tensor, temperature: float = 1.0, eps: float = 1e-8) -> Tensor:
    """``softmax_k(cos(query, keys[k]) / temperature)``: ``query [..., D]``, ``keys [K, D]`` -> ``[..., K]``.

    The read head of a key memory (MAMO's Eq. 3 with ``temperature=1``). Cosine similarity is
    bounded in [-1, 1], so with ``temperature=1`` the largest attention weight of K slots is at
    most ``e / (e + (K - 1) / e)``; a smaller temperature allows sharper reads.
    """
    if temperature <= 0:
        raise ValueError(f"attention temperature must be > 0, got {temperature}")
    q = query / query.norm(dim=-1, keepdim=True).clamp_min(eps)
    k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.softmax((q @ k.transpose(-1, -2)) / temperature, dim=-1)


@runtime_checkable
class BatchOfMatrices(Protocol):
    """Per-row values kept implicitly (e.g. :class:`metarec.lowrank.FastLinear`): all a memory
    write needs is their weighted sums ``sum_b weights[b, k] v_b``, ``[K, ...]``."""

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``sum_b weights[b, k] v_b`` for every column ``k`` of ``weights [B, K]``: ``[K, ...]``."""
        ...


def attentive_write(
    memory: Tensor,
    attention: Tensor,
    values: Tensor | BatchOfMatrices,
    rate: float,
    mode: Literal["sequential", "merged"] = "sequential",
) -> Tensor:
    """The memory after the NTM-style writes ``M <- rate * (a_b (x) v_b) + (1 - rate) * M``.

    ``memory [K, ...]``, ``attention [B, K]``, ``values [B, ...]`` (one write per row ``b``), or
    a :class:`BatchOfMatrices` that never builds its rows. ``sequential`` applies the B writes
    one after the other in row order -- computed in closed form,
    ``M_B = (1-rate)^B M_0 + sum_b rate (1-rate)^(B-1-b) a_b (x) v_b`` -- and ``merged`` applies
    ONE write of the batch mean of ``a_b (x) v_b``. Returns a new tensor.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"memory write rate must be in [0, 1], got {rate}")
    if mode not in ("sequential", "merged"):
        raise ValueError(f"memory write mode must be 'sequential' or 'merged', got {mode!r}")
    B = attention.shape[0]
    dense = isinstance(values, Tensor)
    if attention.shape[1] != memory.shape[0] or (
        dense and (values.shape[0] != B or values.shape[1:] != memory.shape[1:])
    ):
        shape = list(values.shape) if dense else type(values).__name__
        raise ValueError(
            f"attentive_write: memory {list(memory.shape)}, attention {list(attention.shape)} and "
            f"values {shape} do not fit ([K, ...], [B, K], [B, ...])"
        )
    a = attention.to(memory.dtype)
    if mode == "merged":
        decay = 1.0 - rate
        weights = torch.full((B,), rate / B, dtype=memory.dtype, device=memory.device)
    else:
        decay = (1.0 - rate) ** B
        powers = torch.arange(B - 1, -1, -1, dtype=memory.dtype, device=memory.device)
        weights = rate * (1.0 - rate) ** powers
    coeff = a * weights.unsqueeze(1)  # [B, K]: how much of row b goes into slot k
    if dense:
        update = coeff.transpose(0, 1) @ values.reshape(B, -1).to(memory.dtype)  # [K, prod(...)]
    else:
        update = values.weighted_sum(coeff).to(memory.dtype)
        if update.shape != memory.shape:
            raise ValueError(f"attentive_write: values sum to {list(update.shape)}, memory is {list(memory.shape)}")
    return decay * memory + update.reshape(memory.shape)


# --------------------------------------------------------------------------- set encoders and modulation


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of the rows of ``x [..., N, d]`` where ``mask [..., N]`` is True: ``[..., d]``.

    The pooling of every amortised method (neural processes, hypernetworks): a support set of any
    size -- padded to a fixed shape -- becomes one vector. A set with no real row gives zeros.
    """
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1.0)


class SetEncoder(nn.Module):
    """``masked_mean(MLP([x_n; y_n]))`` over a set of (interaction embedding, rating) pairs.

    The permutation-invariant encoder of TaNP's latent and task-identity paths and of ColdNAS's
    adaptation network: each row is mapped on its own, then the rows are averaged (``mask`` says
    which are real). ``dropout`` is applied after each hidden layer (TaNP's encoders).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        activation: str = "relu",
        final_activation: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise ValueError(f"a set encoder needs at least input and output sizes, got {list(sizes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 or final_activation:
                if dropout:
                    layers.append(nn.Dropout(dropout))
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = int(sizes[0]), int(sizes[-1])

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """``x [..., N, d]``, ratings ``y [..., N]``, ``mask [..., N]`` -> ``[..., out_dim]``."""
        rows = torch.cat([x, y.unsqueeze(-1).to(x.dtype)], dim=-1)
        return masked_mean(self.net(rows), mask)


class FiLM(nn.Module):
    """Feature-wise modulation of hidden units by a conditioning vector (Perez et al. 2018).

    ``film``: ``h * tanh(W_g c) + tanh(W_b c)``. ``gating`` (TaNP's gating variant): a gate
    ``d = sigmoid(W_d c)`` and a shared ``e = tanh(W_e c)`` blend the two:
    ``gamma' = gamma * d + e * (1 - d)``, ``beta' = beta * d + e * (1 - d)``.
    ``c`` is ``[..., cond_dim]`` and broadcasts against ``h [..., N, width]`` over the item axis.
    """

    def __init__(
        self, cond_dim: int, width: int, *, mode: Literal["film", "gating"] = "film", bias: bool = False
    ) -> None:
        super().__init__()
        if mode not in ("film", "gating"):
            raise ValueError(f"unknown FiLM mode {mode!r}; use 'film' or 'gating'")
        self.mode = mode
        self.gamma = nn.Linear(cond_dim, width, bias=bias)
        self.beta = nn.Linear(cond_dim, width, bias=bias)
        if mode == "gating":
            self.gate = nn.Linear(cond_dim, width, bias=bias)
            self.shared = nn.Linear(cond_dim, width, bias=bias)

    def coefficients(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)`` for ``cond [..., cond_dim]``, each ``[..., width]``."""
        gamma, beta = torch.tanh(self.gamma(cond)), torch.tanh(self.beta(cond))
        if self.mode == "gating":
            d = torch.sigmoid(self.gate(cond))
            e = torch.tanh(self.shared(cond))
            gamma, beta = gamma * d + e * (1 - d), beta * d + e * (1 - d)
        return gamma, beta

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        """Modulate ``h [..., N, width]`` with ``cond [..., cond_dim]`` (one vector per set)."""
        gamma, beta = self.coefficients(cond)
        return h * gamma.unsqueeze(-2) + beta.unsqueeze(-2)


class InteractionEmbedder(nn.Module):
    """``[tower_item(embed(item)); tower_user(embed(user))]`` for every (user, item) pair.

    The interaction representation of TaNP and ColdNAS: the schema's features embedded by
    :class:`FeatureEmbedder`, each side passed through its own small MLP ``tower`` (sizes after
    the embedding; ``()`` keeps the raw concatenation), user broadcast over the items.
    """

    def __init__(
        self,
        user_features: Sequence[Feature],
        item_features: Sequence[Feature],
        *,
        embedding_dim: int = 32,
        tower: Sequence[int] = (),
        activation: str = "relu",
        final_activation: bool = True,
        multi_pooling: MultiPooling = "mean",
    ) -> None:
        super().__init__()
        self.user_embedder = FeatureEmbedder(user_features, embedding_dim, multi_pooling=multi_pooling)
        self.item_embedder = FeatureEmbedder(item_features, embedding_dim, multi_pooling=multi_pooling)
        towers = {}
        for side, emb in (("user", self.user_embedder), ("item", self.item_embedder)):
            sizes = [emb.out_dim, *tower]
            towers[side] = (
                mlp(sizes, activation=activation, final_activation=final_activation)
                if len(sizes) > 1 else nn.Identity()
            )
        self.user_tower, self.item_tower = towers["user"], towers["item"]
        side = int(tower[-1]) if tower else None
        self.item_dim = side or self.item_embedder.out_dim
        self.user_dim = side or self.user_embedder.out_dim
        self.out_dim = self.item_dim + self.user_dim

    def forward(self, user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        """``[..., N, item_dim + user_dim]`` for one user (or a batch) and ``N`` items."""
        items = self.item_tower(self.item_embedder(items_x))
        user = self.user_tower(self.user_embedder(user_x))
        return torch.cat([items, broadcast_user(user, items)], dim=-1)


#: Rows (users x items) a scoring pass over many items works on at once: intermediates of a few
#: MB stay in the allocator's reuse range and near the cache, where one pass over a batch of
#: users x the whole catalogue would allocate (and page-fault) tens of MB per layer.
SCORE_ROWS = 4096


def item_chunks(n_items: int, batch_size: int, rows: int | None = None) -> list[slice]:
    """Slices of the item axis that keep ``batch_size x chunk`` at about ``rows`` (:data:`SCORE_ROWS`)."""
    step = max(1, (rows or SCORE_ROWS) // max(batch_size, 1))
    return [slice(s, min(s + step, n_items)) for s in range(0, max(n_items, 1), step)]


def relu_mlp_linears(seq: nn.Module) -> list[nn.Linear] | None:
    """The linear layers of ``seq`` when it is ``Linear -> ReLU -> ... -> Linear`` with biases and
    one output (the layout :func:`per_user_relu_mlp` computes), else None."""
    if not isinstance(seq, nn.Sequential) or len(seq) % 2 == 0:
        return None
    mods = list(seq)
    linears = mods[0::2]
    if not all(isinstance(m, nn.Linear) and m.bias is not None for m in linears):
        return None
    if not all(type(m) is nn.ReLU for m in mods[1::2]) or linears[-1].out_features != 1:
        return None
    return linears


def per_user_relu_mlp(params: Sequence[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A ReLU MLP with per-user weights (the layout of :func:`mlp` with ``activation="relu"``).

    ``params`` = ``[W1, b1, W2, b2, ...]`` with ``W`` ``[B, out, in]`` and ``b`` ``[B, out]``
    (or a layer shared by all users: ``W [out, in]``, ``b [out]``);
    ``x`` ``[B, N, in]`` -> ``(output [B, N, out_last], pre-activations of every layer)``. Batched
    matrix products instead of :func:`torch.func.vmap` over :func:`~torch.func.functional_call`:
    the same numbers at a fraction of the dispatch cost, for inner loops that run it every step.
    """
    pre: list[Tensor] = []
    a = x
    n_layers = len(params) // 2
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        z = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)) if w.dim() == 3 else nn.functional.linear(a, w, b)
        pre.append(z)
        a = torch.relu(z) if layer < n_layers - 1 else z
    return a, pre


def per_user_relu_mlp_backward(
    params: Sequence[Tensor], x: Tensor | None, pre: Sequence[Tensor], d_out: Tensor, *,
    first_layer: bool = True, param_grads: bool = True, out: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor | None], Tensor]:
    """The backward pass of :func:`per_user_relu_mlp` by hand: ``(grads, d_pre0)``.

    ``d_out [B, N, out_last]`` is the loss's gradient at the outputs; ``grads`` are each user's
    ``[dW1, db1, ...]`` (None for those not asked: all with ``param_grads=False``, the first
    layer's with ``first_layer=False``, when ``x`` may be None) and ``d_pre0 [B, N, out_1]`` the
    gradient at the first layer's pre-activations (what a caller with its own first layer needs).
    The ops are ordinary differentiable ones: under autograd the result is part of the graph (a
    second-order inner step), under :func:`torch.no_grad` it is a first-order one. ``out``:
    tensors to write the gradients into, shaped like ``params``.
    """
    n_layers = len(params) // 2
    grads: list[Tensor | None] = [None] * len(params)
    d = d_out
    for layer in range(n_layers - 1, -1, -1):
        if param_grads and (layer > 0 or first_layer):
            a_in = x if layer == 0 else torch.relu(pre[layer - 1])
            gw = out[2 * layer] if out is not None else None
            gb = out[2 * layer + 1] if out is not None else None
            grads[2 * layer] = torch.bmm(d.transpose(1, 2), a_in, out=gw) if gw is not None else torch.bmm(d.transpose(1, 2), a_in)
            grads[2 * layer + 1] = torch.sum(d, 1, out=gb) if gb is not None else d.sum(1)
        if layer > 0:
            d = torch.matmul(d, params[2 * layer]) * (pre[layer - 1] > 0)  # bmm, or mm for a shared layer
    return grads, d


def masked_mse_output_grad(pred: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-user masked MSE ``[B]`` of ``pred [B, N]`` and its gradient at ``pred``, ``[B, N, 1]``."""
    m = mask.to(pred.dtype)
    count = m.sum(-1).clamp_min(1.0)
    diff = pred - y
    err = diff * m
    return (err * diff).sum(-1) / count, (2.0 * err / count.unsqueeze(-1)).unsqueeze(-1)


def per_user_relu_mlp_mse_grads(
    params: Sequence[Tensor], x: Tensor, y: Tensor, mask: Tensor, out: Sequence[Tensor] | None = None,
    eval_mask: Tensor | None = None,
) -> tuple[Tensor, list[Tensor]] | tuple[Tensor, list[Tensor], Tensor]:
    """Per-user masked MSE of :func:`per_user_relu_mlp` (one output) and its gradient, by hand.

    Returns ``(loss [B], [dL_b/dW1, dL_b/db1, ...])`` -- each user's gradient of its own loss,
    with no autograd graph (a first-order inner step). ``out``: tensors to write the gradients
    into (e.g. views of one flat buffer), shaped like ``params``. ``eval_mask`` (``bool [B, N]``,
    disjoint from ``mask``): rows that only get evaluated -- e.g. a query set passed in the same
    ``x`` as the support set, so that one forward pass serves both; their masked MSE ``[B]`` is
    returned third and they take no part in the loss or the gradient.
    """
    with torch.no_grad():
        pred, pre = per_user_relu_mlp(params, x)
        pred = pred.squeeze(-1)
        loss, d = masked_mse_output_grad(pred, y, mask)
        grads, _ = per_user_relu_mlp_backward(params, x, pre, d, out=out)
        if eval_mask is None:
            return loss, grads
        em = eval_mask.to(pred.dtype)
        diff = pred - y
        return loss, grads, (diff * diff * em).sum(-1) / em.sum(-1).clamp_min(1.0)


def fm_interaction(fields: Tensor) -> Tensor:
    """Factorization-machine second-order term of field embeddings ``[..., F, d]`` -> ``[...]``.

    ``0.5 * sum_d ((sum_f v_f)^2 - sum_f v_f^2)``: every pairwise inner product of the fields
    (Rendle 2010), in O(F d). FM, DeepFM and the item warm-up backbones use it
    (:mod:`metarec.warmup.backbone`).
    """
    total = fields.sum(-2)
    return 0.5 * (total.pow(2) - fields.pow(2).sum(-2)).sum(-1)
