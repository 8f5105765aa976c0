"""Per-user fast weights kept as factors: exact, batched local SGD for stacks of linear layers.

A gradient step on a linear layer ``y = x W^T + b`` moves ``W`` by ``-lr * delta^T x``, where
``x [r, in]`` are the layer's inputs on the step's ``r`` items and ``delta = dLoss/dy [r, out]``:
a rank-``r`` matrix. After ``t`` item-by-item steps (MAMO's Algorithm 1) a user's weight is
``W_u = W0_u - lr * sum_s delta_s^T x_s``, a base plus a correction of rank ``t``. Keeping that
correction as its two thin factors instead of a ``[B, out, in]`` copy per user makes the local
adaptation of a batch cost what its few items cost: no per-user weight is ever written, so the
batch is no longer bound by memory bandwidth (see ``benchmarks/bench_mamo_speed.py``). The
numbers are those of materialised weights up to float rounding; the tests compare every method
that uses this against :mod:`metarec.engine` in float64.

The base may itself be personal without being materialised: ``W0_u = W + sum_k c_uk S_k``, ``K``
shared slots mixed with per-user coefficients (MAMO's memories ``M_U`` and ``M_{U,I}``).

A model is a sequence of :class:`FastLinear` layers and element-wise functions run by
:func:`run`, which records each linear layer's input and output; ``delta`` for every layer of a
step is then one :func:`torch.autograd.grad` of the summed per-user losses with respect to the
recorded outputs (users do not interact, so the sum's gradient is each user's own).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

#: A linear layer's recorded ``(input, output)`` pair, both ``[B, n, *]``.
Tap = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Outer:
    """A batch of low-rank matrices ``M_b = left[b]^T right[b]`` (``left [B, r, out]``,
    ``right [B, r, in]``), e.g. per-user weight gradients ``delta^T x``, never built."""

    left: Tensor
    right: Tensor

    def materialize(self) -> Tensor:
        """Every matrix, ``[B, out, in]``."""
        return self.left.transpose(1, 2) @ self.right

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``sum_b weights[b, k] M_b`` for every column ``k`` of ``weights [B, K]``: ``[K, out, in]``."""
        return torch.einsum("bk,bro,bri->koi", weights, self.left, self.right)

    def detach(self) -> Outer:
        """The same matrices cut from the autograd graph."""
        return Outer(self.left.detach(), self.right.detach())


