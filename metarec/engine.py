"""Functional inner loops: adapt a subset of a model's parameters to each user's support set.

Everything here is a plain function of ``(params, data)`` built on :mod:`torch.func`
(``grad``, ``vmap``), so all users of a :class:`~metarec.tasks.TaskBatch` adapt at once, with
no per-user Python loop. A model is used through a *forward function*::

    forward(params: dict[str, Tensor], user_x: dict[str, Tensor], items_x: dict[str, Tensor]) -> Tensor[N]

which sees ONE user (their profile features, unbatched) and ``N`` items; :func:`module_forward`
makes one from an ``nn.Module`` with ``forward(user_x, items_x)``.

Second order (differentiating through the inner steps, true MAML) is the default;
``first_order=True`` drops the inner gradients' graph (FOMAML). The ``*_looped`` functions do
the same computation one user at a time with :func:`torch.autograd.grad`; they exist so that
tests can prove the batched path right, and for methods whose adaptation cannot be batched.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.tasks import TaskBatch

Params = dict[str, Tensor]
Forward = Callable[[Mapping[str, Tensor], Mapping[str, Tensor], Mapping[str, Tensor]], Tensor]
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
LearningRate = float | Mapping[str, Tensor]


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the entries where ``mask`` is True."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def module_forward(module: nn.Module) -> Forward:
    """A forward function that runs ``module`` with the given parameters (and its own buffers)."""
    buffers = dict(module.named_buffers())

    def forward(params: Mapping[str, Tensor], user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        return functional_call(module, {**buffers, **params}, (user_x, items_x))

    return forward


def select(params: Mapping[str, Tensor], names: Sequence[str]) -> Params:
    """The sub-dict of ``params`` named in ``names`` (a clear error for a missing name)."""
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameters named {missing[:3]}; known: {list(params)[:8]}...")
    return {n: params[n] for n in names}


def _step_size(lr: LearningRate, name: str) -> float | Tensor:
    return lr[name] if isinstance(lr, Mapping) else lr


# --------------------------------------------------------------------------- one user


def inner_adapt(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    user_x: Mapping[str, Tensor],
    support_x: Mapping[str, Tensor],
    support_y: Tensor,
    support_mask: Tensor,
    *,
    lr: LearningRate,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
) -> Params:
    """``steps`` plain gradient steps on the ``adapt`` parameters for ONE user; vmap-able.

    ``lr`` is a float or a per-parameter mapping of tensors (Meta-SGD). Returns the full
    parameter dict with the adapted entries replaced.
    """
    fast: Params = dict(params)
    for _ in range(steps):
        def support_loss(sub: Params) -> Tensor:
            return loss_fn(forward({**fast, **sub}, user_x, support_x), support_y, support_mask)

        grads = grad(support_loss)(select(fast, adapt))
        for name in adapt:
            g = grads[name].detach() if first_order else grads[name]
            fast[name] = fast[name] - _step_size(lr, name) * g
    return fast


def inner_adapt_looped(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    user_x: Mapping[str, Tensor],
    support_x: Mapping[str, Tensor],
    support_y: Tensor,
    support_mask: Tensor,
    *,
    lr: LearningRate,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
) -> Params:
    """Same as :func:`inner_adapt` with :func:`torch.autograd.grad` (reference implementation)."""
    fast: Params = dict(params)
    with torch.enable_grad():
        for _ in range(steps):
            sub = {}
            for name in adapt:
                p = fast[name]
                sub[name] = p if p.requires_grad else p.detach().requires_grad_(True)
            loss = loss_fn(forward({**fast, **sub}, user_x, support_x), support_y, support_mask)
            grads = torch.autograd.grad(loss, [sub[n] for n in adapt], create_graph=not first_order)
            for name, g in zip(adapt, grads):
                fast[name] = sub[name] - _step_size(lr, name) * g
    return fast


# --------------------------------------------------------------------------- many users


def _split_user_params(user_params: Mapping[str, Tensor] | None) -> Params:
    return dict(user_params) if user_params else {}


def adapt_batch(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    batch: TaskBatch,
    *,
    lr: LearningRate,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
    user_params: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> Params:
    """Adapt every user of ``batch`` at once; returns the adapted ``adapt`` parameters, ``[B, ...]``.

    ``user_params`` holds per-user starting values (leading dim ``B``) that replace entries of
    ``params`` -- MAMO's memory-personalised initialisation is one such case.
    """
    per_user = _split_user_params(user_params)

    def one(u_params: Params, user_x, support_x, support_y, support_mask) -> Params:
        fast = inner_adapt(
            forward, {**params, **u_params}, adapt, user_x, support_x, support_y, support_mask,
            lr=lr, steps=steps, first_order=first_order, loss_fn=loss_fn,
        )
        return select(fast, adapt)

    return vmap(one, chunk_size=chunk_size)(
        per_user, batch.user_features, batch.support_features, batch.support_ratings, batch.support_mask
    )


def predict_batch(
    forward: Forward,
    params: Mapping[str, Tensor],
    batch: TaskBatch,
    *,
    user_params: Mapping[str, Tensor] | None = None,
    items: str = "query",
) -> Tensor:
    """Predictions ``[B, N]`` for each user's query (or support) items with per-user parameters."""
    per_user = _split_user_params(user_params)
    items_x = batch.query_features if items == "query" else batch.support_features

    def one(u_params: Params, user_x, x) -> Tensor:
        return forward({**params, **u_params}, user_x, x)

    return vmap(one)(per_user, batch.user_features, items_x)


