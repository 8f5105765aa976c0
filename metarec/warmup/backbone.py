"""CTR backbones of the item warm-up protocol: FM, DeepFM and Wide&Deep over one field layout.

Fields, each a ``dim``-vector: user ID, every user feature, item ID, every item feature (schema
order; multi-valued features mean-pooled over their real values, padding masked). The item-ID
field can be replaced by an injected embedding (:meth:`CTRBackbone.forward` ``item_emb``) --
what every warm-up method writes or generates. Layouts (CVAR's code: BestActionNow/CVAR
model/fm.py, deepfm.py, wd.py, re-derived, not copied):

* ``fm``: global bias + first-order weights of the features + FM second-order term of all fields;
* ``deepfm``: FM + an MLP over the flattened fields;
* ``wide-deep``: the same first-order ("wide") part + the MLP ("deep") part, no FM term.

Deviations from CVAR's backbones: first-order weights on the categorical features and a bias
(CVAR's FM has only the linear terms of its two continuous inputs, ``count`` and ``time_stamp``,
which this protocol does not use: they leak test-period information); no BatchNorm in the MLP
(so a frozen warm-up really freezes everything but ID rows); padding masked in sequence fields.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from metarec.nn import FeatureEmbedder, fm_interaction, make_activation
from metarec.schema import FeatureSchema

BackboneKind = Literal["deepfm", "fm", "wide-deep"]


def dropout_mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` per hidden layer, then ``Linear(-> 1)`` (CVAR's MLP without BatchNorm)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), make_activation("relu"), nn.Dropout(dropout)]
    layers.append(nn.Linear(sizes[-1], 1))
    return nn.Sequential(*layers)


class _Side(nn.Module):
    """The features of one side (user or item) as ``[..., n_features, dim]`` (none: zero fields)."""

    def __init__(self, features, dim: int) -> None:
        super().__init__()
        self.n = len(features)
        self.dim = dim
        self.embed = FeatureEmbedder(features, dim) if features else None
        self.linear = FeatureEmbedder(features, 1) if features else None

    def fields(self, cols: Mapping[str, Tensor], batch: int, device) -> Tensor:
        if self.embed is None:
            return torch.zeros(batch, 0, self.dim, device=device)
        return self.embed(cols).view(batch, self.n, self.dim)

    def first_order(self, cols: Mapping[str, Tensor], batch: int, device) -> Tensor:
        if self.linear is None:
            return torch.zeros(batch, device=device)
        return self.linear(cols).sum(-1)


class CTRBackbone(nn.Module):
    """A click model ``(user, item) -> logit`` whose item-ID embedding can be injected.

    ``use_item_id = False`` gives the feature-only model (no item-ID field at all).
    """

    def __init__(
        self,
        schema: FeatureSchema,
        n_users: int,
        n_items: int,
        *,
        kind: BackboneKind = "deepfm",
        dim: int = 16,
        hidden: tuple[int, ...] = (16, 16),
        dropout: float = 0.2,
        use_item_id: bool = True,
        use_user_id: bool = True,
        init_range: float = 0.01,
    ) -> None:
        super().__init__()
        if kind not in ("fm", "deepfm", "wide-deep"):
            raise ValueError(f"unknown backbone {kind!r}; use fm, deepfm or wide-deep")
        self.kind, self.dim, self.use_item_id, self.use_user_id = kind, dim, use_item_id, use_user_id
        self.user_side = _Side(schema.user_features, dim)
        self.item_side = _Side(schema.item_features, dim)
        self.user_id = nn.Embedding(n_users, dim) if use_user_id else None
        self.item_id = nn.Embedding(n_items, dim) if use_item_id else None
        self.bias = nn.Parameter(torch.zeros(()))
        self.n_fields = int(use_user_id) + self.user_side.n + int(use_item_id) + self.item_side.n
        self.mlp = dropout_mlp([self.n_fields * dim, *hidden], dropout) if kind != "fm" else None
        # CVAR initialises every embedding U(-0.01, 0.01) (the ID rows of new items start there too):
        # N(0, 1) feature tables would make the FM term's logits explode before training
        for module in (self.user_side, self.item_side, self.user_id, self.item_id):
            for p in (module.parameters() if module is not None else ()):
                nn.init.uniform_(p, -init_range, init_range)
        self.init_range = init_range

    def item_feature_fields(self, item_cols: Mapping[str, Tensor]) -> Tensor:
        """The item-feature fields ``[B, n_item_features, dim]`` (generators read these)."""
        b = next(iter(item_cols.values())).shape[0] if item_cols else 0
        return self.item_side.fields(item_cols, b, self.bias.device)

    def parts(self, user: Tensor, item: Tensor, user_cols: Mapping[str, Tensor],
              item_cols: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Everything but the item-ID field: (fields before it, fields after it, first-order term).

        A method that tries many item-ID embeddings on one batch (CVAR's inner iterations)
        computes these once and calls :meth:`head` per try.
        """
        b, dev = user.shape[0], user.device
        before = [self.user_id(user).unsqueeze(1)] if self.use_user_id else []
        before.append(self.user_side.fields(user_cols, b, dev))
        after = self.item_side.fields(item_cols, b, dev)
        first = self.bias + self.user_side.first_order(user_cols, b, dev) + self.item_side.first_order(item_cols, b, dev)
        return torch.cat(before, dim=1), after, first

    def head(self, before: Tensor, item_emb: Tensor | None, after: Tensor, first: Tensor) -> Tensor:
        """Logits from :meth:`parts` and the item-ID embedding ``[B, dim]`` (None without an ID field)."""
        slot = [item_emb.unsqueeze(1)] if self.use_item_id else []
        fields = torch.cat([before, *slot, after], dim=1)
        out = first
        if self.kind in ("fm", "deepfm"):
            out = out + fm_interaction(fields)
        if self.mlp is not None:
            out = out + self.mlp(fields.flatten(1)).squeeze(-1)
        return out

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        user_cols: Mapping[str, Tensor],
        item_cols: Mapping[str, Tensor],
        item_emb: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B]``; ``item_emb`` ``[B, dim]`` replaces the item-ID field's lookup."""
        before, after, first = self.parts(user, item, user_cols, item_cols)
        if self.use_item_id and item_emb is None:
            item_emb = self.item_id(item)
        return self.head(before, item_emb, after, first)


def item_feature_input_dim(schema: FeatureSchema, dim: int) -> int:
    """Width of the flattened item-feature fields (input of the embedding generators)."""
    return max(1, len(schema.item_features)) * dim


__all__ = ["BackboneKind", "CTRBackbone", "dropout_mlp", "item_feature_input_dim"]
