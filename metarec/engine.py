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

A local step may use only part of the support set: ``step_masks`` (``bool [steps, S]``, see
:func:`minibatch_schedule`) selects the support items of each step, which expresses item-by-item
SGD (MAMO's Algorithm 1) or mini-batches (MAMO's reference code) with the same fixed shapes.
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


def _masked_mse_per_user(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum(-1) / m.sum(-1).clamp_min(1.0)


masked_mse.per_user = _masked_mse_per_user  # type: ignore[attr-defined]


def per_user(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` (which sees one user's ``[N]`` items) over a batch: ``[B, N] -> [B]``.

    A loss may carry its own batched twin as ``loss_fn.per_user`` (the built-in ones do: the
    same arithmetic without the overhead of :func:`torch.vmap` at every local step); any other
    loss is vmapped.
    """
    return getattr(loss_fn, "per_user", None) or vmap(loss_fn)


def rating_cross_entropy(rating_min: float, n_classes: int) -> LossFn:
    """A loss for rating *classifiers*: ``pred`` are logits ``[N, n_classes]`` over the rating
    values ``rating_min, rating_min + 1, ...``; ``target`` are ratings; mean over the mask.

    Ratings are mapped to classes by rounding, so a classifier can be trained on any integer scale
    (MovieLens 1..5, Book-Crossing 1..10) without touching the data.
    """
    if n_classes < 2:
        raise ValueError(f"a rating classifier needs at least 2 classes, got {n_classes}")

    def nll_and_mask(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        cls = (target - rating_min).round().long().clamp(0, n_classes - 1)
        logp = torch.log_softmax(pred, dim=-1)
        return -torch.gather(logp, -1, cls.unsqueeze(-1)).squeeze(-1), mask.to(pred.dtype)

    def loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        nll, m = nll_and_mask(pred, target, mask)
        return (nll * m).sum() / m.sum().clamp_min(1.0)

    def loss_per_user(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        nll, m = nll_and_mask(pred, target, mask)
        return (nll * m).sum(-1) / m.sum(-1).clamp_min(1.0)

    loss.per_user = loss_per_user  # type: ignore[attr-defined]
    return loss


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


def minibatch_schedule(
    n_support: int,
    batch_size: int | None = None,
    epochs: int = 1,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """Which support items each local step uses, ``bool [steps, n_support]``.

    ``batch_size=None``: every step sees the whole support set (``epochs`` steps). Otherwise the
    support set is cut, in its stored (time) order, into consecutive chunks of ``batch_size``
    items, one step per chunk, repeated ``epochs`` times: ``batch_size=1`` is item-by-item SGD
    (MAMO's Algorithm 1), ``batch_size=5`` with 3 epochs is MAMO's reference code (9 steps).
    """
    if n_support < 1 or epochs < 0:
        raise ValueError(f"need n_support >= 1 and epochs >= 0, got {n_support}, {epochs}")
    if batch_size is None:
        one = torch.ones(1, n_support, dtype=torch.bool, device=device)
    else:
        if batch_size < 1:
            raise ValueError(f"local batch size must be >= 1 (or None for the whole support set), got {batch_size}")
        chunk = torch.arange(n_support, device=device) // batch_size
        one = chunk.unsqueeze(0) == torch.arange(int(chunk.max()) + 1, device=device).unsqueeze(1)
    return one.repeat(epochs, 1)


def _check_schedule(step_masks: Tensor | None, steps: int, n_support: int) -> None:
    if step_masks is None:
        return
    if step_masks.dim() != 2 or step_masks.shape[0] != steps or step_masks.shape[1] != n_support:
        raise ValueError(
            f"step_masks must be bool [steps={steps}, support={n_support}], got {list(step_masks.shape)}"
        )


StepItems = slice | Tensor | None


def step_items(step_masks: Tensor | None, steps: int) -> list[StepItems]:
    """Per step, the support items it uses: a ``slice`` for a contiguous run (a view, no copy),
    else an index tensor; None = all of them.

    Taking only those items (rather than masking all of them) makes a step's forward and
    backward pass cost what its items cost: item-by-item SGD runs 15 one-item steps, not 15
    full-support ones. The schedule is shared by all users, so the shapes stay fixed under vmap.
    """
    if step_masks is None:
        return [None] * steps
    out: list[StepItems] = []
    for r in step_masks.detach().cpu():
        idx = r.nonzero().squeeze(1)
        if bool(r.all()):
            out.append(None)
        elif len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx):
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        else:
            out.append(idx.to(step_masks.device))
    return out


def n_step_items(idx: StepItems, n_support: int) -> int:
    """How many support items a step of :func:`step_items` uses."""
    if idx is None:
        return n_support
    return idx.stop - idx.start if isinstance(idx, slice) else len(idx)


def _support_at(
    idx: StepItems, support_x: Mapping[str, Tensor], support_y: Tensor, support_mask: Tensor
) -> tuple[Mapping[str, Tensor], Tensor, Tensor]:
    if idx is None:
        return support_x, support_y, support_mask
    return {k: v[idx] for k, v in support_x.items()}, support_y[idx], support_mask[idx]


def _sgd(p: Tensor, g: Tensor, lr: float | Tensor) -> Tensor:
    return torch.add(p, g, alpha=-lr) if isinstance(lr, (int, float)) else p - lr * g


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
    step_masks: Tensor | None = None,
) -> Params:
    """``steps`` plain gradient steps on the ``adapt`` parameters for ONE user; vmap-able.

    ``lr`` is a float or a per-parameter mapping of tensors (Meta-SGD). ``step_masks``
    (``bool [steps, S]``) restricts step ``t`` to the support items ``step_masks[t]``. Returns
    the full parameter dict with the adapted entries replaced.
    """
    _check_schedule(step_masks, steps, support_y.shape[-1])
    fast: Params = dict(params)
    for idx in step_items(step_masks, steps):
        x, y, mask = _support_at(idx, support_x, support_y, support_mask)
        # First order: the step's gradient is a constant for the outer loop, so compute it on
        # detached inputs -- the outer autograd graph then records only the updates themselves,
        # not every inner forward/backward (same numbers, much less work).
        point = {k: v.detach() for k, v in fast.items()} if first_order else fast
        u_x = {k: v.detach() for k, v in user_x.items()} if first_order else user_x
        x = {k: v.detach() for k, v in x.items()} if first_order else x

        def support_loss(sub: Params) -> Tensor:
            return loss_fn(forward({**point, **sub}, u_x, x), y, mask)

        grads = grad(support_loss)(select(point, adapt))
        for name in adapt:
            fast[name] = _sgd(fast[name], grads[name], _step_size(lr, name))
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
    step_masks: Tensor | None = None,
) -> Params:
    """Same as :func:`inner_adapt` with :func:`torch.autograd.grad` (reference implementation)."""
    _check_schedule(step_masks, steps, support_y.shape[-1])
    fast: Params = dict(params)
    with torch.enable_grad():
        for idx in step_items(step_masks, steps):
            x, y, mask = _support_at(idx, support_x, support_y, support_mask)
            sub = {}
            for name in adapt:
                p = fast[name]
                sub[name] = p if p.requires_grad else p.detach().requires_grad_(True)
            loss = loss_fn(forward({**fast, **sub}, user_x, x), y, mask)
            grads = torch.autograd.grad(
                loss, [sub[n] for n in adapt], create_graph=not first_order, allow_unused=True
            )
            for name, g in zip(adapt, grads):
                if g is None:  # the step's items do not reach this parameter (e.g. an empty chunk)
                    g = torch.zeros_like(sub[name])
                fast[name] = _sgd(sub[name], g, _step_size(lr, name))
    return fast


# --------------------------------------------------------------------------- many users


def _split_user_params(user_params: Mapping[str, Tensor] | None) -> Params:
    return dict(user_params) if user_params else {}


def user_row(d: Mapping[str, Tensor], b: int) -> Params:
    """Entry ``b`` of every tensor of a batched dict: one user's features or parameters."""
    return {k: v[b] for k, v in d.items()}


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
    step_masks: Tensor | None = None,
) -> Params:
    """Adapt every user of ``batch`` at once; returns the adapted ``adapt`` parameters, ``[B, ...]``.

    ``user_params`` holds per-user starting values (leading dim ``B``) that replace entries of
    ``params`` -- MAMO's memory-personalised initialisation is one such case.
    """
    per_user = _split_user_params(user_params)

    def one(u_params: Params, user_x, support_x, support_y, support_mask) -> Params:
        fast = inner_adapt(
            forward, {**params, **u_params}, adapt, user_x, support_x, support_y, support_mask,
            lr=lr, steps=steps, first_order=first_order, loss_fn=loss_fn, step_masks=step_masks,
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


def adapt_and_query_losses(
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
    step_masks: Tensor | None = None,
) -> tuple[Tensor, Params]:
    """Per-user query losses ``[B]`` after adaptation, and the adapted parameters ``{name: [B, ...]}``.

    For methods that need the adapted values themselves (MAMO writes them into its memories).
    """
    fast = adapt_batch(
        forward, params, adapt, batch, lr=lr, steps=steps, first_order=first_order,
        loss_fn=loss_fn, user_params=user_params, chunk_size=chunk_size, step_masks=step_masks,
    )
    per_user = {**_split_user_params(user_params), **fast}

    def one(u_params: Params, user_x, query_x, query_y, query_mask) -> Tensor:
        return loss_fn(forward({**params, **u_params}, user_x, query_x), query_y, query_mask)

    losses = vmap(one)(per_user, batch.user_features, batch.query_features, batch.query_ratings, batch.query_mask)
    return losses, fast


def adapt_and_query_losses_looped(
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
    step_masks: Tensor | None = None,
) -> tuple[Tensor, Params]:
    """:func:`adapt_and_query_losses` one user at a time (reference implementation)."""
    per_user = _split_user_params(user_params)
    losses, adapted = [], []
    for b in range(len(batch)):
        p = {**params, **user_row(per_user, b)}
        user_x = user_row(batch.user_features, b)
        fast = inner_adapt_looped(
            forward, p, adapt, user_x, user_row(batch.support_features, b), batch.support_ratings[b],
            batch.support_mask[b], lr=lr, steps=steps, first_order=first_order, loss_fn=loss_fn,
            step_masks=step_masks,
        )
        pred = forward(fast, user_x, user_row(batch.query_features, b))
        losses.append(loss_fn(pred, batch.query_ratings[b], batch.query_mask[b]))
        adapted.append(select(fast, adapt))
    stacked = {n: torch.stack([a[n] for a in adapted]) for n in adapt}
    return torch.stack(losses), stacked


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
    step_masks: Tensor | None = None,
) -> Tensor:
    """Per-user query loss after adaptation, ``[B]``: the MAML meta-objective, batched."""
    return adapt_and_query_losses(
        forward, params, adapt, batch, lr=lr, steps=steps, first_order=first_order,
        loss_fn=loss_fn, user_params=user_params, chunk_size=chunk_size, step_masks=step_masks,
    )[0]


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
    step_masks: Tensor | None = None,
) -> Tensor:
    """:func:`query_losses` one user at a time (the reference the batched path is tested against)."""
    return adapt_and_query_losses_looped(
        forward, params, adapt, batch, lr=lr, steps=steps, first_order=first_order,
        loss_fn=loss_fn, user_params=user_params, step_masks=step_masks,
    )[0]


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
    step_masks: Tensor | None = None,
) -> Tensor:
    """Evaluation: adapt each user (first order, no outer graph) and predict the query, ``[B, Q]``."""
    detached = {k: v.detach() for k, v in params.items()}
    u_params = {k: v.detach() for k, v in _split_user_params(user_params).items()}
    fast = adapt_batch(
        forward, detached, adapt, batch, lr=lr, steps=steps, first_order=True,
        loss_fn=loss_fn, user_params=u_params, chunk_size=chunk_size, step_masks=step_masks,
    )
    with torch.no_grad():
        return predict_batch(forward, detached, batch, user_params={**u_params, **fast})


def adapt_and_predict_head(
    model: nn.Module,
    forward: Forward,
    params: Mapping[str, Tensor],
    adapt: Sequence[str],
    batch: TaskBatch,
    *,
    lr: LearningRate,
    steps: int,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`adapt_and_predict_batch` (masked MSE, full-support steps) for a model that may
    adapt its head by hand: a :class:`~metarec.nn.RatingMLP` whose adapted parameters are exactly
    its ReLU head, with one step size, takes :meth:`~metarec.nn.RatingMLP.adapt_head_and_predict`
    (the same update with the gradients written out, a fraction of the dispatch cost); anything
    else goes through :func:`adapt_and_predict_batch`. Benchmark evaluation and serving both call
    this, so they share one path.
    """
    if has_plain_relu_head(model, adapt) and isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return model.adapt_head_and_predict(batch, lr=float(lr), steps=steps)
    return adapt_and_predict_batch(forward, params, adapt, batch, lr=lr, steps=steps, chunk_size=chunk_size)


def has_plain_relu_head(model: nn.Module, adapt: Sequence[str]) -> bool:
    """Whether ``model`` can adapt by hand: it has ``adapt_head_and_predict`` and a ReLU head
    (``relu_head()``), and ``adapt`` names exactly that head's weights and biases."""
    relu_head = getattr(model, "relu_head", None)
    if not callable(relu_head) or not callable(getattr(model, "adapt_head_and_predict", None)):
        return False
    linears = relu_head()
    if linears is None:
        return False
    ids = {id(t) for lin in linears for t in (lin.weight, lin.bias)}
    named = dict(model.named_parameters())
    return len(set(adapt)) == len(ids) and all(n in named and id(named[n]) in ids for n in adapt)


# --------------------------------------------------------------------------- per-user gradients


def _items(batch: TaskBatch, items: str) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    if items == "query":
        return batch.query_features, batch.query_ratings, batch.query_mask
    if items == "support":
        return batch.support_features, batch.support_ratings, batch.support_mask
    raise ValueError(f"items must be 'query' or 'support', got {items!r}")


def _detached(d: Mapping[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in d.items()}


def user_gradients(
    forward: Forward,
    params: Mapping[str, Tensor],
    names: Sequence[str],
    batch: TaskBatch,
    *,
    user_params: Mapping[str, Tensor] | None = None,
    items: str = "query",
    loss_fn: LossFn = masked_mse,
) -> Params:
    """Each user's gradient of their own loss on their query (or support) items, ``{name: [B, ...]}``.

    Taken at the per-user point ``{**params, **user_params}`` (e.g. adapted parameters), with no
    graph: a quantity to store (MAMO's fast-gradient memory), not to differentiate.
    """
    shared = _detached(params)
    per_user = _detached(_split_user_params(user_params))
    x_all, y_all, m_all = _items(batch, items)

    def one(u_params: Params, user_x, x, y, m) -> Params:
        p = {**shared, **u_params}

        def loss(sub: Params) -> Tensor:
            return loss_fn(forward({**p, **sub}, user_x, x), y, m)

        return grad(loss)(select(p, names))

    with torch.no_grad():  # grad() still differentiates inside; no outer graph is recorded
        return vmap(one)(per_user, _detached(batch.user_features), _detached(x_all), y_all, m_all)


def user_gradients_looped(
    forward: Forward,
    params: Mapping[str, Tensor],
    names: Sequence[str],
    batch: TaskBatch,
    *,
    user_params: Mapping[str, Tensor] | None = None,
    items: str = "query",
    loss_fn: LossFn = masked_mse,
) -> Params:
    """:func:`user_gradients` one user at a time with :func:`torch.autograd.grad`."""
    shared = _detached(params)
    per_user = _detached(_split_user_params(user_params))
    x_all, y_all, m_all = _items(batch, items)
    out: list[Params] = []
    for b in range(len(batch)):
        p = {**shared, **user_row(per_user, b)}
        with torch.enable_grad():
            sub = {n: p[n].detach().requires_grad_(True) for n in names}
            loss = loss_fn(
                forward({**p, **sub}, _detached(user_row(batch.user_features, b)), _detached(user_row(x_all, b))),
                y_all[b], m_all[b],
            )
            grads = torch.autograd.grad(loss, [sub[n] for n in names], allow_unused=True)
        out.append({n: torch.zeros_like(sub[n]) if g is None else g for n, g in zip(names, grads)})
    return {n: torch.stack([o[n] for o in out]) for n in names}


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
