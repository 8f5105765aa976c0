"""MWUF, Meta Warm-Up Framework (Zhu et al., SIGIR 2021), on the item warm-up protocol.

Mechanism: a new item's warm embedding is ``cold_emb * scale(item features) + shift(mean
embedding of the item's interacting users)``. ``cold_emb`` starts as the mean of the old items'
pre-trained ID embeddings. On the old items (one pass over their rows, backbone frozen), two Adam
optimisers alternate per batch: the *cold loss* trains a per-item cold embedding table fed to the
backbone as is; the *warm loss* trains the meta scaling and shifting networks on the warm
embedding built from the (detached) cold embedding and the item's users. At the cold stage the
warm embedding is written into the backbone; then ID-only warm-up.

Preset ``cvar`` (default; BestActionNow/CVAR model/warm.py:114-261, main.py:260-336): scale
MLP(->16->16) on the item features, shift MLP(16->16->16) on the averaged user ID embeddings,
both initialised U(-0.01, 0.01), lr 1e-3, one pass.

Deviations: the users-per-item map is built the right way round (CVAR swaps user and item ids,
warm.py:244); a new item has no interacting user before its first warm-up batch, so at the cold
stage its shift input is the mean embedding of all users (an uninformative prior), not the
current row's user (CVAR's fallback); the scale network reads item features only -- not the
cold item's untrained ID embedding nor the whole-log ``count`` (a test-period leak); CVAR writes
the warm embedding once (cold stage) and then fine-tunes the backbone rows directly, here every
stage goes through the meta networks as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec.config import setting
from metarec.nn import mlp
from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig, WarmupTrainData


@dataclass
class MWUFConfig(WarmupLearnerConfig):
    """MWUF's settings on top of the backbone's."""

    meta_hidden: int = setting(16, ge=1)
    meta_lr: float = setting(1e-3, gt=0)
    meta_epochs: int = setting(1, ge=0)
    #: Initial range of the meta networks (CVAR: U(-0.01, 0.01), so the scale starts near 0).
    meta_init_range: float = setting(0.01, ge=0)


class MWUF(ItemWarmupLearner):
    """MWUF: meta scaling (item features) and shifting (interacting users) of the cold ID embedding."""

    name = "mwuf"
    description = "MWUF: meta scaling/shifting networks warm the cold ID embedding (item-warmup)"
    Config = MWUFConfig
    presets = {"cvar": {"meta_hidden": 16, "meta_lr": 1e-3, "meta_epochs": 1, "meta_init_range": 0.01}}
    paper_presets = ("cvar",)

    def build(self) -> None:
        super().build()
        c = self.config
        d = c.embedding_dim
        d_in = max(1, len(self.schema.item_features)) * d
        self.meta_scale = mlp([d_in, c.meta_hidden, d]).to(self.device)
        self.meta_shift = mlp([d, c.meta_hidden, d]).to(self.device)
        for p in [*self.meta_scale.parameters(), *self.meta_shift.parameters()]:
            nn.init.uniform_(p, -c.meta_init_range, c.meta_init_range)

    def user_vectors(self) -> Tensor:
        """One vector per user: the user-ID embedding (or the mean user-feature field without IDs)."""
        if self.backbone.user_id is not None:
            return self.backbone.user_id.weight.detach()
        cols = self.users.columns
        n = len(self.users)
        return self.backbone.user_side.fields(cols, n, self.device).mean(1).detach()

    def add_users(self, rows) -> None:
        """Add the users of ``rows`` to their items' user averages."""
        rows = rows.to(self.device)
        uv = self.user_vectors()
        self.user_sum.index_add_(0, rows.item, uv[rows.user])
        self.user_count.index_add_(0, rows.item, torch.ones(len(rows), device=self.device))
        # items without a user yet (every new item before its first batch) get the mean user: no information
        self.user_avg = torch.where(self.user_count.unsqueeze(-1) > 0,
                                    self.user_sum / self.user_count.clamp_min(1).unsqueeze(-1), uv.mean(0))

    def warm_embedding(self, cold: Tensor, items: Tensor, user_avg: Tensor) -> Tensor:
        """``cold * scale(features) + shift(user average)``."""
        return cold * self.meta_scale(self.item_fields(items)) + self.meta_shift(user_avg)

    def after_pretrain(self, train: WarmupTrainData) -> None:
        c = self.config
        d = c.embedding_dim
        table = self.backbone.item_id.weight.detach()
        self.mean_old = table[self.old_items].mean(0)
        self.cold_emb = nn.Parameter(self.mean_old.expand(self.n_items, d).clone())
        self.user_sum = torch.zeros(self.n_items, d, device=self.device)
        self.user_count = torch.zeros(self.n_items, device=self.device)
        self.add_users(train.base)
        self.backbone.requires_grad_(False)
        opt_cold = torch.optim.Adam([self.cold_emb], lr=c.meta_lr, weight_decay=c.weight_decay)
        opt_meta = torch.optim.Adam([*self.meta_scale.parameters(), *self.meta_shift.parameters()], lr=c.meta_lr,
                                    weight_decay=c.weight_decay)
        cold_loss = warm_loss = float("nan")
        for epoch in range(c.meta_epochs):
            for batch in train.base.batches(c.batch_size, generator=self.generator("mwuf", epoch)):
                batch = batch.to(self.device)
                loss1 = self.bce(batch, self.cold_emb[batch.item])
                opt_cold.zero_grad(set_to_none=True)
                loss1.backward()
                opt_cold.step()
                warm = self.warm_embedding(self.cold_emb[batch.item].detach(), batch.item, self.user_avg[batch.item])
                loss2 = self.bce(batch, warm)
                opt_meta.zero_grad(set_to_none=True)
                loss2.backward()
                opt_meta.step()
                cold_loss, warm_loss = float(loss1.detach()), float(loss2.detach())
        self.backbone.requires_grad_(True)
        self.info.update(cold_loss_last=cold_loss, warm_loss_last=warm_loss)

    def init_new_items(self, new_items: Tensor) -> None:
        self.new_items = new_items.to(self.device)
        with torch.no_grad():
            self.cold_emb[self.new_items] = self.mean_old
        self.serve_warm()

    def serve_warm(self) -> None:
        """Write the new items' warm embeddings into the backbone (what predictions use)."""
        items = self.new_items
        with torch.no_grad():
            warm = self.warm_embedding(self.cold_emb[items], items, self.user_avg[items])
        self.write_item_embeddings(items, warm)

    def warm_up(self, rows, stage: str) -> None:
        """Cold loss on the stage's rows (new items' cold embeddings only), new users, warm rewrite."""
        c = self.config
        self.backbone.requires_grad_(False)
        self.train_rows(rows, [self.cold_emb], lambda b: self.bce(b, self.cold_emb[b.item]), epochs=c.warm_epochs,
                        lr=c.warm_lr, tag=f"mwuf-warm-{stage}")
        self.backbone.requires_grad_(True)
        self.add_users(rows)
        self.serve_warm()
