"""A learned per-coordinate optimizer step (coordinate-wise LSTMs), fused over many tensors.

Learned optimizers in the style of Andrychowicz et al. (2016) / Ravi & Larochelle (2017) run a
small LSTM *per coordinate* of every adapted tensor (each scalar is a batch row; one LSTM's
weights per tensor). Written naively, each tensor is its own LSTM call (most of them tiny and
overhead-bound) and autograd stores every gate of every step. Here all tensors of all users
live in ONE row buffer, ordered tensor-major (rows of tensor ``k`` for user 0, user 1, ... are
contiguous: :class:`SegmentLayout`), the K LSTMs' weights are stacked (:func:`stack_lstm_weights`),
and one inner step is one :class:`FusedCoordinateLSTMStep` call: an LSTM cell, a LayerNorm, two
sigmoid heads (learning rate ``lr`` and forget gate ``f``) and the update

    theta' = f * theta - lr * g        (users not ``keep``-ing: theta' = theta)

with a hand-written backward (no autograd graph inside a step: per step it keeps the inputs and
the activations, ~150 numbers per coordinate, and evaluates no transcendental function again;
the pointwise parts are compiled into a few fused loops by :func:`torch.compile`; on the CPU,
:class:`NativeCoordinateLSTMStep` does the whole step in two hand-written C++ loops). The per-user
scalar input (the pre-processed loss) is folded into the gate bias once per user
(:func:`gate_bias`) instead of being repeated on every row. Everything stays on the device:
no ``.item()``, no data-dependent branch, so a loop of these steps can be captured whole.

Gate order inside: PyTorch's ``(i, f, g, o)`` blocks are permuted to ``(i, f, o, g)`` when
stacking, so that one sigmoid covers three contiguous blocks and one tanh the last.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor


def preprocess(x: Tensor, p: float = 10.0) -> tuple[Tensor, Tensor]:
    """Andrychowicz et al.'s log/sign pre-processing of a signal that spans many magnitudes.

    ``(log|x| / p, sign x)`` if ``|x| >= e^-p``, else ``(-1, e^p x)``: the controllers see
    gradients and losses of any scale as numbers of order one.
    """
    small = x.abs() < math.exp(-p)
    log_part = torch.where(small, torch.full_like(x, -1.0), torch.log(x.abs() + 1e-20) / p)
    sign_part = torch.where(small, math.exp(p) * x, torch.sign(x))
    return log_part, sign_part


@dataclass(frozen=True)
class SegmentLayout:
    """Where each adapted tensor's coordinates lie in the row buffer, for ``users`` users.

    Tensor ``k`` (``numels[k]`` scalars per user) owns rows ``[offsets[k], offsets[k] +
    users * numels[k])``, user-major inside; so ``buffer[rows(k)].view(users, *shape_k)`` is
    that tensor for every user, without a copy. (Its sizes are computed once: an inner loop asks
    for them at every step.)
    """

    numels: tuple[int, ...]
    users: int

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        """Rows of each tensor's segment (``users * numels[k]``)."""
        return tuple(self.users * n for n in self.numels)

    @functools.cached_property
    def offsets(self) -> tuple[int, ...]:
        """First row of each tensor's segment."""
        out, at = [], 0
        for s in self.sizes:
            out.append(at)
            at += s
        return tuple(out)

    @functools.cached_property
    def rows(self) -> int:
        """Rows of the whole buffer."""
        return sum(self.sizes)

    def segment(self, k: int) -> slice:
        """The rows of tensor ``k``."""
        o = self.offsets[k]
        return slice(o, o + self.sizes[k])

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """``tensors[k]`` ``[users, *shape_k]`` -> the ``[rows]`` buffer (differentiable)."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, buffer: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
        """The ``[rows, ...]`` buffer -> views ``[users, *shape_k]`` (differentiable)."""
        return [buffer[self.segment(k)].view(self.users, *shape) for k, shape in enumerate(shapes)]

    def row_user(self, device: torch.device) -> Tensor:
        """The user of every row, ``long [rows]`` (to spread a per-user mask over the rows)."""
        users = torch.arange(self.users, device=device)
        return torch.cat([users.repeat_interleave(n) for n in self.numels])

    def row_tensor(self, device: torch.device) -> Tensor:
        """The tensor index of every row, ``long [rows]``."""
        return torch.cat([torch.full((s,), k, dtype=torch.long, device=device) for k, s in enumerate(self.sizes)])

    def per_row(self, per_segment: Tensor) -> Tensor:
        """``[K, H]`` values of each tensor's LSTM -> ``[rows, H]`` (e.g. the learned initial state)."""
        return torch.cat([per_segment[k].expand(s, -1) for k, s in enumerate(self.sizes)])


