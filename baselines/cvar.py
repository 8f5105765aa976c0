"""CVAR, conditional variational auto-encoder for warm item ID embeddings (Zhao et al., SIGIR 2022).

Mechanism: an encoder maps an old item's pre-trained ID embedding to a posterior q(z | e_id), a
prior network maps the item's side information to p(z | features), and a decoder maps z back to
an ID embedding. Trained on the old items' rows with the backbone frozen: BCE of the backbone fed
the decoded *prior* sample + reconstruction ``||dec(z_q) - e_id||^2`` + ``reg_weight`` x the
2-Wasserstein distance between the two diagonal Gaussians (summed over the batch), ``iters``
Adam steps per batch. Cold stage: new items get ``dec(mu_prior)``. After each warm-up batch:
ID-only training, then CVAR trains again on that batch (``stage_epochs``) and rewrites the new
items' embeddings from the prior path (skip both with ``rewrite_after_stage = false``: CVAR's
``cvar_init``).

Preset ``paper`` (default; BestActionNow/CVAR model/warm.py:263-373, main.py:338-409): z = 16,
noise scale 1e-4, recon weight 1, reg weight 1e-4, 10 iters per batch on ML-1M, 2 stage epochs,
lr 1e-3, wd 1e-6, a fresh optimiser per call; the prior reads a free per-item embedding table
besides the features (``prior_item_table``), which is how item-specific information from the
warm-up batches reaches the rewritten embedding.

Deviations: the prior has no ``count`` input and the decoder no ``count`` input (the whole-log
count leaks test-period data; CVAR's decoder is Linear(z + count -> d)); side information is the
backbone's (detached) item-feature fields plus the free table, not separate new feature tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.config import setting
from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig, WarmupTrainData
from metarec.warmup.protocol import Interactions


@dataclass
class CVARConfig(WarmupLearnerConfig):
    """CVAR's settings on top of the backbone's."""

    latent_dim: int = setting(16, ge=1)
    noise_scale: float = setting(1e-4, ge=0)
    recon_weight: float = setting(1.0, ge=0)
    reg_weight: float = setting(1e-4, ge=0)
    iters: int = setting(10, ge=1)
    pretrain_cvar_epochs: int = setting(1, ge=0)
    stage_epochs: int = setting(2, ge=0)
    cvar_lr: float = setting(1e-3, gt=0)
    prior_item_table: bool = True
    rewrite_after_stage: bool = True


class CVAR(ItemWarmupLearner):
    """CVAR: a conditional VAE whose prior (side information) generates warm ID embeddings."""

    name = "cvar"
    description = "CVAR: conditional VAE generating warm item ID embeddings (item-warmup)"
    Config = CVARConfig
    presets = {"paper": {"latent_dim": 16, "noise_scale": 1e-4, "recon_weight": 1.0, "reg_weight": 1e-4,
                         "iters": 10, "stage_epochs": 2, "cvar_lr": 1e-3}}

    def build(self) -> None:
        super().build()
        c = self.config
        d, z = c.embedding_dim, c.latent_dim
        d_side = max(1, len(self.schema.item_features)) * d + (d if c.prior_item_table else 0)
        self.enc_mu, self.enc_logv = nn.Linear(d, z), nn.Linear(d, z)
        self.prior_mu, self.prior_logv = nn.Linear(d_side, z), nn.Linear(d_side, z)
        self.decoder = nn.Linear(z, d)
        self.cvar = nn.ModuleDict(dict(enc_mu=self.enc_mu, enc_logv=self.enc_logv, prior_mu=self.prior_mu,
                                       prior_logv=self.prior_logv, decoder=self.decoder))
        for p in self.cvar.parameters():
            nn.init.uniform_(p, -0.01, 0.01)
        self.prior_table = nn.Embedding(self.n_items, d) if c.prior_item_table else None  # N(0, 1), as CVAR
        self.cvar.to(self.device)
        if self.prior_table is not None:
            self.prior_table.to(self.device)

    def side(self, items: Tensor) -> Tensor:
        """Side information of ``items``: feature fields (+ the free per-item table)."""
        f = self.item_fields(items)
        return torch.cat([f, self.prior_table(items)], -1) if self.prior_table is not None else f

    def prior_embedding(self, items: Tensor) -> Tensor:
        """``dec(mu_prior(side))``: the generated ID embedding."""
        return self.decoder(self.prior_mu(self.side(items)))

    def cvar_loss(self, batch: Interactions, cached: tuple | None = None) -> Tensor:
        """BCE (prior path) + reconstruction + regulariser; ``cached``: the batch's frozen backbone parts,
        its ID embeddings and feature fields (computed once per batch, reused over the ``iters`` steps)."""
        c = self.config
        if cached is None:
            cached = self.frozen_parts(batch)
        parts, e, fields = cached
        side = torch.cat([fields, self.prior_table(batch.item)], -1) if self.prior_table is not None else fields
        mu, logv = self.enc_mu(e), self.enc_logv(e)
        mu_p, logv_p = self.prior_mu(side), self.prior_logv(side)
        z = mu + c.noise_scale * torch.exp(0.5 * logv) * torch.randn_like(mu)
        z_p = mu_p + c.noise_scale * torch.exp(0.5 * logv_p) * torch.randn_like(mu_p)
        recon = (self.decoder(z) - e).pow(2).sum(-1).mean()
        w2 = ((mu - mu_p).pow(2) + (torch.exp(0.5 * logv) - torch.exp(0.5 * logv_p)).pow(2)).sum()
        before, after, first = parts
        bce = F.binary_cross_entropy_with_logits(self.backbone.head(before, self.decoder(z_p), after, first), batch.label)
        return bce + c.recon_weight * recon + c.reg_weight * w2

    @torch.no_grad()
    def frozen_parts(self, batch: Interactions) -> tuple:
        """What the frozen backbone contributes to a batch: its parts, ID embeddings, item-feature fields."""
        u, i = self.cols(batch)
        return (self.backbone.parts(batch.user, batch.item, u, i), self.backbone.item_id(batch.item),
                self.item_fields(batch.item))

    def cvar_train(self, rows: Interactions, epochs: int, tag: str) -> float:
        """``epochs`` passes over ``rows``, ``iters`` steps per batch, a fresh Adam (CVAR)."""
        c = self.config
        params = [*self.cvar.parameters(), *([] if self.prior_table is None else self.prior_table.parameters())]
        self.backbone.requires_grad_(False)
        opt = torch.optim.Adam(params, lr=c.cvar_lr, weight_decay=c.weight_decay)
        last = float("nan")
        for epoch in range(epochs):
            for batch in rows.batches(c.batch_size, generator=self.generator(tag, epoch)):
                batch = batch.to(self.device)
                cached = self.frozen_parts(batch)
                for _ in range(c.iters):
                    loss = self.cvar_loss(batch, cached)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                last = float(loss.detach())
        self.backbone.requires_grad_(True)
        return last

    def after_pretrain(self, train: WarmupTrainData) -> None:
        self.info["cvar_loss_pretrain"] = self.cvar_train(train.base, self.config.pretrain_cvar_epochs, "cvar-base")

    def init_new_items(self, new_items: Tensor) -> None:
        self.new_items = new_items.to(self.device)
        with torch.no_grad():
            self.write_item_embeddings(self.new_items, self.prior_embedding(self.new_items))

    def warm_up(self, rows: Interactions, stage: str) -> None:
        self.train_item_ids(rows, stage)
        if self.config.rewrite_after_stage:
            self.info[f"cvar_loss_{stage}"] = self.cvar_train(rows, self.config.stage_epochs, f"cvar-{stage}")
            with torch.no_grad():
                self.write_item_embeddings(self.new_items, self.prior_embedding(self.new_items))
