"""MAMO's recommender on factored fast weights (:mod:`metarec.lowrank`): the ``lowrank`` backend.

The ``torch.func`` backend gives every user of a batch a copy of all ~225k local numbers of the
recommender (``d = 100``) and rewrites it at each of the 15 item-by-item local steps: the batch is
bound by memory bandwidth. Here no per-user weight exists: every linear layer is a
:class:`~metarec.lowrank.FastLinear` whose personal part is MAMO's memory mixture (``phi_u - tau
a_u^T M_U`` for the user MLP, ``a_u^T M_{U,I}`` for the task layer) plus the rank-one updates of the
local steps. Same equations, same numbers (float64 tests against the other two backends), a
fraction of the memory traffic. First-order local steps (every evaluation, and training by
default) backpropagate through the factored layers by hand, and a catalogue is scored with each
user's whole weights (:meth:`FactoredRecommender.score`): what serving a new user costs is
mostly the number of operators dispatched and the multiply-adds of the scoring.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from metarec.engine import StepItems, n_step_items, per_user
from metarec.lowrank import FastLinear, Layer, Tap, output_gradients, run, sgd_step, weight_gradients
from metarec.nn import item_chunks

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class FactoredRecommender:
    """``MAMORecommender``'s forward (Eq. 1-2) for a batch of users with factored per-user weights.

    ``user``, ``item`` and ``head`` are the MLPs as layer lists, ``task`` the memory layer
    ``M_{u,I}`` (or the plain FC layer of the no-task-memory ablation). ``user_names`` names the
    parameters of the user MLP's linear layers in order (``(weight, bias)`` per layer).
    """

    user: tuple[Layer, ...]
    item: tuple[Layer, ...]
    task: FastLinear
    memory_act: Callable[[Tensor], Tensor]
    head: tuple[Layer, ...]
    out_dim: int
    user_names: tuple[tuple[str, str], ...]

    def linears(self) -> list[FastLinear]:
        """The linear layers in the order :meth:`__call__` records their taps."""
        return [*_linears(self.user), *_linears(self.item), self.task, *_linears(self.head)]

    @property
    def n_user_layers(self) -> int:
        """How many of :meth:`linears` (the first ones) belong to the user MLP."""
        return len(self.user_names)

    def replace_linears(self, new: Sequence[FastLinear]) -> FactoredRecommender:
        """The same network with its linear layers replaced, in :meth:`linears` order."""
        it = iter(new)
        swap = lambda layers: tuple(next(it) if isinstance(x, FastLinear) else x for x in layers)  # noqa: E731
        user, item = swap(self.user), swap(self.item)
        task = next(it)
        head = swap(self.head)
        if next(it, None) is not None:
            raise ValueError("replace_linears: more layers than the network has")
        return dataclasses.replace(self, user=user, item=item, task=task, head=head)

    def detach(self) -> FactoredRecommender:
        """The network cut from the autograd graph (a first-order step's evaluation point)."""
        return self.replace_linears([layer.detach() for layer in self.linears()])

    def with_steps_of(self, other: FactoredRecommender) -> FactoredRecommender:
        """This network's base with the local steps ``other`` took (see :meth:`FastLinear.with_steps_of`)."""
        return self.replace_linears([a.with_steps_of(b) for a, b in zip(self.linears(), other.linears())])

    def user_base(self, profile: Tensor) -> Tensor:
        """The first user layer's base output ``[B, 1, h]``: the same at every local step."""
        return self.user[0].base(profile.unsqueeze(1))

    def item_base(self, items: Tensor) -> Tensor:
        """The first item layer's base output ``[B, n, h]`` (all support items in one product)."""
        return self.item[0].base(items)

    def __call__(
        self,
        profile: Tensor,
        items: Tensor,
        taps: list[Tap] | None = None,
        *,
        user_base: Tensor | None = None,
        item_base: Tensor | None = None,
    ) -> Tensor:
        """Predictions ``[B, n]`` (or ``[B, n, classes]``) from ``profile [B, D_u]``, ``items [B, n, D_i]``.

        ``user_base`` / ``item_base``: :meth:`user_base` / :meth:`item_base` of these inputs, when
        already computed.
        """
        e_u = run(self.user, profile.unsqueeze(1), taps, first_base=user_base)  # [B, 1, d]
        e_i = run(self.item, items, taps, first_base=item_base)  # [B, n, d]
        x = torch.cat([e_u.expand(-1, e_i.shape[1], -1), e_i], dim=-1)  # [e_u; e_i], Eq. 2
        out = run(self.head, self.memory_act(run([self.task], x, taps)), taps)
        return out.squeeze(-1) if self.out_dim == 1 else out

    def score(self, profile: Tensor, items: Tensor, *, item_base: Tensor | None = None) -> Tensor:
        """:meth:`__call__` without taps, for many items (the query, the whole catalogue): every
        layer after the first item layer multiplies by each user's whole weight, built once
        (:meth:`FastLinear.dense`), and the memory layer splits ``[e_u; e_i]`` into its user and
        item columns, so the user's part is computed once, not once per item. The first item
        layer keeps its base output (precomputed for a catalogue) plus the local steps' factors,
        the same arithmetic whether the base was precomputed or not."""
        b = profile.shape[0]
        e_u = run(self.user, profile.unsqueeze(1))  # [B, 1, d]
        dense = {id(x): x.dense() for x in (*self.item[1:], self.task, *self.head) if isinstance(x, FastLinear)}
        w = dense[id(self.task)]  # [B, d, 2d] or [d, 2d]
        d = e_u.shape[-1]
        user_part = e_u @ w[..., :d].transpose(-1, -2)  # [B, 1, d]
        bias = self.task.user_bias(b)
        if bias is not None:
            user_part = user_part + bias.unsqueeze(1)
        w_items = w[..., d:].transpose(-1, -2)
        out = []
        for rows in item_chunks(items.shape[1], b):  # the items are independent: a few MB at a time
            e_i = items[:, rows]
            for i, layer in enumerate(self.item):
                if not isinstance(layer, FastLinear):
                    e_i = _act(layer, e_i)
                elif i == 0:
                    e_i = _first_layer(layer, e_i, None if item_base is None else item_base[:, rows])
                else:
                    e_i = layer.apply_dense(e_i, dense[id(layer)], b)
            h = _act(self.memory_act, torch.baddbmm(user_part, e_i, w_items) if w_items.dim() == 3 else user_part + e_i @ w_items)
            for layer in self.head:
                h = layer.apply_dense(h, dense[id(layer)], b) if isinstance(layer, FastLinear) else _act(layer, h)
            out.append(h.squeeze(-1) if self.out_dim == 1 else h)
        return out[0] if len(out) == 1 else torch.cat(out, 1)


def _first_layer(layer: FastLinear, x: Tensor, base: Tensor | None) -> Tensor:
    """``layer(x, base)`` as a fresh tensor, with the local steps' factors added to the base in
    one fused product and the bias shift added in place (no extra pass allocating a copy)."""
    if base is None:
        base = layer.base(x)
    if layer.left is None:
        y = base.clone()
    else:
        y = torch.baddbmm(base, torch.bmm(x, layer.right.transpose(1, 2)), layer.left)
    if layer.bias_shift is not None:
        y.add_(layer.bias_shift.unsqueeze(1))
    return y


def _act(module: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``module(x)``, in place for the piecewise-linear activations (``x`` is a fresh
    intermediate of :meth:`FactoredRecommender.score`, never needed again)."""
    kind = type(module)
    if kind is nn.LeakyReLU:
        return torch.nn.functional.leaky_relu_(x, module.negative_slope)
    if kind is nn.ReLU:
        return x.relu_()
    return module(x)


def _linears(layers: Sequence[Layer]) -> list[FastLinear]:
    return [x for x in layers if isinstance(x, FastLinear)]


def factored_recommender(
    recommender: nn.Module,
    params: Mapping[str, Tensor],
    *,
    attention: Tensor | None,
    gradient_slots: Callable[[str], Tensor] | None,
    task_slots: Tensor | None,
    tau: float,
) -> FactoredRecommender:
    """The recommender with parameters ``params`` (phi) for users with memory ``attention [B, K]``.

    ``gradient_slots(name)`` gives ``M_U``'s ``[K, *shape]`` slots of a user-MLP parameter (None:
    no feature memory, ``theta_u = phi_u``); ``task_slots`` is ``M_{U,I} [K, d, 2d]`` (None: the
    recommender's own ``task_layer``).
    """

    def layers(seq: nn.Sequential, prefix: str, personal: bool) -> tuple[Layer, ...]:
        out: list[Layer] = []
        for j, module in enumerate(seq):
            if not isinstance(module, nn.Linear):
                out.append(module)
                continue
            w, b = params[f"{prefix}.{j}.weight"], params.get(f"{prefix}.{j}.bias")
            if personal:  # theta_u = phi_u - tau * a_u^T M_U (Eq. 4, 9), kept as a slot mixture
                bias = None if b is None else b - tau * (attention @ gradient_slots(f"{prefix}.{j}.bias"))
                out.append(FastLinear.mixture(w, gradient_slots(f"{prefix}.{j}.weight"), -tau * attention, bias=bias))
            else:
                out.append(FastLinear(weight=w, bias=b))
        return tuple(out)

    personal = gradient_slots is not None
    user_names = tuple(
        (f"user_mlp.{j}.weight", f"user_mlp.{j}.bias")
        for j, module in enumerate(recommender.user_mlp) if isinstance(module, nn.Linear)
    )
    if task_slots is not None:
        task = FastLinear(slots=task_slots, slot_coef=attention)  # M_{u,I} = a_u^T M_{U,I} (Eq. 7)
    else:
        task = FastLinear(weight=params["task_layer.weight"])
    return FactoredRecommender(
        user=layers(recommender.user_mlp, "user_mlp", personal),
        item=layers(recommender.item_mlp, "item_mlp", False),
        task=task,
        memory_act=recommender.memory_act,
        head=layers(recommender.head, "head", False),
        out_dim=recommender.out_dim,
        user_names=user_names,
    )


def item_base(recommender: nn.Module, params: Mapping[str, Tensor], items: Tensor) -> Tensor:
    """:meth:`FactoredRecommender.item_base` of ``items [..., D_i]`` for any user: the item MLP's
    first layer is not personal, so its base output depends on the items alone."""
    first = next(j for j, module in enumerate(recommender.item_mlp) if isinstance(module, nn.Linear))
    if first != 0:
        raise ValueError("the item MLP must start with a linear layer")
    return FastLinear(weight=params["item_mlp.0.weight"], bias=params.get("item_mlp.0.bias")).base(items)


def user_losses(loss_fn: LossFn, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Each user's own loss ``[B]`` (``loss_fn`` sees one user, as in :mod:`metarec.engine`)."""
    return per_user(loss_fn)(pred, target, mask)


def adapt(
    net: FactoredRecommender,
    profile: Tensor,
    support: Tensor,
    support_y: Tensor,
    support_mask: Tensor,
    *,
    step_items: Sequence[StepItems],
    lr: float,
    loss_fn: LossFn,
    first_order: bool,
) -> FactoredRecommender:
    """Local learning (Eq. 10-11): one SGD step on every linear layer per entry of ``step_items``.

    ``step_items[t]`` are the support positions of step ``t`` (None = all); the same schedule as
    :func:`metarec.engine.inner_adapt`. First order: each step's gradient is a constant for the
    outer loop (evaluated on the detached network and inputs, as the engine does), so the steps
    are taken on a detached copy, written in place into reserved factors, and handed to ``net``
    at the end. The first layers' base outputs (user profile, support items) are computed once.
    First-order steps of a regression output take :func:`_adapt_by_hand` (the same gradients,
    written out, no autograd); the others differentiate the taps with :func:`torch.autograd.grad`.
    """
    if first_order:
        rank = sum(n_step_items(idx, support.shape[1]) for idx in step_items)
        point = net.detach()
        point = point.replace_linears([layer.reserve(rank, profile.shape[0]) for layer in point.linears()])
        profile, support = profile.detach(), support.detach()
    else:
        point = net
    if first_order and by_hand_possible(point, loss_fn):
        with torch.no_grad():
            _adapt_by_hand(point, profile, support, support_y, support_mask, step_items=step_items, lr=lr)
        return net.with_steps_of(point)
    with torch.enable_grad():  # the profile and the support items are the same at every step
        user_base, item_base = point.user_base(profile), point.item_base(support)
    if first_order:  # leaves: the taps then have a graph to differentiate, nothing reaches the outer loop
        user_base, item_base = _grad_leaf(user_base), _grad_leaf(item_base)
    at = 0
    for idx in step_items:
        x, ib = (support, item_base) if idx is None else (support[:, idx], item_base[:, idx])
        y = support_y if idx is None else support_y[:, idx]
        m = support_mask if idx is None else support_mask[:, idx]
        with torch.enable_grad():
            taps: list[Tap] = []
            losses = user_losses(loss_fn, point(profile, x, taps, user_base=user_base, item_base=ib), y, m)
            deltas = output_gradients(losses.sum(), taps, create_graph=not first_order)
        if first_order:
            for layer, (x_in, _), d in zip(point.linears(), taps, deltas):
                layer.sgd_(x_in.detach(), d.detach(), lr, at)
            at += x.shape[1]
        else:
            point = point.replace_linears(sgd_step(point.linears(), taps, deltas, lr, first_order=False))
    return net.with_steps_of(point) if first_order else point


def _activation_grad(module: Callable[[Tensor], Tensor], z: Tensor, y: Tensor, g: Tensor) -> Tensor:
    """``dLoss/dz`` of ``y = module(z)`` from ``g = dLoss/dy``: the backward kernels autograd runs."""
    kind = type(module)
    if kind is nn.LeakyReLU:
        return torch.ops.aten.leaky_relu_backward(g, z, module.negative_slope, False)
    if kind is nn.ReLU:
        return torch.ops.aten.threshold_backward(g, y, 0)
    if kind is nn.Tanh:
        return torch.ops.aten.tanh_backward(g, y)
    if kind is nn.Sigmoid:
        return torch.ops.aten.sigmoid_backward(g, y)
    if kind is nn.Identity:
        return g
    raise TypeError(f"no hand-written derivative for {kind.__name__}")


_BY_HAND_ACTIVATIONS = (nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def by_hand_possible(net: FactoredRecommender, loss_fn: LossFn) -> bool:
    """Whether :func:`adapt` can take its first-order steps with gradients written out: a
    regression output under the masked MSE and activations whose derivative it knows."""
    from metarec.engine import masked_mse

    acts = [x for x in (*net.user, *net.item, *net.head, net.memory_act) if not isinstance(x, FastLinear)]
    return loss_fn is masked_mse and net.out_dim == 1 and all(type(a) in _BY_HAND_ACTIVATIONS for a in acts)


class _Stepper:
    """A :meth:`FastLinear.reserve`-d layer during hand-written first-order steps: its base
    weight and every view of its factors that the steps use, made once (a step then dispatches
    only the products and the writes)."""

    def __init__(self, layer: FastLinear, sizes: Sequence[int], lr: float) -> None:
        self.layer, self.neg_lr = layer, -lr
        w = layer.base_weight()
        self.shared = w.dim() == 2
        self.bias = layer.bias
        if self.shared:
            self.w, self.w_for_grad = w, w.t().contiguous()  # x W^T and g W as linear maps
        else:
            self.w, self.wt = w, w.transpose(1, 2)
        self.bias3 = None if layer.bias is None else (layer.bias if layer.bias.dim() == 1 else layer.bias.unsqueeze(1))
        self.rt, self.lt = layer.right.transpose(1, 2), layer.left.transpose(1, 2)
        # A bias step moves the bias by -lr * delta: with the output gradients kept as the left
        # factor, the shift so far is ``(-lr * 1) @ left`` -- one more term in the factors'
        # product (unwritten rows are zero), and the shift itself is summed once at the end.
        self.has_shift = layer.bias_shift is not None
        self.shift_coef = torch.full((1, 1, 1), -lr, dtype=layer.left.dtype, device=layer.left.device)
        self.left_rows, self.right_rows = layer.left.split(list(sizes), 1), layer.right.split(list(sizes), 1)

    def forward(self, x: Tensor, base: Tensor | None = None) -> Tensor:
        """The layer's output for ``x [B, n, in]`` with the steps so far (``base``: its base output)."""
        if base is None:
            if self.shared:
                y = torch.nn.functional.linear(x, self.w, self.bias if self.bias is None or self.bias.dim() == 1 else None)
                if self.bias is not None and self.bias.dim() == 2:
                    y = y + self.bias3
            else:
                y = torch.bmm(x, self.wt) if self.bias3 is None else torch.baddbmm(self.bias3, x, self.wt)
        else:
            y = base
        coef = torch.baddbmm(self.shift_coef, x, self.rt) if self.has_shift else torch.bmm(x, self.rt)
        return torch.baddbmm(y, coef, self.layer.left)

    def input_grad(self, g: Tensor) -> Tensor:
        """``dLoss/dx`` from the output gradient ``g``."""
        base = torch.nn.functional.linear(g, self.w_for_grad) if self.shared else torch.bmm(g, self.w)
        return torch.baddbmm(base, torch.bmm(g, self.lt), self.layer.right)

    def update(self, step: int, x: Tensor, delta: Tensor) -> None:
        """:meth:`FastLinear.sgd_` of step ``step`` (its rows of the factors; a layer that sees one
        row for all the step's items -- the user MLP -- fills the first)."""
        left, right = self.left_rows[step], self.right_rows[step]
        if x.shape[1] != left.shape[1]:
            left, right = left[:, : x.shape[1]], right[:, : x.shape[1]]
        left.copy_(delta)
        torch.mul(x, self.neg_lr, out=right)

    def finish(self) -> None:
        """Write the bias shift the steps took (``-lr`` times the sum of the output gradients)."""
        if self.has_shift:
            torch.mul(self.layer.left.sum(1), self.neg_lr, out=self.layer.bias_shift)


def _forward_traced(layers: Sequence[Layer], x: Tensor, steppers: dict[int, _Stepper], first_base: Tensor | None = None):
    """``run`` for a local step, recording every layer's ``(layer, input, output)``."""
    trace = []
    for i, layer in enumerate(layers):
        y = steppers[id(layer)].forward(x, first_base if i == 0 else None) if isinstance(layer, FastLinear) else layer(x)
        trace.append((layer, x, y))
        x = y
    return x, trace


def _backward_traced(
    trace, g: Tensor, steppers: dict[int, _Stepper], deltas: dict[int, Tensor], *, input_grad: bool = True
) -> Tensor | None:
    """Back through a trace of :func:`_forward_traced`: each linear layer's output gradient goes
    to ``deltas``; returns the gradient of the trace's input (None without ``input_grad``)."""
    for n in range(len(trace) - 1, -1, -1):
        layer, x, y = trace[n]
        if isinstance(layer, FastLinear):
            deltas[id(layer)] = g
            if n == 0 and not input_grad:
                return None
            g = steppers[id(layer)].input_grad(g)
        else:
            g = _activation_grad(layer, x, y, g)
    return g


def _adapt_by_hand(
    point: FactoredRecommender, profile: Tensor, support: Tensor, support_y: Tensor, support_mask: Tensor, *,
    step_items: Sequence[StepItems], lr: float,
) -> None:
    """:func:`adapt`'s first-order steps on ``point`` (reserved factors, filled in place), with
    the backward pass written out instead of :func:`torch.autograd.grad`: the same gradients
    (the masked MSE's, through the same layers) in a fraction of the dispatched operators,
    none of them recording a graph. Each layer's base weight is built once for all steps."""
    linears = point.linears()
    n_support = support.shape[1]
    sizes = [n_step_items(idx, n_support) for idx in step_items]
    steppers = {id(layer): _Stepper(layer, sizes, lr) for layer in linears}
    task = steppers[id(point.task)]
    user_base, item_base = point.user_base(profile), point.item_base(support)
    u_in = profile.unsqueeze(1)
    # the masked MSE's d/dpred is (pred - y) * 2 m / max(sum(m), 1)
    m_all = support_mask.to(item_base.dtype)
    y_all = support_y.to(item_base.dtype).unsqueeze(-1)
    if all(isinstance(idx, slice) and idx.stop - idx.start == 1 for idx in step_items):
        # item by item (Algorithm 1): every step's inputs are views cut in one go, and its
        # factor is 2 m (one item: max(m, 1) = 1)
        pieces = [t.split(1, 1) for t in (support, item_base, y_all, (2.0 * m_all).unsqueeze(-1))]
        steps = [tuple(p[idx.start] for p in pieces) for idx in step_items]
    else:
        steps = []
        for idx in step_items:
            m = m_all if idx is None else m_all[:, idx]
            scale = (2.0 * m / m.sum(-1, keepdim=True).clamp_min(1.0)).unsqueeze(-1)
            steps.append((support, item_base, y_all, scale) if idx is None else
                         (support[:, idx], item_base[:, idx], y_all[:, idx], scale))
    for t, (x, ib, y, scale) in enumerate(steps):
        e_u, t_user = _forward_traced(point.user, u_in, steppers, user_base)  # [B, 1, d]
        e_i, t_item = _forward_traced(point.item, x, steppers, ib)  # [B, n, d]
        d = e_u.shape[-1]
        task_in = torch.cat([e_u.expand(-1, e_i.shape[1], -1), e_i], dim=-1)
        z = task.forward(task_in)
        h = point.memory_act(z)
        out, t_head = _forward_traced(point.head, h, steppers)
        g = (out - y) * scale  # [B, n, 1]
        deltas: dict[int, Tensor] = {}
        g = _backward_traced(t_head, g, steppers, deltas)
        g = _activation_grad(point.memory_act, z, h, g)
        deltas[id(point.task)] = g
        g = task.input_grad(g)
        _backward_traced(t_user, g[..., :d].sum(1, keepdim=True), steppers, deltas, input_grad=False)
        _backward_traced(t_item, g[..., d:], steppers, deltas, input_grad=False)
        inputs = {id(layer): x_in for layer, x_in, _ in (*t_user, *t_item, *t_head) if isinstance(layer, FastLinear)}
        inputs[id(point.task)] = task_in
        for layer in linears:
            steppers[id(layer)].update(t, inputs[id(layer)], deltas[id(layer)])
    for stepper in steppers.values():
        stepper.finish()


def _grad_leaf(x: Tensor) -> Tensor:
    """``x`` detached, asking for grad: the taps of a first-order step then have a graph to
    differentiate, while nothing reaches the outer loop."""
    return x.detach().requires_grad_(True)


def point_gradients(
    net: FactoredRecommender, profile: Tensor, items: Tensor, target: Tensor, mask: Tensor, *, loss_fn: LossFn
) -> dict[str, Tensor]:
    """Each user's gradient of their loss on ``items`` w.r.t. the user-MLP parameters at ``net``."""
    with torch.enable_grad():
        taps: list[Tap] = []
        losses = user_losses(loss_fn, net.detach()(_grad_leaf(profile), _grad_leaf(items), taps), target, mask)
        return user_mlp_gradients(net, losses.sum(), taps)


def user_mlp_gradients(net: FactoredRecommender, loss: Tensor, taps: Sequence[Tap]) -> dict[str, Tensor]:
    """Each user's gradient of ``loss`` (a sum of per-user losses) w.r.t. the user-MLP parameters.

    ``taps`` are those of the forward pass that produced ``loss``; the graph is kept for the outer
    backward. Returns ``{name: [B, *shape]}`` with no graph (MAMO writes it into ``M_U``, Eq. 6).
    """
    k = net.n_user_layers
    deltas = output_gradients(loss, taps[:k], retain_graph=True)
    out: dict[str, Tensor] = {}
    for (w_name, b_name), tap, delta in zip(net.user_names, taps[:k], deltas):
        gw, gb = weight_gradients((tap[0].detach(), tap[1]), delta.detach())
        out[w_name], out[b_name] = gw, gb
    return out


__all__ = ["FactoredRecommender", "adapt", "by_hand_possible", "factored_recommender", "item_base", "point_gradients", "user_losses",
           "user_mlp_gradients"]
