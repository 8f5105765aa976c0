"""Meta-Embedding (Pan et al., SIGIR 2019) on the item warm-up protocol.

Mechanism: a generator maps an item's feature embeddings (from the frozen, pre-trained backbone)
to its ID embedding. It is meta-trained on the old items as if they were new: for each old item
the time-ordered rows are cut into four equal chunks; the generated embedding is scored on chunk
a (cold loss), takes one gradient step on it (``emb' = emb - inner_lr * grad``, second order), and
is scored again on chunk b (warm loss); the meta-loss is ``alpha * a + (1 - alpha) * b``. Epoch e
pairs chunk e with chunk e + 1. At the cold stage the new items get the generated embedding;
then ID-only warm-up.

Presets:

* ``cvar`` (default; BestActionNow/CVAR model/warm.py:28-112, main.py:194-258): generator
  Linear(->16)-ReLU-Linear(16->16), inner lr 1e-3, alpha 0.1, one meta epoch (a -> b).
* ``paper`` (Feiyang/MetaEmbedding notebook): one tanh layer without bias, output / 5, inner
  lr 1e-4 (LR / 10), alpha 0.1, 3 meta epochs (a->b, b->c, c->d).

Deviations: the generator reads item features only -- not the untrained ID embedding of the cold
item and not the whole-log ``count`` (CVAR feeds both; ``count`` leaks test-period data); the inner
step is per item (the paper's task), not per row (CVAR); batches are groups of old items
(``items_per_batch``) rather than CVAR's 2,048 aligned rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.config import setting
from metarec.nn import mlp
from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig, WarmupTrainData
from metarec.warmup.protocol import Interactions


@dataclass
class MetaEmbConfig(WarmupLearnerConfig):
    """Meta-Embedding's settings on top of the backbone's."""

    generator: Literal["mlp", "tanh"] = "mlp"
    generator_hidden: int = setting(16, ge=1)
    alpha: float = setting(0.1, ge=0, le=1)
    inner_lr: float = setting(1e-3, ge=0)
    meta_epochs: int = setting(1, ge=0)
    meta_lr: float = setting(1e-3, gt=0)
    items_per_batch: int = setting(64, ge=1)


class TanhGenerator(nn.Module):
    """The official generator: ``tanh(W x) / 5`` (no bias)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``tanh(W x) / 5``: every output in [-0.2, 0.2], as in the official code."""
        return torch.tanh(self.lin(x)) / 5.0


def item_chunks(base: Interactions, old_items: Tensor, n_chunks: int = 4) -> list[Interactions]:
    """Each old item's time-ordered rows cut into ``n_chunks`` equal chunks (the remainder dropped)."""
    item = base.item.numpy()
    order = np.lexsort((base.rank.numpy(), item))
    items_sorted = item[order]
    starts = np.r_[0, np.flatnonzero(np.diff(items_sorted)) + 1]
    lengths = np.diff(np.r_[starts, len(order)])
    pos = np.arange(len(order)) - np.repeat(starts, lengths)
    q = np.repeat(lengths // n_chunks, lengths)
    chunk = np.where(q > 0, pos // np.maximum(q, 1), n_chunks)
    return [base.select(torch.as_tensor(order[chunk == k])) for k in range(n_chunks)]


class MetaEmb(ItemWarmupLearner):
    """Meta-Embedding: a feature-to-ID-embedding generator meta-trained on the two-batch loss."""

    name = "metaemb"
    description = "Meta-Embedding: ID-embedding generator from item features, two-batch meta-loss (item-warmup)"
    Config = MetaEmbConfig
    presets = {
        "cvar": {"generator": "mlp", "generator_hidden": 16, "inner_lr": 1e-3, "alpha": 0.1, "meta_epochs": 1},
        "paper": {"generator": "tanh", "inner_lr": 1e-4, "alpha": 0.1, "meta_epochs": 3},
    }
    paper_presets = ("paper", "cvar")

    def build(self) -> None:
        super().build()
        c = self.config
        d_in = max(1, len(self.schema.item_features)) * c.embedding_dim
        if c.generator == "tanh":
            self.gen = TanhGenerator(d_in, c.embedding_dim).to(self.device)
        else:
            self.gen = mlp([d_in, c.generator_hidden, c.embedding_dim]).to(self.device)

    def generate(self, items: Tensor) -> Tensor:
        """Generated ID embeddings ``[n, dim]`` of ``items``."""
        return self.gen(self.item_fields(items))

    def _per_item_loss(self, rows: Interactions, loc: Tensor, emb: Tensor, n: int) -> Tensor:
        """Mean BCE of each item of the batch on its rows ``[n]`` (items without rows: 0)."""
        loss = F.binary_cross_entropy_with_logits(self.logits(rows, emb[loc]), rows.label, reduction="none")
        total = torch.zeros(n, device=loss.device).index_add(0, loc, loss)
        count = torch.zeros(n, device=loss.device).index_add(0, loc, torch.ones_like(loss))
        return total / count.clamp_min(1)

    def after_pretrain(self, train: WarmupTrainData) -> None:
        c = self.config
        if c.meta_epochs == 0:
            return
        chunks = item_chunks(train.base, train.old_items)
        self.backbone.requires_grad_(False)
        opt = torch.optim.Adam(self.gen.parameters(), lr=c.meta_lr, weight_decay=c.weight_decay)
        old = train.old_items
        slot = torch.full((self.n_items,), -1, dtype=torch.long)
        losses = []
        for epoch in range(c.meta_epochs):
            a, b = chunks[epoch % 4], chunks[(epoch + 1) % 4]
            perm = old[torch.randperm(len(old), generator=self.generator("metaemb", epoch))]
            batch_of = torch.full((self.n_items,), -1, dtype=torch.long)
            batch_of[perm] = torch.arange(len(perm)) // c.items_per_batch
            groups = [(ch, torch.argsort(batch_of[ch.item], stable=True)) for ch in (a, b)]
            bounds = [torch.searchsorted(batch_of[ch.item][o], torch.arange(len(perm) // c.items_per_batch + 2))
                      for ch, o in groups]
            for k in range(0, (len(perm) + c.items_per_batch - 1) // c.items_per_batch):
                items = perm[k * c.items_per_batch:(k + 1) * c.items_per_batch]
                slot[items] = torch.arange(len(items))
                ra, rb = (ch.select(o[bd[k]:bd[k + 1]]).to(self.device) for (ch, o), bd in zip(groups, bounds))
                la_loc, lb_loc = slot[ra.item.cpu()].to(self.device), slot[rb.item.cpu()].to(self.device)
                emb = self.generate(items.to(self.device))
                loss_a = self._per_item_loss(ra, la_loc, emb, len(items))
                (g,) = torch.autograd.grad(loss_a.sum(), emb, create_graph=True)
                loss_b = self._per_item_loss(rb, lb_loc, emb - c.inner_lr * g, len(items))
                meta = c.alpha * loss_a.mean() + (1 - c.alpha) * loss_b.mean()
                opt.zero_grad(set_to_none=True)
                meta.backward()
                opt.step()
                losses.append(float(meta.detach()))
        self.backbone.requires_grad_(True)
        self.info["meta_loss_last_epoch"] = float(np.mean(losses[-max(1, len(losses) // c.meta_epochs):]))

    def init_new_items(self, new_items: Tensor) -> None:
        with torch.no_grad():
            self.write_item_embeddings(new_items, self.generate(new_items.to(self.device)))