@dataclass(frozen=True)
class FastLinear:
    """One linear layer for a batch of ``B`` users: ``y_u = x W_u^T + b_u``, ``W_u`` never built.

    ``W_u = weight + sum_k slot_coef[u, k] * slots[k] + left[u]^T right[u]`` and
    ``b_u = bias + bias_shift[u]``; every term is optional. The first terms are the *base*, fixed
    during local learning; ``left [B, R, out]``, ``right [B, R, in]`` (the ``R`` rank-one updates
    so far: output gradients, and inputs already scaled by ``-lr``) and ``bias_shift [B, out]``
    are what the local steps added. ``bias`` is shared ``[out]`` or per user ``[B, out]``. Immutable: :meth:`sgd`
    returns a new layer, like the functional steps of :mod:`metarec.engine`.
    """

    weight: Tensor | None = None
    slots: Tensor | None = None
    slot_coef: Tensor | None = None
    bias: Tensor | None = None
    bias_shift: Tensor | None = None
    left: Tensor | None = None
    right: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.slots is None) != (self.slot_coef is None):
            raise ValueError("FastLinear: slots and slot_coef come together")
        if self.weight is None and self.slots is None:
            raise ValueError("FastLinear needs a shared weight, slots, or both")

    @classmethod
    def mixture(cls, weight: Tensor, slots: Tensor, coef: Tensor, *, bias: Tensor | None = None) -> FastLinear:
        """``W_u = weight + sum_k coef[u, k] slots[k]`` stored as ``K + 1`` slots (one product per call)."""
        ones = torch.ones(coef.shape[0], 1, dtype=coef.dtype, device=coef.device)
        return cls(slots=torch.cat([weight.unsqueeze(0), slots]), slot_coef=torch.cat([ones, coef], 1), bias=bias)

    @property
    def shape(self) -> tuple[int, int]:
        """``(out, in)`` of the layer's weight."""
        w = self.weight if self.weight is not None else self.slots[0]
        return int(w.shape[0]), int(w.shape[1])

    def __call__(self, x: Tensor, base: Tensor | None = None) -> Tensor:
        """``x [B, n, in] -> [B, n, out]`` with each user's own weight.

        ``base``: :meth:`base` of this ``x``, computed once for an input that every local step
        sees again (the user profile): the steps then only add what they changed.
        """
        y = self.base(x) if base is None else base
        if self.bias_shift is not None:
            y = y + self.bias_shift.unsqueeze(1)
        if self.left is not None:
            y = torch.baddbmm(y, x @ self.right.transpose(1, 2), self.left)
        return y

    def base(self, x: Tensor) -> Tensor:
        """The output of the base weight and bias (what local steps do not change)."""
        y = x @ self.weight.T if self.weight is not None else None
        if self.slots is not None:
            k, out, inp = self.slots.shape
            per_slot = (x @ self.slots.reshape(k * out, inp).T).unflatten(-1, (k, out))  # [B, n, K, out]
            mixed = (self.slot_coef[:, None, None, :] @ per_slot).squeeze(-2)
            y = mixed if y is None else y + mixed
        if self.bias is not None:
            y = y + (self.bias if self.bias.dim() == 1 else self.bias.unsqueeze(1))
        return y

    def sgd(self, x: Tensor, delta: Tensor, lr: float) -> FastLinear:
        """The layer after one gradient step ``W -= lr delta^T x``, ``b -= lr sum(delta)``.

        ``x [B, r, in]`` and ``delta [B, r, out]`` are the step's recorded inputs and output
        gradients (pass them detached for a first-order step).
        """
        left = delta
        right = -lr * x
        if self.left is not None:
            left, right = torch.cat([self.left, left], 1), torch.cat([self.right, right], 1)
        shift = self.bias_shift
        if self.bias is not None:
            step = -lr * delta.sum(1)
            shift = step if shift is None else shift + step
        return dataclasses.replace(self, bias_shift=shift, left=left, right=right)

    def reserve(self, rank: int, batch_size: int) -> FastLinear:
        """The same layer with room for ``rank`` rank-one updates, zero until :meth:`sgd_` fills them.

        Zero rows add exactly nothing, so a step can use the whole buffer; filling it in place
        saves re-copying the growing factors at every step. Only for steps whose factors are
        constants (first order): their graph must be used before the next write.
        """
        if self.left is not None or self.bias_shift is not None:
            raise ValueError("reserve() needs a layer without local steps")
        out, inp = self.shape
        like = self.weight if self.weight is not None else self.slots
        zeros = lambda *shape: torch.zeros(*shape, dtype=like.dtype, device=like.device)  # noqa: E731
        shift = zeros(batch_size, out) if self.bias is not None else None
        return dataclasses.replace(self, left=zeros(batch_size, rank, out), right=zeros(batch_size, rank, inp), bias_shift=shift)

    def sgd_(self, x: Tensor, delta: Tensor, lr: float, at: int) -> None:
        """:meth:`sgd` in place, into rows ``at : at + r`` of a :meth:`reserve`-d layer (no graph)."""
        r = x.shape[1]
        with torch.no_grad():
            self.left[:, at : at + r] = delta
            torch.mul(x, -lr, out=self.right[:, at : at + r])
            if self.bias_shift is not None:
                self.bias_shift.add_(delta.sum(1), alpha=-lr)

    def detach(self) -> FastLinear:
        """The same layer cut from the autograd graph (a first-order step's evaluation point)."""
        return FastLinear(**{f.name: None if (v := getattr(self, f.name)) is None else v.detach()
                             for f in dataclasses.fields(self)})

    def with_steps_of(self, other: FastLinear) -> FastLinear:
        """This layer's base with ``other``'s local steps (first order: the steps were taken on the
        detached base and are constants; the base keeps its graph)."""
        return dataclasses.replace(self, bias_shift=other.bias_shift, left=other.left, right=other.right)

    def materialize(self, batch_size: int) -> Tensor:
        """Every user's weight, ``[B, out, in]`` (to store or inspect; the steps never need it)."""
        out, inp = self.shape
        w = self.weight if self.weight is not None else torch.zeros(out, inp, dtype=self.slots.dtype, device=self.slots.device)
        w = w.expand(batch_size, out, inp)
        if self.slots is not None:
            w = w + torch.einsum("bk,koi->boi", self.slot_coef, self.slots)
        if self.left is not None:
            w = w + Outer(self.left, self.right).materialize()
        return w

    def base_weight(self) -> Tensor:
        """The base weight: ``[out, in]`` when shared, ``[B, out, in]`` when it mixes slots."""
        if self.slots is None:
            return self.weight
        w = torch.einsum("bk,koi->boi", self.slot_coef, self.slots)
        return w if self.weight is None else w + self.weight

    def dense(self) -> Tensor:
        """Every user's whole weight ``[B, out, in]`` (base and local steps; ``[out, in]`` with
        neither slots nor steps), for scoring many items: one product per user instead of the
        base's slots and the factors'."""
        w = self.base_weight()
        if self.left is not None:
            w = torch.baddbmm(w.expand(self.left.shape[0], *w.shape[-2:]), self.left.transpose(1, 2), self.right)
        return w

    def apply_dense(self, x: Tensor, weight: Tensor, batch_size: int) -> Tensor:
        """``x [B, n, in]`` through :meth:`dense`'s ``weight`` and the users' biases, in one
        fused product (no pass of its own for the bias)."""
        bias = self.user_bias(batch_size)
        w = weight if weight.dim() == 3 else weight.expand(batch_size, *weight.shape)
        if bias is None:
            return torch.bmm(x, w.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, w.transpose(1, 2))

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """``sum_b weights[b, k] W_b`` for every column of ``weights [B, K]``, ``[K, out, in]``,
        without building any ``W_b`` (a memory write of the adapted weights, MAMO's Eq. 8)."""
        out, inp = self.shape
        total = torch.zeros(weights.shape[1], out, inp, dtype=weights.dtype, device=weights.device)
        if self.weight is not None:
            total = total + weights.sum(0)[:, None, None] * self.weight
        if self.slots is not None:
            total = total + torch.einsum("jk,koi->joi", weights.transpose(0, 1) @ self.slot_coef, self.slots)
        if self.left is not None:
            total = total + Outer(self.left, self.right).weighted_sum(weights)
        return total

    def user_bias(self, batch_size: int) -> Tensor | None:
        """Every user's bias, ``[B, out]`` (None for a bias-free layer)."""
        if self.bias is None:
            return None
        b = self.bias.expand(batch_size, -1) if self.bias.dim() == 1 else self.bias
        return b if self.bias_shift is None else b + self.bias_shift