@dataclass
class StackedLSTMWeights:
    """The K coordinate LSTMs' parameters, stacked (differentiable views of the modules' tensors).

    ``w`` ``[K, X + H, 4H]``: the input weights of the ``X`` per-row inputs and the recurrent
    weights, transposed for ``[x; h] @ w``, gate blocks in ``(i, f, o, g)`` order; ``w_user``
    ``[K, 4H]``: the weights of the per-user input (folded into the bias by :func:`gate_bias`);
    ``b`` ``[K, 4H]``: ``b_ih + b_hh``; ``ln_w, ln_b`` ``[K, H]`` or None (no LayerNorm);
    ``head_w`` ``[K, heads, H]``, ``head_b`` ``[K, heads]``: heads ``(lr[, forget])``;
    ``h0, c0`` ``[K, H]``: learned initial state.
    """

    w: Tensor
    w_user: Tensor
    b: Tensor
    ln_w: Tensor | None
    ln_b: Tensor | None
    head_w: Tensor
    head_b: Tensor
    h0: Tensor
    c0: Tensor
    ln_eps: float = 1e-5


def _gate_blocks(t: Tensor, hidden: int) -> Tensor:
    """``t`` ``[K, 4H, ...]`` with PyTorch's gate blocks ``(i, f, g, o)`` -> ``(i, f, o, g)`` (slices)."""
    h = hidden
    return torch.cat([t[:, : 2 * h], t[:, 3 * h :], t[:, 2 * h : 3 * h]], 1)


def stack_lstm_weights(
    cells: Sequence[torch.nn.LSTMCell],
    norms: Sequence[torch.nn.LayerNorm | None],
    heads: Sequence[tuple[Tensor, Tensor]],
    initial: Sequence[tuple[Tensor, Tensor]],
    *,
    user_input: int,
) -> StackedLSTMWeights:
    """Stack K ``LSTMCell``s (+ LayerNorm, heads, initial state) for :class:`FusedCoordinateLSTMStep`.

    ``user_input``: the column of the cells' input that is the same for every row of a user (it is
    taken out of the per-row inputs and folded into the bias); the other columns keep their order.
    ``heads[k]`` = ``(weight [heads, H], bias [heads])``; ``initial[k]`` = ``(h0 [H], c0 [H])``.
    """
    hidden = cells[0].hidden_size
    # the K cells stacked first, then permuted and transposed once (not once per cell): the same
    # numbers with a few operators, forward and backward, instead of ~12 per cell
    w_ih = _gate_blocks(torch.stack([c.weight_ih for c in cells]), hidden)  # [K, 4H, n_in], (i, f, o, g)
    w_hh = _gate_blocks(torch.stack([c.weight_hh for c in cells]), hidden)  # [K, 4H, H]
    per_row = [w_ih[:, :, :user_input], w_ih[:, :, user_input + 1 :], w_hh]
    # contiguous once here, not at every step (the native step needs it so)
    w = torch.cat([t for t in per_row if t.shape[2]], 2).transpose(1, 2).contiguous()
    w_user = w_ih[:, :, user_input]
    # the two biases added per cell, not as two stacks: the backward of ``stack_ih + stack_hh`` hands
    # both stacks one gradient, whose slices autograd may keep as the .grad of both parameters --
    # one memory for two gradients, so a second backward (chunks) would accumulate into it twice
    b = _gate_blocks(torch.stack([c.bias_ih + c.bias_hh for c in cells]), hidden)
    has_ln = norms[0] is not None
    return StackedLSTMWeights(
        w=w,
        w_user=w_user,
        b=b,
        ln_w=torch.stack([n.weight for n in norms]) if has_ln else None,
        ln_b=torch.stack([n.bias for n in norms]) if has_ln else None,
        head_w=torch.stack([hw for hw, _ in heads]),
        head_b=torch.stack([hb for _, hb in heads]),
        h0=torch.stack([h for h, _ in initial]),
        c0=torch.stack([c for _, c in initial]),
        ln_eps=norms[0].eps if has_ln else 0.0,
    )


