"""The item warm-up protocol: CTR backbones, new items' cold ID embeddings and warm-up stages.

Modules, in the order of the flow: :mod:`~metarec.warmup.protocol` (data -> old/new items and
warm-up batches), :mod:`~metarec.warmup.backbone` (FM, DeepFM, Wide&Deep),
:mod:`~metarec.warmup.learner` (the learner base class, the floors and the feature-only model),
:mod:`~metarec.warmup.metrics` (AUC, F1, log-loss, item bootstrap) and
:mod:`~metarec.warmup.bench` (``metarec bench --protocol item-warmup``).
"""

from metarec.warmup.learner import ItemWarmupLearner, WarmupLearnerConfig, WarmupTrainData
from metarec.warmup.protocol import STAGES, Interactions, WarmupConfig, WarmupSplit, build_warmup_split

__all__ = ["Interactions", "ItemWarmupLearner", "STAGES", "WarmupConfig", "WarmupLearnerConfig", "WarmupSplit",
           "WarmupTrainData", "build_warmup_split"]