Layer = FastLinear | Callable[[Tensor], Tensor]


def run(layers: Sequence[Layer], x: Tensor, taps: list[Tap] | None = None, *, first_base: Tensor | None = None) -> Tensor:
    """Apply ``layers`` in order; each :class:`FastLinear`'s ``(input, output)`` goes to ``taps``.

    ``first_base``: the first layer's :meth:`FastLinear.base` of ``x``, if already known.
    """
    for i, layer in enumerate(layers):
        if isinstance(layer, FastLinear):
            y = layer(x, first_base if i == 0 else None)
            if taps is not None:
                taps.append((x, y))
            x = y
        else:
            x = layer(x)
    return x


def output_gradients(loss: Tensor, taps: Sequence[Tap], *, create_graph: bool = False, retain_graph: bool | None = None) -> list[Tensor]:
    """``dloss/dy`` for each tap's output (zeros where the loss does not reach it)."""
    outputs = [y for _, y in taps]
    grads = torch.autograd.grad(loss, outputs, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(y) if g is None else g for g, y in zip(grads, outputs)]


def sgd_step(layers: Sequence[FastLinear], taps: Sequence[Tap], deltas: Sequence[Tensor], lr: float, *, first_order: bool) -> list[FastLinear]:
    """Every layer after one step from its tap and output gradient (factors detached if first order)."""
    if not (len(layers) == len(taps) == len(deltas)):
        raise ValueError(f"need one tap and one gradient per layer, got {len(layers)}, {len(taps)}, {len(deltas)}")
    return [
        layer.sgd(x.detach() if first_order else x, d.detach() if first_order else d, lr)
        for layer, (x, _), d in zip(layers, taps, deltas)
    ]


def weight_gradients(tap: Tap, delta: Tensor) -> tuple[Outer, Tensor]:
    """Each user's gradient of a linear layer's weight and bias: ``(delta^T x``, kept as
    :class:`Outer`, and ``sum(delta) [B, out])``."""
    x, _ = tap
    return Outer(delta, x), delta.sum(1)


__all__ = ["FastLinear", "Layer", "Outer", "Tap", "output_gradients", "run", "sgd_step", "weight_gradients"]
