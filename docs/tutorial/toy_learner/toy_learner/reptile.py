"""Reptile (Nichol et al., 2018) as a metarec plugin: meta-learning without a meta-gradient."""
from dataclasses import dataclass, replace

import torch

from metarec import engine
from metarec.methods.maml import MAMLConfig, MAMLLearner
from metarec.tasks import TaskBatch


@dataclass
class ReptileConfig(MAMLConfig):
    """MAML's settings with Reptile's defaults: several plain inner steps, Adam as the outer step."""

    inner_lr: float = 0.05
    inner_steps: int = 5
    meta_lr: float = 1e-2
    first_order: bool = True


class Reptile(MAMLLearner):
    """Adapt every user on their whole episode, then move the shared weights toward the result."""

    name = "toy-reptile"
    description = "Reptile (Nichol et al. 2018): first-order meta-learning, every weight adapted"
    Config = ReptileConfig
    presets = {"quick": {"epochs": 3, "batch_size": 16}}
    search_space = {  # what `metarec tune` searches: config field -> range
        "inner_lr": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
        "inner_steps": {"type": "int", "low": 1, "high": 10},
        "meta_lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    }

    def local_parameter_names(self) -> list[str]:
        """Reptile adapts every parameter, the feature embeddings included."""
        return [name for name, _ in self.model.named_parameters()]

    def meta_step(self, batch: TaskBatch) -> float:
        """One Reptile update on a batch of users; returns their episode loss after adaptation."""
        c = self.config
        # Training users' episodes are used whole: query ratings join the support set.
        cat = lambda s, q: torch.cat([s, q], dim=1)  # noqa: E731
        episode = replace(
            batch,
            support_features={k: cat(v, batch.query_features[k]) for k, v in batch.support_features.items()},
            support_ratings=cat(batch.support_ratings, batch.query_ratings),
            support_mask=cat(batch.support_mask, batch.query_mask),
        )
        theta = {name: p.detach() for name, p in self.params().items()}
        fast = engine.adapt_batch(self.forward, theta, self.local_names, episode,
                                  lr=c.inner_lr, steps=c.inner_steps, first_order=True)
        # The Reptile direction theta - mean_u(theta_u) plays the gradient of the outer optimiser.
        self.optimizer.zero_grad(set_to_none=True)
        for name, p in self.model.named_parameters():
            p.grad = p.detach() - fast[name].mean(0)
        self.optimizer.step()
        with torch.no_grad():
            pred = engine.predict_batch(self.forward, theta, episode, user_params=fast, items="support")
            return float(engine.masked_mse(pred, episode.support_ratings, episode.support_mask))