def query_losses(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    batch: TaskBatch,
    *,
    lr: LearningRate,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
    user_params: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-user query loss after adaptation, ``[B]``: the MAML meta-objective, batched."""
    fast = adapt_batch(
        forward, params, adapt, batch, lr=lr, steps=steps, first_order=first_order,
        loss_fn=loss_fn, user_params=user_params, chunk_size=chunk_size,
    )
    per_user = {**_split_user_params(user_params), **fast}

    def one(u_params: Params, user_x, query_x, query_y, query_mask) -> Tensor:
        return loss_fn(forward({**params, **u_params}, user_x, query_x), query_y, query_mask)

    return vmap(one)(per_user, batch.user_features, batch.query_features, batch.query_ratings, batch.query_mask)


def query_losses_looped(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    batch: TaskBatch,
    *,
    lr: LearningRate,
    steps: int,
    first_order: bool = False,
    loss_fn: LossFn = masked_mse,
    user_params: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """:func:`query_losses` one user at a time (the reference the batched path is tested against)."""
    per_user = _split_user_params(user_params)
    losses = []
    for b in range(len(batch)):
        take = lambda d: {k: v[b] for k, v in d.items()}  # noqa: E731
        p = {**params, **{k: v[b] for k, v in per_user.items()}}
        user_x = take(batch.user_features)
        fast = inner_adapt_looped(
            forward, p, adapt, user_x, take(batch.support_features), batch.support_ratings[b],
            batch.support_mask[b], lr=lr, steps=steps, first_order=first_order, loss_fn=loss_fn,
        )
        pred = forward(fast, user_x, take(batch.query_features))
        losses.append(loss_fn(pred, batch.query_ratings[b], batch.query_mask[b]))
    return torch.stack(losses)


def adapt_and_predict_batch(
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    batch: TaskBatch,
    *,
    lr: LearningRate,
    steps: int,
    loss_fn: LossFn = masked_mse,
    user_params: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Evaluation: adapt each user (first order, no outer graph) and predict the query, ``[B, Q]``."""
    detached = {k: v.detach() for k, v in params.items()}
    u_params = {k: v.detach() for k, v in _split_user_params(user_params).items()}
    fast = adapt_batch(
        forward, detached, adapt, batch, lr=lr, steps=steps, first_order=True,
        loss_fn=loss_fn, user_params=u_params, chunk_size=chunk_size,
    )
    with torch.no_grad():
        return predict_batch(forward, detached, batch, user_params={**u_params, **fast})


# --------------------------------------------------------------------------- outer step


def make_optimizer(
    name: str, params: Iterable[Tensor] | Iterable[dict], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """The meta-optimiser by name: ``adam`` or ``sgd`` (plain SGD, e.g. MetaCS-DNN's rate 0.4)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown meta-optimizer {name!r}; use 'adam' or 'sgd'")


def outer_step(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    *,
    grad_clip: float | None = None,
    clip_value: float | None = None,
) -> float:
    """Back-propagate the meta-loss and take one optimiser step; returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(params, clip_value)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach())
