"""The ``learn2learn`` backend: a MAML-family learner's inner loop through ``learn2learn.algorithms``.

metarec's own engine (:mod:`metarec.engine`) adapts every user of a batch at once with
``torch.func``. This backend does what a learn2learn user writes by hand -- per task,
``learner = maml.clone()``, ``learner.adapt(support_loss)`` once per inner step, then the query
loss -- so that a metarec learner can be driven by any learn2learn algorithm (``MAML``,
``MetaSGD``) and the two implementations can be checked against each other
(``tests/test_learn2learn_parity.py``: same losses and meta-gradients to 1e-5).

**Local-only adaptation.** learn2learn adapts *every* parameter of the module it wraps, while a
metarec learner declares which parameters adapt per user (MeLU: the decision MLP only; its
embeddings are global). Wrapping the whole model would silently adapt the embeddings too. So
the wrapped module is :class:`LocalParameters`, which holds exactly the learner's local
parameters -- the same ``Parameter`` objects, not copies, so the meta-optimiser and checkpoints
see no difference. learn2learn clones and updates those; the model is evaluated with the
adapted tensors substituted (:func:`torch.func.functional_call`) and its global parameters as
they are.

**Installation.** learn2learn is optional and imported only when this backend is selected.
Its last release (0.2.0) installs from PyPI on CPython 3.10 (``pip install 'metarec[learn2learn]'``)
but its sdist does not build on CPython >= 3.11; ``scripts/install_learn2learn.sh VENV`` builds
it there (see :data:`INSTALL_HINT`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from metarec.engine import Forward, LossFn, Params, masked_mse, user_row
from metarec.tasks import TaskBatch

Algorithm = Literal["maml", "metasgd"]

INSTALL_HINT = (
    "the 'learn2learn' backend needs the learn2learn package, which is not installed. "
    "On Python 3.10: pip install 'metarec[learn2learn]'. "
    "On Python >= 3.11 learn2learn 0.2.0 does not build from its sdist as published; from a metarec "
    "source checkout run `bash scripts/install_learn2learn.sh VENV` (or `make l2l`), which builds it "
    "with regenerated Cython extensions into the virtual env VENV, then `VENV/bin/pip install -e .`. "
    "Or keep backend='torch.func' (the default; it computes the same numbers, batched)."
)


def import_learn2learn() -> ModuleType:
    """``import learn2learn``, or an ImportError that says how to install it."""
    try:
        import learn2learn
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} (import failed: {exc})") from exc
    return learn2learn


class LocalParameters(nn.Module):
    """A model's locally adapted parameters as one module, the unit learn2learn clones and adapts.

    Registers the model's own ``Parameter`` objects (shared, not copied) under positional keys,
    because parameter names may not contain dots; :meth:`as_dict` maps them back to the model's
    names. After learn2learn's ``clone()``/``adapt()`` the entries are the adapted tensors.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        if not names:
            raise ValueError("LocalParameters needs at least one locally adapted parameter")
        own = dict(model.named_parameters())
        unknown = [n for n in names if n not in own]
        if unknown:
            raise KeyError(f"the model has no parameters named {unknown[:3]}; known: {list(own)[:8]}...")
        self.names = tuple(names)
        for i, name in enumerate(self.names):
            self.register_parameter(f"p{i}", own[name])

    def as_dict(self) -> Params:
        """``{model parameter name: current tensor}`` (adapted tensors in a learn2learn clone)."""
        return {name: self._parameters[f"p{i}"] for i, name in enumerate(self.names)}


