"""DropoutNet (Volkovs et al., NeurIPS 2017) on the item warm-up protocol.

Mechanism: during pre-training the item-ID embedding input is dropped -- replaced by the mean
ID embedding of the old items (detached, so no gradient reaches the table) -- so the backbone
learns to score an item from its features when its ID carries nothing. At the cold stage the
new items get that same mean vector, as the paper does at inference; then ID-only warm-up.

Presets:

* ``paper`` (default; layer6ai-labs/DropoutNet torch/main.py): per-sample dropout, rate 0.5,
  the dropped input (the mean) also used for cold items at inference.
* ``cvar`` (BestActionNow/CVAR main.py:80-111): with probability 0.1 *per batch* the whole
  batch's ID embeddings are replaced by the table mean, and cold items keep their own untrained
  row (the train/inference mismatch of that code).

Deviations: no user-side dropout and no content network (the backbone's item-feature fields play
that role); the paper's input is a latent preference vector from a pre-trained WMF model, here the
backbone's own ID embedding; Adam as for every backbone here, not SGD with momentum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from metarec.config import setting
from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig
from metarec.warmup.protocol import Interactions


@dataclass
class DropoutNetConfig(WarmupLearnerConfig):
    """DropoutNet's settings on top of the backbone's."""

    #: Probability of dropping an item's ID embedding during pre-training.
    drop_rate: float = setting(0.5, ge=0, le=1)
    #: ``sample``: each row independently (paper); ``batch``: the whole batch at once (CVAR).
    drop_unit: Literal["sample", "batch"] = "sample"
    #: Cold items' ID embedding: the dropped-input ``mean`` (paper) or their ``own`` untrained row (CVAR).
    cold_input: Literal["mean", "own"] = "mean"


class DropoutNet(ItemWarmupLearner):
    """DropoutNet: ID-embedding input dropout in pre-training, the mean ID vector for cold items."""

    name = "dropoutnet"
    description = "DropoutNet: item-ID input dropout during pre-training (item-warmup)"
    Config = DropoutNetConfig
    presets = {
        "paper": {"drop_rate": 0.5, "drop_unit": "sample", "cold_input": "mean"},
        "cvar": {"drop_rate": 0.1, "drop_unit": "batch", "cold_input": "own"},
    }

    def mean_item_embedding(self) -> Tensor:
        """Mean ID embedding of the old items (the "empty" input), detached."""
        return self.backbone.item_id.weight[self.old_items].mean(0).detach()

    def pretrain_loss(self, batch: Interactions) -> Tensor:
        c = self.config
        emb = self.backbone.item_id(batch.item)
        if c.drop_unit == "sample":
            drop = torch.rand(len(batch), device=emb.device) < c.drop_rate
        else:
            drop = torch.full((len(batch),), bool(torch.rand(()) < c.drop_rate), device=emb.device)
        emb = torch.where(drop.unsqueeze(-1), self.mean_item_embedding().expand_as(emb), emb)
        return self.bce(batch, emb)

    def init_new_items(self, new_items: Tensor) -> None:
        if self.config.cold_input == "mean":
            self.write_item_embeddings(new_items, self.mean_item_embedding().expand(len(new_items), -1))
        # "own": keep the row pre-training left (CVAR)
