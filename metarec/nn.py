"""Shared building blocks: feature embedders and MLPs, used by every method.

Methods compose these instead of writing their own, so that "embed the schema's features" means
the same thing in MAMO, MeLU, MetaCS-DNN, s2Meta and RUM. Every block works on unbatched
inputs (one user) and on batched ones, and under :func:`torch.func.vmap`.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from metarec.schema import Feature

MultiPooling = Literal["mean", "sum", "sigmoid"]

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
        return len(self.features) * self.dim

    def forward(self, x: Mapping[str, Tensor]) -> Tensor:
        parts = []
        for f in self.features:
            value = x[f.name]
            module = self.embed[_module_key(f.name)]
            if f.kind == "numeric":
                parts.append(module(value.unsqueeze(-1).to(module.weight.dtype)))
            else:
                parts.append(module(value))
        return torch.cat(parts, dim=-1)


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

    def forward(self, user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        items = self.item_embedder(items_x)
        user = broadcast_user(self.user_embedder(user_x), items)
        return self.head(torch.cat([items, user], dim=-1)).squeeze(-1)
