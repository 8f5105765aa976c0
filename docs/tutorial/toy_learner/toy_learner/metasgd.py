"""Meta-SGD (Li et al., 2017) as a metarec plugin: MAML whose inner step sizes are learned too."""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec import engine
from metarec.methods.maml import MAMLConfig, MAMLLearner
from metarec.tasks import TaskBatch


@dataclass
class MetaSGDConfig(MAMLConfig):
    """MAML's settings; ``inner_lr`` is now only the starting value of every learned step size."""

    inner_lr: float = 0.05
    meta_lr: float = 1e-3
    first_order: bool = True


class MetaSGD(MAMLLearner):
    """MAML on the profile-feature rating MLP with one learned step size per adapted weight."""

    name = "toy-metasgd"
    description = "Meta-SGD: MAML with learned per-weight inner step sizes (docs tutorial)"
    Config = MetaSGDConfig
    presets = {"quick": {"epochs": 3, "batch_size": 16}}

    def build(self) -> None:
        super().build()  # the model, its forward function, the names of the local parameters
        c = self.config
        # One step size per entry of every locally adapted tensor, meta-learned with the model.
        self.step_sizes = nn.ParameterDict({
            name.replace(".", "_"): nn.Parameter(torch.full_like(p, c.inner_lr))
            for name, p in self.model.named_parameters() if name in self.local_names
        })
        params = [*self.model.parameters(), *self.step_sizes.parameters()]
        self.optimizer = engine.make_optimizer(c.meta_optimizer, params, c.meta_lr, c.weight_decay)

    def lr(self) -> dict[str, Tensor]:
        """Step sizes by parameter name: the engine takes such a mapping instead of a float."""
        return {name: self.step_sizes[name.replace(".", "_")] for name in self.local_names}

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """Mean query loss after adaptation; its gradient reaches the model AND the step sizes."""
        c = self.config
        return engine.query_losses(
            self.forward, self.params(), self.local_names, batch, lr=self.lr(),
            steps=c.inner_steps, first_order=c.first_order, chunk_size=c.chunk_size,
        ).mean()

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        """Adapt each test user with the learned step sizes, then predict the query, ``[B, Q]``."""
        c, lr = self.config, {n: s.detach() for n, s in self.lr().items()}
        self.model.eval()
        steps = c.inner_steps if c.eval_inner_steps is None else c.eval_inner_steps
        return engine.adapt_and_predict_batch(
            self.forward, self.params(), self.local_names, batch, lr=lr, steps=steps, chunk_size=c.chunk_size,
        )