def gate_bias(weights: StackedLSTMWeights, user_value: Tensor) -> Tensor:
    """Per tensor and user gate bias ``b + u_b * w_user``, ``[K, B, 4H]`` (``user_value`` ``[B]``)."""
    return weights.b.unsqueeze(1) + user_value.view(1, -1, 1) * weights.w_user.unsqueeze(1)


def _inputs(grad: Tensor, theta: Tensor, h: Tensor, clamp: float, p: float) -> tuple[Tensor, Tensor]:
    """Per-row LSTM input ``[x; h]`` ``[R, 4 + H]`` and the clamped gradient ``[R]``."""
    g = grad.clamp(-clamp, clamp)
    g_log, g_sign = preprocess(g, p)
    p_log, p_sign = preprocess(theta, p)
    return torch.cat([torch.stack([g_log, g_sign, p_log, p_sign], dim=1), h], dim=1), g


def _cell_gates(z: Tensor, c: Tensor):
    """The LSTM cell after the gate matmul (pointwise: one loop when compiled)."""
    hidden = c.shape[1]
    i = torch.sigmoid(z[:, :hidden])
    f = torch.sigmoid(z[:, hidden : 2 * hidden])
    o = torch.sigmoid(z[:, 2 * hidden : 3 * hidden])
    tg = torch.tanh(z[:, 3 * hidden :])
    c_new = f * c + i * tg
    tc = torch.tanh(c_new)
    return i, f, o, tg, c_new, tc, o * tc


def _cell_out(hr, theta, g, keep, seg, ln_w, ln_b, head_w, head_b, eps: float):
    """LayerNorm of the cell output, the two sigmoid heads and the masked update, row by row.

    A separate kernel from :func:`_cell_gates` so that the row reductions (LayerNorm, heads)
    do not recompute the gates' transcendental functions.
    """
    if ln_w is not None:
        mean = hr.mean(1, keepdim=True)
        cen = hr - mean
        rstd = torch.rsqrt((cen * cen).mean(1, keepdim=True) + eps)
        h_hat = cen * rstd
        h_new = h_hat * ln_w[seg] + ln_b[seg]
    else:
        h_hat, rstd, h_new = hr, None, hr
    heads = torch.sigmoid((h_new.unsqueeze(1) * head_w[seg]).sum(-1) + head_b[seg])  # [R, heads]
    lr = heads[:, 0]
    fg = heads[:, 1] if head_w.shape[1] > 1 else torch.ones_like(lr)
    theta_new = torch.where(keep, fg * theta - lr * g, theta)
    return theta_new, h_new, h_hat, rstd, lr, fg


def _cell_backward(c, theta, g, keep, seg, ln_w, head_w, i, f, o, tg, tc, h_hat, rstd, h_new, lr, fg,
                   d_theta_new, d_h_new, d_c_new):
    """Gradients of :func:`_cell_gates` + :func:`_cell_out` from the saved activations.

    Returns ``(d_theta, d_z [R, 4H], d_c, per-row terms of the small weights' gradients)``; the
    last is ``[R, 2H + heads (H + 1)]`` = ``[dh * h_hat | dh | d_head ⊗ h | d_head]``, to be summed
    per tensor.
    """
    dtk = d_theta_new * keep.to(theta.dtype)
    d_lr = -dtk * g * lr * (1 - lr)
    if head_w.shape[1] > 1:
        d_theta = d_theta_new - dtk + dtk * fg
        d_head = torch.stack([d_lr, dtk * theta * fg * (1 - fg)], dim=1)
    else:
        d_theta = d_theta_new
        d_head = d_lr.unsqueeze(1)
    dh = d_h_new + (d_head.unsqueeze(-1) * head_w[seg]).sum(1)
    per_row = [dh * h_hat, dh, (d_head.unsqueeze(-1) * h_new.unsqueeze(1)).flatten(1), d_head]
    if ln_w is not None:
        dh_hat = dh * ln_w[seg]
        d_hr = rstd * (dh_hat - dh_hat.mean(1, keepdim=True) - h_hat * (dh_hat * h_hat).mean(1, keepdim=True))
    else:
        d_hr = dh
    d_c = d_c_new + d_hr * o * (1 - tc * tc)
    d_z = torch.cat([d_c * tg * i * (1 - i), d_c * c * f * (1 - f), d_hr * tc * o * (1 - o), d_c * i * (1 - tg * tg)], 1)
    return d_theta, d_z, d_c * f, torch.cat(per_row, dim=1)