class Learn2LearnInnerLoop:
    """Per-task inner loops run by a learn2learn algorithm wrapped around a model's local parameters.

    ``algorithm="maml"`` wraps :class:`learn2learn.algorithms.MAML` (one step size ``lr``);
    ``"metasgd"`` wraps :class:`learn2learn.algorithms.MetaSGD` with the learner's own per-parameter
    step sizes ``lrs`` (``{local name: Parameter}``, shared, so the meta-optimiser trains them).
    A plain object, not a module: the learner's state stays the same whatever its backend.
    """

    def __init__(
        self,
        model: nn.Module,
        local_names: Sequence[str],
        *,
        lr: float,
        first_order: bool,
        algorithm: Algorithm = "maml",
        lrs: Mapping[str, nn.Parameter] | None = None,
    ) -> None:
        l2l = import_learn2learn()
        self.local = LocalParameters(model, local_names)
        if algorithm == "maml":
            # allow_unused: a local parameter the support loss does not reach keeps its value,
            # as in the engine (a zero gradient), instead of failing.
            self.algorithm = l2l.algorithms.MAML(self.local, lr=lr, first_order=first_order, allow_unused=True)
        elif algorithm == "metasgd":
            if lrs is None:
                raise ValueError("algorithm='metasgd' needs the per-parameter step sizes (lrs)")
            missing = [n for n in local_names if n not in lrs]
            if missing:
                raise KeyError(f"no step sizes for local parameters {missing[:3]}")
            rates = nn.ParameterList([lrs[n] for n in local_names])
            self.algorithm = l2l.algorithms.MetaSGD(self.local, first_order=first_order, lrs=rates)
        else:
            raise ValueError(f"unknown learn2learn algorithm {algorithm!r}; use 'maml' or 'metasgd'")

    def adapt(
        self,
        forward: Forward,
        params: Mapping[str, Tensor],
        user_x: Mapping[str, Tensor],
        support_x: Mapping[str, Tensor],
        support_y: Tensor,
        support_mask: Tensor,
        *,
        steps: int,
        first_order: bool | None = None,
        loss_fn: LossFn = masked_mse,
    ) -> Params:
        """One task: ``clone()``, then ``steps`` x ``adapt(support loss)``; returns all parameters,
        the local ones adapted (``first_order=None``: the algorithm's own setting)."""
        learner = self.algorithm.clone()
        for _ in range(steps):
            fast = {**params, **learner.module.as_dict()}
            loss = loss_fn(forward(fast, user_x, support_x), support_y, support_mask)
            learner.adapt(loss, first_order=first_order)
        return {**params, **learner.module.as_dict()}

    def query_losses(
        self,
        forward: Forward,
        params: Mapping[str, Tensor],
        batch: TaskBatch,
        *,
        steps: int,
        loss_fn: LossFn = masked_mse,
    ) -> Tensor:
        """Per-user query loss after adaptation, ``[B]``, one task at a time (the meta-objective)."""
        losses = []
        for b in range(len(batch)):
            user_x, fast = self._adapt_user(forward, params, batch, b, steps=steps, loss_fn=loss_fn)
            pred = forward(fast, user_x, user_row(batch.query_features, b))
            losses.append(loss_fn(pred, batch.query_ratings[b], batch.query_mask[b]))
        return torch.stack(losses)

    def _adapt_user(
        self, forward: Forward, params: Mapping[str, Tensor], batch: TaskBatch, b: int, *,
        steps: int, loss_fn: LossFn, first_order: bool | None = None,
    ) -> tuple[Params, Params]:
        """User ``b``'s features and its parameters after adaptation on its support set."""
        user_x = user_row(batch.user_features, b)
        fast = self.adapt(
            forward, params, user_x, user_row(batch.support_features, b), batch.support_ratings[b],
            batch.support_mask[b], steps=steps, first_order=first_order, loss_fn=loss_fn,
        )
        return user_x, fast

    def adapt_and_predict(
        self,
        forward: Forward,
        params: Mapping[str, Tensor],
        batch: TaskBatch,
        *,
        steps: int,
        loss_fn: LossFn = masked_mse,
    ) -> Tensor:
        """Evaluation: adapt each user first-order and predict its query, ``[B, Q]`` (no outer graph)."""
        preds = []
        for b in range(len(batch)):
            with torch.enable_grad():  # callers may predict under no_grad; adaptation needs gradients
                user_x, fast = self._adapt_user(
                    forward, params, batch, b, steps=steps, loss_fn=loss_fn, first_order=True
                )
            with torch.no_grad():
                preds.append(forward(fast, user_x, user_row(batch.query_features, b)))
        return torch.stack(preds)
