"""LWA and NLBA (Vartak et al., NeurIPS 2017): a user's item history adapts a feature-only scorer.

A task is one user; the support set is the user's history of items with their labels, and a new
item is scored from its *features* only. An item network F (embedded item features ->
Linear(64)-ReLU-Linear(32), RecBole-MetaRec's sizes) gives each item a vector; the class
representatives are the means of F over the user's negative (R0) and positive (R1) history items.

* LWA (linear weight adaptation): ``p = sigmoid(F(t) . (W0 R0 + W1 R1) + b)``.
* NLBA (non-linear bias adaptation): ``h = ReLU(F(t) W_h + V0 R0 + V1 R1)``,
  ``p = sigmoid(h . w + v0 . R0 + v1 . R1 + b)``.

On the item warm-up protocol (brief, decision 12): F and the adaptation weights are trained on
the old items' rows, each row scored against its user's old-period history *without that row*
(leave-one-out), all users of a batch at once (per-user sums of F over a sparse history matrix).
The cold stage scores the new items' test rows from the users' old-period histories; each
warm-up batch adds its rows to the users' histories (no gradient step: the history *is* the
adaptation). No item-ID embedding is used, so nothing is written at the cold stage.

Preset ``paper``: means for R0/R1 (the paper; RecBole-MetaRec sums them, LWA.py:77-78), item
embedding 8 per feature as RecBole's tuned ML-1M table, NLBA hidden 8 (tuned table; yaml: 36).
Deviations: proper BCE (RecBole applies cross-entropy to probabilities); Adam lr 1e-3, one epoch
over rows, like every backbone here (RecBole: SGD, 50 epochs of 32-user batches); W initialised
N(0, 1/d) rather than N(0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.config import setting
from metarec.nn import FeatureEmbedder, mlp
from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig, WarmupTrainData
from metarec.warmup.protocol import Interactions


@dataclass
class LWAConfig(WarmupLearnerConfig):
    """Settings of LWA/NLBA (the backbone settings other than the optimiser are unused)."""

    item_embedding_dim: int = setting(8, ge=1)
    item_hidden: int = setting(64, ge=1)
    item_dim: int = setting(32, ge=1)
    nlba_hidden: int = setting(8, ge=1)
    pooling: Literal["mean", "sum"] = "mean"


class _HistoryScorer(ItemWarmupLearner):
    """Shared machinery: the item network, per-user class sums, leave-one-out training."""

    Config = LWAConfig
    uses_item_id = False
    presets = {"paper": {"item_embedding_dim": 8, "nlba_hidden": 8, "pooling": "mean"}}

    def build(self) -> None:
        c = self.config
        if not self.schema.item_features:
            from metarec.config import ConfigError

            raise ConfigError(f"{self.name}: scores items from their features, and the dataset has none")
        self.item_embed = FeatureEmbedder(self.schema.item_features, c.item_embedding_dim).to(self.device)
        self.item_net = mlp([self.item_embed.out_dim, c.item_hidden, c.item_dim]).to(self.device)
        self.build_head(c.item_dim)

    def build_head(self, d: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, f: Tensor, r0: Tensor, r1: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def item_vectors(self) -> Tensor:
        """F(item) for every item ``[n_items, item_dim]``."""
        return self.item_net(self.item_embed(self.items.columns))

    def _history(self, rows: Interactions) -> None:
        """Per-user positive/negative history matrices (sparse counts) from ``rows``."""
        rows = rows.to(self.device)
        for cls, name in ((1, "h1"), (0, "h0")):
            sel = rows.label == cls
            idx = torch.stack([rows.user[sel], rows.item[sel]])
            m = torch.sparse_coo_tensor(idx, torch.ones(int(sel.sum()), device=self.device),
                                        (self.n_users, self.n_items), check_invariants=False).coalesce()
            m = m if getattr(self, name, None) is None else (getattr(self, name) + m).coalesce()
            setattr(self, name, m)
            setattr(self, "n" + name[1], torch.sparse.sum(m, 1).to_dense() if m._nnz() else torch.zeros(self.n_users, device=self.device))

    def representatives(self, fv: Tensor, user: Tensor, item: Tensor | None = None, label: Tensor | None = None):
        """(R0, R1) of ``user`` ``[B, d]``; leaves out the row ``(user, item, label)`` when given."""
        out = []
        for cls, m, counts in ((0, self.h0, self.n0), (1, self.h1, self.n1)):
            s = torch.sparse.mm(m.index_select(0, user), fv)  # only the batch's users' rows
            n = counts[user]
            if item is not None:
                own = (label == cls).to(fv.dtype)
                s = s - own.unsqueeze(-1) * fv[item]
                n = n - own
            out.append(s / n.clamp_min(1).unsqueeze(-1) if self.config.pooling == "mean" else s)
        return out

    def fit(self, train: WarmupTrainData) -> "_HistoryScorer":
        self.users, self.items = train.users.to(self.device), train.items.to(self.device)
        self.old_items = train.old_items.to(self.device)
        self.h0 = self.h1 = None
        self._history(train.base)
        c = self.config
        params = [p for n, p in self.named_parameters_()]

        def loss_fn(batch: Interactions) -> Tensor:
            fv = self.item_vectors()
            r0, r1 = self.representatives(fv, batch.user, batch.item, batch.label)
            return F.binary_cross_entropy_with_logits(self.head(fv[batch.item], r0, r1), batch.label)

        self.info["train_loss"] = self.train_rows(train.base, params, loss_fn, epochs=c.pretrain_epochs, lr=c.lr,
                                                  weight_decay=c.weight_decay, tag="history-train")
        return self

    def named_parameters_(self):
        for mod in (self.item_embed, self.item_net, self.head_module):
            yield from mod.named_parameters()

    def init_new_items(self, new_items: Tensor) -> None:
        """Nothing to write: new items are scored from their features."""

    def warm_up(self, rows: Interactions, stage: str) -> None:
        """The stage's interactions join the users' histories."""
        self._history(rows)

    @torch.no_grad()
    def predict(self, rows: Interactions) -> Tensor:
        self.head_module.eval()
        fv = self.item_vectors()
        out = []
        for b in rows.batches(self.config.eval_batch_size):
            b = b.to(self.device)
            r0, r1 = self.representatives(fv, b.user)
            out.append(torch.sigmoid(self.head(fv[b.item], r0, r1)).cpu())
        return torch.cat(out) if out else torch.empty(0)


class LWA(_HistoryScorer):
    """LWA: the scorer's weights are linear in the user's class representatives."""

    name = "lwa"
    description = "LWA: linear weight adaptation from a user's item history, features only (item-warmup)"

    def build_head(self, d: int) -> None:
        """``W0``, ``W1`` (``[d, d]``, N(0, 1/d)) and the bias ``b``."""
        self.head_module = nn.ParameterDict({
            "w0": nn.Parameter(torch.randn(d, d) / d ** 0.5),
            "w1": nn.Parameter(torch.randn(d, d) / d ** 0.5),
            "b": nn.Parameter(torch.zeros(())),
        }).to(self.device)

    def head(self, f: Tensor, r0: Tensor, r1: Tensor) -> Tensor:
        """Logits ``F(t) . (W0 R0 + W1 R1) + b``: the user's weights are linear in their representatives."""
        h = self.head_module
        w = r0 @ h["w0"].T + r1 @ h["w1"].T
        return (f * w).sum(-1) + h["b"]


class NLBA(_HistoryScorer):
    """NLBA: a shared network whose layer biases are linear in the user's class representatives."""

    name = "nlba"
    description = "NLBA: non-linear bias adaptation from a user's item history, features only (item-warmup)"

    def build_head(self, d: int) -> None:
        """The shared layers ``W_h``, ``w`` and the bias maps ``V0``, ``V1`` (hidden) and ``v0``, ``v1`` (output)."""
        k = self.config.nlba_hidden
        self.head_module = nn.ModuleDict({
            "wh": nn.Linear(d, k), "v0": nn.Linear(d, k, bias=False), "v1": nn.Linear(d, k, bias=False),
            "wo": nn.Linear(k, 1), "u0": nn.Linear(d, 1, bias=False), "u1": nn.Linear(d, 1, bias=False),
        }).to(self.device)

    def head(self, f: Tensor, r0: Tensor, r1: Tensor) -> Tensor:
        """Logits of a shared two-layer network whose biases are linear in ``R0``, ``R1``."""
        m = self.head_module
        hidden = torch.relu(m["wh"](f) + m["v0"](r0) + m["v1"](r1))
        return (m["wo"](hidden) + m["u0"](r0) + m["u1"](r1)).squeeze(-1)