class _Compiled:
    """``fn`` through :func:`torch.compile`; if compiling fails (no C++ compiler, no Triton, an
    unsupported platform) it warns once and runs ``fn`` eagerly from then on (same numbers)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Callable | None = torch.compile(fn, dynamic=False)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as exc:
                warnings.warn(
                    f"learned_optim: torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); running it eagerly (same numbers, slower)",
                    RuntimeWarning, stacklevel=2,
                )
                self.compiled = None
        return self.fn(*args)


class _Kernels:
    """The pointwise parts of a step: eager, or compiled by :func:`torch.compile` (C++ / Triton loops)."""

    def __init__(self, compiled: bool) -> None:
        wrap = _Compiled if compiled else (lambda fn: fn)
        self.inputs = wrap(_inputs)
        self.gates = wrap(_cell_gates)
        self.out = wrap(_cell_out)
        self.backward = wrap(_cell_backward)


_KERNELS: dict[bool, _Kernels] = {}


def kernels(compiled: bool) -> _Kernels:
    """The shared (eager or compiled) step kernels; compiled ones are built once per process."""
    if compiled not in _KERNELS:
        _KERNELS[compiled] = _Kernels(compiled)
    return _KERNELS[compiled]


def _segment_gates(xh: Tensor, bias: Tensor, w: Tensor, layout: SegmentLayout) -> Tensor:
    """``z = [x; h] @ w_k + bias_{k, user}`` for every row, one batched matmul per tensor."""
    rows = xh.shape[0]
    z = torch.empty(rows, w.shape[2], dtype=xh.dtype, device=xh.device)
    users = layout.users
    for k, n in enumerate(layout.numels):
        seg = layout.segment(k)
        if users == 1:
            torch.addmm(bias[k, 0], xh[seg], w[k], out=z[seg])
        else:
            torch.baddbmm(bias[k].unsqueeze(1), xh[seg].view(users, n, -1), w[k].expand(users, -1, -1),
                          out=z[seg].view(users, n, -1))
    return z


class FusedCoordinateLSTMStep(torch.autograd.Function):
    """One learned-optimizer step of every coordinate of every tensor and user.

    Inputs: ``theta`` ``[R]``; the LSTM state ``h, c`` ``[R, H]``; ``grad`` ``[R]`` the raw
    gradient (no gradient flows into it; it is clamped to ``+-clamp`` for the update and the
    input); ``keep`` ``bool [R]`` rows whose user still adapts; ``bias`` ``[K, B, 4H]``
    (:func:`gate_bias`); then ``w, ln_w, ln_b, head_w, head_b`` of :class:`StackedLSTMWeights`
    (``ln_w`` None: no LayerNorm), the layout, the row -> tensor index ``seg`` ``long [R]``, the
    LayerNorm eps, the gradient clamp, the pre-processing exponent and the kernels.
    Outputs ``(theta', h', c', lr, forget)``; ``lr``/``forget`` ``[R]`` carry no gradient
    (``forget`` is all ones with a single head). Saved for backward: ``[x; h]`` and the
    activations (~150 numbers per coordinate), so the backward evaluates no transcendental
    function again.
    """

    @staticmethod
    def forward(ctx, theta, h, c, grad, keep, bias, w, ln_w, ln_b, head_w, head_b, layout, seg, eps, clamp, p, kern):
        """One controller step for every row; keeps what the analytic backward needs."""
        xh, g = kern.inputs(grad, theta, h, clamp, p)
        z = _segment_gates(xh, bias, w, layout)
        i, f, o, tg, c_new, tc, hr = kern.gates(z, c)
        theta_new, h_new, h_hat, rstd, lr, fg = kern.out(hr, theta, g, keep, seg, ln_w, ln_b, head_w, head_b, eps)
        ctx.save_for_backward(theta, c, g, keep, xh, i, f, o, tg, tc, h_hat, rstd, h_new, lr, fg, w, ln_w, head_w, seg)
        ctx.layout, ctx.kern = layout, kern
        ctx.mark_non_differentiable(lr, fg)
        return theta_new, h_new, c_new, lr, fg

    @staticmethod
    def backward(ctx, d_theta_new, d_h_new, d_c_new, _d_lr, _d_fg):
        """The hand-written gradient of :meth:`forward` (LSTM cell, LayerNorm, heads, update)."""
        theta, c, g, keep, xh, i, f, o, tg, tc, h_hat, rstd, h_new, lr, fg, w, ln_w, head_w, seg = ctx.saved_tensors
        layout, kern = ctx.layout, ctx.kern
        users, hidden = layout.users, c.shape[1]
        n_heads = head_w.shape[1]
        d_theta, d_z, d_c_prev, per_row = kern.backward(
            c, theta, g, keep, seg, ln_w, head_w, i, f, o, tg, tc, h_hat, rstd, h_new, lr, fg,
            d_theta_new, d_h_new, d_c_new,
        )
        n_x = xh.shape[1] - hidden
        d_h_prev = torch.empty_like(c)
        d_w = torch.empty_like(w)
        sums, d_bias = [], []
        for k, n in enumerate(layout.numels):
            s = layout.segment(k)
            torch.mm(d_z[s], w[k, n_x:].t(), out=d_h_prev[s])
            torch.mm(xh[s].t(), d_z[s], out=d_w[k])
            d_bias.append(d_z[s].view(users, n, -1).sum(1))
            sums.append(per_row[s].sum(0))
        small = torch.stack(sums)  # [K, 2H + heads (H + 1)]
        d_ln_w, d_ln_b = (small[:, :hidden], small[:, hidden : 2 * hidden]) if ln_w is not None else (None, None)
        d_head_w = small[:, 2 * hidden : 2 * hidden + n_heads * hidden].reshape(head_w.shape)
        d_head_b = small[:, 2 * hidden + n_heads * hidden :]
        return (d_theta, d_h_prev, d_c_prev, None, None, torch.stack(d_bias), d_w, d_ln_w, d_ln_b, d_head_w, d_head_b,
                None, None, None, None, None, None)


class NativeCoordinateLSTMStep(torch.autograd.Function):
    """:class:`FusedCoordinateLSTMStep` as two hand-written CPU kernels (:mod:`metarec.native`).

    The forward is one pass over the rows (gate products, cell, LayerNorm, heads, update; a block
    of rows stays in registers / L1) that also writes the ``6H + 8`` activations per row the
    backward needs (when a graph is built); the backward is one pass that accumulates the weight
    gradients per (tensor, user) directly. ``active`` is per user (``bool [B]``); the other
    arguments are those of :class:`FusedCoordinateLSTMStep`.
    """

    @staticmethod
    def forward(ctx, theta, h, c, grad, active, bias, w, ln_w, ln_b, head_w, head_b, numels, eps, clamp, p,
                workspace=None):
        """The native forward; with a graph to build it also returns the activations the backward reads.

        ``workspace``: a ``[rows, 6H + 8]`` buffer (:class:`ActivationWorkspace`) the activations
        are written into instead of a fresh tensor; its version is bumped, so a graph that still
        needed the previous contents fails loudly in backward instead of reading the new ones.
        """
        save = any(ctx.needs_input_grad)
        op = torch.ops.metarec_native.coordinate_lstm_forward
        theta_new, h_new, c_new, lr, fg, saved = op(theta, h, c, grad, active, bias, w, ln_w, ln_b, head_w, head_b,
                                                    numels, eps, clamp, p, save, workspace if save else None)
        if save and workspace is not None:
            torch.autograd.graph.increment_version(workspace)
            saved = workspace
        if save:  # not ``grad``: callers overwrite their gradient buffer in place; ``saved`` has it clamped
            ctx.save_for_backward(theta, h, c, active, bias, w, ln_w, ln_b, head_w, head_b, saved)
        ctx.numels, ctx.eps, ctx.clamp, ctx.p = numels, eps, clamp, p
        ctx.mark_non_differentiable(lr, fg)
        return theta_new, h_new, c_new, lr, fg

    @staticmethod
    def backward(ctx, d_theta_new, d_h_new, d_c_new, _d_lr, _d_fg):
        """The native backward from the saved activations."""
        theta, h, c, active, bias, w, ln_w, ln_b, head_w, head_b, saved = ctx.saved_tensors
        # the kernel reads its ``grad`` argument only when it recomputes the activations (no
        # ``saved``); with them, any tensor of the right shape stands in
        grads = torch.ops.metarec_native.coordinate_lstm_backward(
            theta, h, c, theta, active, bias, w, ln_w, ln_b, head_w, head_b, ctx.numels, ctx.eps, ctx.clamp, ctx.p,
            _contiguous(d_theta_new), _contiguous(d_h_new), _contiguous(d_c_new), saved,
        )
        d_theta, d_h, d_c, d_bias, d_w, d_ln_w, d_ln_b, d_head_w, d_head_b = grads
        has_ln = ln_w is not None
        return (d_theta, d_h, d_c, None, None, d_bias, d_w, d_ln_w if has_ln else None, d_ln_b if has_ln else None,
                d_head_w, d_head_b, None, None, None, None, None)


class ActivationWorkspace:
    """Buffers for the native step's saved activations, one per inner step, reused across calls.

    A learner that adapts one user after another builds the same graph every time; allocating
    ``6H + 8`` numbers per row afresh at every step makes the operating system hand out (and
    zero) new pages each time. ``get(t, ...)`` returns step ``t``'s buffer (a separate tensor per
    step, so each has its own autograd version counter), reallocated only when the shape changes.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, Tensor] = {}

    def get(self, step: int, rows: int, hidden: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Step ``step``'s ``[rows, 6 hidden + 8]`` buffer (contents undefined)."""
        buf = self._buffers.get(step)
        shape = (rows, 6 * hidden + 8)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[step] = buf
        return buf

    def clear(self) -> None:
        """Drop the buffers (their memory returns once no graph holds them)."""
        self._buffers.clear()


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


#: Hidden sizes the native kernel is instantiated for.
NATIVE_HIDDEN = (8, 16, 32, 64)


def native_available(theta: Tensor, weights: StackedLSTMWeights) -> bool:
    """Whether :class:`NativeCoordinateLSTMStep` can run this step (CPU, float32/64, a supported shape)."""
    hidden = weights.h0.shape[1]
    if theta.device.type != "cpu" or theta.dtype not in (torch.float32, torch.float64):
        return False
    if hidden not in NATIVE_HIDDEN or weights.w.shape[1] != 4 + hidden or weights.head_w.shape[1] > 2:
        return False
    from metarec import native

    return native.load("coordinate_lstm_cpu")


def fused_step(
    theta: Tensor, h: Tensor, c: Tensor, grad: Tensor, active: Tensor, bias: Tensor,
    weights: StackedLSTMWeights, layout: SegmentLayout, seg: Tensor, *,
    row_user: Tensor | None = None, clamp: float = 1.0, p: float = 10.0, compiled: bool = False,
    native: bool | None = None, workspace: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One learned-optimizer step of every row: ``(theta', h', c', lr, forget)``.

    ``active`` ``bool [B]``: the users that still adapt (the others keep their rows). ``seg``:
    :meth:`SegmentLayout.row_tensor`; ``row_user``: :meth:`SegmentLayout.row_user` (computed if
    not given). ``native``: the hand-written CPU kernels (:class:`NativeCoordinateLSTMStep`); None
    = whenever they can run, else :class:`FusedCoordinateLSTMStep` with the eager or ``compiled``
    (:func:`torch.compile`) pointwise kernels -- the same numbers up to rounding. ``workspace``:
    where the native step keeps its activations (:meth:`ActivationWorkspace.get`; None: a new tensor).
    """
    if native is not False and native_available(theta, weights):
        return NativeCoordinateLSTMStep.apply(
            theta.contiguous(), h.contiguous(), c.contiguous(), grad.contiguous(), active.contiguous(),
            bias.contiguous(), weights.w.contiguous(), _contiguous(weights.ln_w), _contiguous(weights.ln_b),
            weights.head_w.contiguous(), weights.head_b.contiguous(), list(layout.numels), weights.ln_eps,
            float(clamp), float(p), workspace,
        )
    if native:
        raise RuntimeError("fused_step: the native kernel cannot run here (needs CPU, float32/64, "
                           f"hidden size in {NATIVE_HIDDEN}, a C++ compiler)")
    keep = active[row_user if row_user is not None else layout.row_user(theta.device)]
    return FusedCoordinateLSTMStep.apply(
        theta, h, c, grad, keep, bias, weights.w, weights.ln_w, weights.ln_b, weights.head_w, weights.head_b,
        layout, seg, weights.ln_eps, clamp, p, kernels(compiled),
    )


__all__ = [
    "ActivationWorkspace", "FusedCoordinateLSTMStep", "NATIVE_HIDDEN", "NativeCoordinateLSTMStep", "native_available", "SegmentLayout", "StackedLSTMWeights", "fused_step", "gate_bias", "kernels", "preprocess",
    "stack_lstm_weights",
]
