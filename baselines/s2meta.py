"""s²Meta (Du et al., KDD 2019), adapted to per-user rating prediction in the MAMO protocol.

Model (the public ScenarioMeta MovieLens configuration, fed with the dataset schema's features)::

    u = W_u [emb(f) for f in user features]        # per-feature 32-d embeddings -> 64-d
    v = W_i [emb(f) for f in item features]        # per-feature 32-d embeddings -> 64-d
    y_hat = MLP_theta([u; v]) : 128 -> 64 -> ReLU -> 32 -> ReLU -> 16 -> ReLU -> 1

Local adaptation (per user, on the 15 support ratings): every weight and bias of the MLP
(8 tensors, ~11k numbers) starts from the meta-learned theta_0 and is updated by a meta-learned
*update controller*: for each adapted tensor a coordinate-wise LSTM (each scalar parameter is a
batch row) reads the pre-processed gradient, parameter and loss and emits a per-coordinate
learning rate ``lr_t`` (input gate) and forget gate ``f_t``::

    theta_{t+1} = f_t * theta_t - lr_t * clamp(g_t, -1, 1)

A *stop controller* (LSTM over the 8 gradient norms and the support loss) gives a stop
probability ``p_t`` before every step; from step ``min_steps`` (4) on, the user's adaptation
ends when it decides to stop, and after ``max_steps`` (20) updates at the latest. The inner
gradient has no second-order graph (as the reference code): the meta-gradient reaches theta_0,
the controllers and the embedders through ``f_t``, ``lr_t`` and ``theta_t``, not through ``g_t``.

Meta-objective per user (the reference code's ``main.train``): the final query loss
``L^q_T`` plus a baseline-free REINFORCE term for the stop controller,
``sum_t -log(1 - p_t) * stopgrad(L^q_t - L^q_T - (T - t) * step_penalty)`` over the steps that
continued (including the forced ones before ``min_steps``, as the code does), where ``L^q_t`` is
the query loss of the parameters before update ``t``. Outer optimiser: Adam with one learning
rate for theta_0 (``init_lr``), one for the update controller (``update_lr``) and one for the stop
controller (``stop_lr``), weight decay 1e-5, gradient *value* clipping to +-0.25.

Batching: all users of a batch (or of a chunk of it, ``chunk_size``) adapt at once. Users stop
at different steps: an ``active [B]`` mask freezes the parameters of users that stopped (masked
update), and the loop runs while any user is active (or, ``inner_loop_exit = "masked"``, always
``max_steps`` steps, with no host synchronisation). This gives the same numbers as adapting the
users one by one.

Backends (``backend``): ``fused`` (default) keeps the fast parameters of all users and tensors in
one row buffer and runs ONE learned-optimizer step per inner step for all 8 adapted tensors
(:func:`metarec.learned_optim.fused_step`: stacked LSTM weights, the loss input folded into the
gate bias once per user, a hand-written backward; on the CPU the hand-written C++ step of
:mod:`metarec.native` where it builds (``native_kernels``), else pointwise kernels compiled by
:func:`torch.compile` when ``compile_controller`` is not False); the inner gradients (and, in
the same MLP pass, the query losses REINFORCE records) come from
:func:`metarec.nn.per_user_relu_mlp_mse_grads`. ``reference`` is the
original implementation (one LSTM call per tensor under autograd, the MLP under
:func:`torch.func.vmap`), kept for the parity test. Both compute the same numbers (float64: to
1e-12) and share parameters, so checkpoints load into either.

Deviations from the paper / reference code (THUDM/ScenarioMeta, ``configs/config-movielens.json``),
and why:

* **Task = one user** with its 15 support and 5 query ratings (MAMO protocol) instead of a
  scenario; every inner step uses the whole support set instead of resampling 128 positive
  pairs with sampled negatives, which make no sense with 15 explicit ratings.
* **Loss: MSE rating regression** on support and query instead of the margin-1 hinge ranking
  loss (MAMO's protocol predicts ratings; there are no negatives to rank against).
* **Inputs**: the original feeds frozen pre-trained user/item embeddings whose construction is
  unreleased (ScenarioMeta issue #3), and per-ID embeddings would be untrained for test users.
  We embed the schema's user and item features with :class:`metarec.nn.FeatureEmbedder`
  (``embedding_dim`` per feature) and project each side linearly to ``side_width`` (64) so that
  the MLP's input width stays 128. The embedders and projections are *trained globally* by the
  outer optimiser (their own Adam group, ``embedding_lr``, default = ``init_lr``) and are not
  adapted locally -- the original does not adapt its embeddings either. They receive the
  meta-gradient through the query loss only (the inner gradient is first order).
* **Users per meta-step**: one Adam step per batch of ``batch_size`` users on the mean objective.
  The original takes one step per task; ``batch_size = 1`` (the default and the preset) does the
  same, larger batches (for a GPU) take fewer, averaged steps per epoch.
* **Training length / model selection**: a fixed number of epochs; 20 epochs x 4,832 training
  users ~ the original's 100,000 tasks. The original's ``ReduceLROnPlateau`` is stepped on
  *test* Recall@10 (test leakage) and its checkpoint is chosen on a validation Recall@20; neither
  is done here.
* **Stop rule at evaluation**: the original's stochastic rule (``u < p_t``), the rule the
  controllers are trained with, is the default (``eval_stop_rule = "sample"``); its draws come
  from the run seed and the user (:meth:`S2Meta.eval_uniforms`), so the numbers are
  reproducible and do not depend on batching. The learned stop probabilities stay well below
  0.5, so the deterministic ``threshold`` rule (stop when ``p_t > stop_threshold``) runs nearly
  every test user for all ``max_steps`` steps -- outside the step-count regime seen in training
  and at about twice the cost; it remains an option. ``results.json`` records the distribution
  of inner steps per user in training and evaluation (``learner_info.inner_steps``).
* **LSTM bias initialisation**: the reference code means to set the update LSTMs' forget-gate
  bias to 1 but writes into a slice of the *input*-gate block; the default ``"forget"`` does what
  was intended, ``lstm_bias_init = "reference"`` reproduces the code.
* **Predictions are clipped** to the rating range at evaluation (``clip_predictions``), as for
  every metarec learner.
* Not implemented: the ``hidden_input`` stop-controller variant (off in the config; it crashes
  in the reference code) and the adversarial sampler (unused for MovieLens).

Presets: ``paper`` = the public MovieLens configuration's values (listed in :data:`PAPER`),
with one user per Adam step; the config defaults are the same values. A 10x larger set of
learning rates (1e-3 / 1e-3 / 5e-4) was tried on ML-1M and reached the same test MAE after 3,000
users as ``paper`` after 4,832 (0.873 vs 0.871), so there is no ``tuned`` preset.

Cost: the hot path is the per-coordinate LSTM over the MLP's 10,881 parameters, forward and
backward, at every inner step; its matrix products alone set a floor per inner step. Measured
epoch times of both backends: ``benchmarks/bench_s2meta_speed.py``; where a meta-step's time goes:
``benchmarks/s2meta_breakdown.py``; the floor of the algorithm on the machine:
``benchmarks/s2meta_floor.py`` (results on the s2Meta docs page).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metarec import engine
from metarec.config import Rule, setting
from metarec.learned_optim import (
    ActivationWorkspace, SegmentLayout, StackedLSTMWeights, fused_step, gate_bias, native_available, preprocess,
    stack_lstm_weights,
)
from metarec.learner import EpisodicConfig, EpisodicLearner
from metarec.nn import FeatureEmbedder, broadcast_user, mlp, per_user_relu_mlp, per_user_relu_mlp_mse_grads
from metarec.runtime import torch_generator
from metarec.schema import FeatureSchema
from metarec.tasks import TaskBatch

#: The public ScenarioMeta MovieLens configuration (``configs/config-movielens.json``).
PAPER: dict[str, Any] = {
    "hidden": (64, 32, 16),
    "side_width": 64,
    "lstm_hidden": 16,
    "layer_norm": True,
    "forget_bias": 5.0,
    "max_steps": 20,
    "min_steps": 4,
    "flexible_step": True,
    "step_penalty": 0.0,
    "init_lr": 1e-4,
    "update_lr": 1e-4,
    "stop_lr": 5e-5,
    "weight_decay": 1e-5,
    "clip_value": 0.25,
    "batch_size": 1,
    "epochs": 20,
}


# --------------------------------------------------------------------------- building blocks


class FeatureInputs(nn.Module):
    """The recommender's input ``[user vector; item vector]`` built from the schema's features.

    Stands in for the original's frozen pre-trained embeddings: each side's feature embeddings
    are concatenated and projected linearly to ``side_width``.
    """

    def __init__(self, schema: FeatureSchema, embedding_dim: int, side_width: int, multi_pooling: str) -> None:
        super().__init__()
        self.user_embedder = FeatureEmbedder(schema.user_features, embedding_dim, multi_pooling=multi_pooling)
        self.item_embedder = FeatureEmbedder(schema.item_features, embedding_dim, multi_pooling=multi_pooling)
        self.user_proj = nn.Linear(self.user_embedder.out_dim, side_width)
        self.item_proj = nn.Linear(self.item_embedder.out_dim, side_width)

    @property
    def out_dim(self) -> int:
        """Width of the MLP input: user plus item projection (128 with the public config)."""
        return self.user_proj.out_features + self.item_proj.out_features

    def forward(self, user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        """``user_x`` ``[B, ...]``, ``items_x`` ``[B, N, ...]`` -> ``[B, N, out_dim]``."""
        items = self.item_proj(self.item_embedder(items_x))
        user = broadcast_user(self.user_proj(self.user_embedder(user_x)), items)
        return torch.cat([user, items], dim=-1)  # user first, as the reference recommender


def controller_step(
    theta: Tensor,
    grad: Tensor,
    loss_in: Tensor,
    keep: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    ln_w: Tensor | None,
    ln_b: Tensor | None,
    head_w: Tensor,
    head_b: Tensor,
    grad_clamp: float,
    smooth_p: float,
    ln_eps: float,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """One update-controller step of ONE tensor, for every coordinate of every user (``N`` rows).

    ``theta`` ``[N]`` (differentiable), ``grad`` ``[N]`` (detached), ``loss_in`` ``[N]`` (the
    pre-processed support loss of the coordinate's user), ``keep`` ``bool [N]`` (the user is
    still adapting), state ``h, c`` ``[N, H]``. Returns ``(new theta, lr, forget, h, c)``;
    coordinates with ``keep`` False keep their value. A plain function of tensors so that
    :func:`torch.compile` can fuse it (``compile_controller``).
    """
    g = grad.clamp(-grad_clamp, grad_clamp)
    g_log, g_sign = preprocess(g, smooth_p)
    p_log, p_sign = preprocess(theta.detach(), smooth_p)
    x = torch.stack([g_log, g_sign, p_log, p_sign, loss_in], dim=1)
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, gg, o = gates.chunk(4, dim=1)  # PyTorch's LSTM gate order
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    h = torch.sigmoid(o) * torch.tanh(c)
    if ln_w is not None:
        h = F.layer_norm(h, (h.shape[1],), ln_w, ln_b, ln_eps)
    heads = torch.sigmoid(F.linear(h, head_w, head_b))
    lr = heads[:, 0]
    if head_w.shape[0] > 1:
        forget = heads[:, 1]
        new = forget * theta - lr * g
    else:
        forget = None
        new = theta - lr * g
    return torch.where(keep, new, theta), lr, forget, h, c


class CoordinateLSTM(nn.Module):
    """Update controller of ONE adapted tensor: per coordinate, a learning rate and a forget gate.

    Input per coordinate (5 numbers): pre-processed gradient (2), pre-processed parameter value
    (2), log part of the pre-processed loss (1). ``LSTMCell(5, H)`` with a learned initial
    state, LayerNorm on ``h`` (the normalised ``h`` is also the state carried on), then
    ``lr = sigmoid(w_lr h)`` (bias 0) and ``f = sigmoid(w_f h + b_f)`` (``b_f`` = 5: f ~ 0.993).
    The parameters live in standard modules; the computation is :func:`controller_step`.
    """

    n_inputs: ClassVar[int] = 5

    def __init__(
        self,
        hidden: int,
        *,
        layer_norm: bool = True,
        forget_gate: bool = True,
        forget_bias: float = 5.0,
        lstm_bias_init: str = "forget",
    ) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(self.n_inputs, hidden)
        self.norm = nn.LayerNorm(hidden) if layer_norm else None
        self.lr_head = nn.Linear(hidden, 1)
        self.forget_head = nn.Linear(hidden, 1) if forget_gate else None
        self.h0 = nn.Parameter(torch.randn(hidden))
        self.c0 = nn.Parameter(torch.randn(hidden))
        nn.init.xavier_normal_(self.lr_head.weight)
        nn.init.zeros_(self.lr_head.bias)
        if self.forget_head is not None:
            nn.init.xavier_normal_(self.forget_head.weight)
            nn.init.constant_(self.forget_head.bias, forget_bias)
        with torch.no_grad():
            # PyTorch gate order: input, forget, cell, output (blocks of ``hidden``).
            if lstm_bias_init == "forget":
                self.cell.bias_ih[hidden : 2 * hidden].fill_(1.0)
                self.cell.bias_hh[hidden : 2 * hidden].fill_(0.0)
            elif lstm_bias_init == "reference":  # the reference code's slice (inside the input gate)
                self.cell.bias_ih[hidden // 4 : hidden // 2].fill_(1.0)
                self.cell.bias_hh[hidden // 4 : hidden // 2].fill_(0.0)
            elif lstm_bias_init != "default":
                raise ValueError(f"unknown lstm_bias_init {lstm_bias_init!r}; use forget, reference or default")

    def initial_state(self, n: int) -> tuple[Tensor, Tensor]:
        """The learned initial (h, c) repeated for ``n`` coordinates."""
        return self.h0.expand(n, -1).contiguous(), self.c0.expand(n, -1).contiguous()

    def step_tensors(self) -> tuple[Tensor | None, ...]:
        """The weights :func:`controller_step` takes, in its argument order."""
        heads = [self.lr_head] + ([self.forget_head] if self.forget_head is not None else [])
        return (
            self.cell.weight_ih,
            self.cell.weight_hh,
            self.cell.bias_ih,
            self.cell.bias_hh,
            self.norm.weight if self.norm is not None else None,
            self.norm.bias if self.norm is not None else None,
            torch.cat([m.weight for m in heads], dim=0),
            torch.cat([m.bias for m in heads], dim=0),
        )


class UpdateController(nn.Module):
    """One :class:`CoordinateLSTM` per adapted tensor; updates ``[B, ...]`` fast parameters."""

    def __init__(
        self,
        n_tensors: int,
        hidden: int,
        *,
        layer_norm: bool = True,
        forget_gate: bool = True,
        forget_bias: float = 5.0,
        lstm_bias_init: str = "forget",
        grad_clamp: float = 1.0,
        smooth_p: float = 10.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.lstms = nn.ModuleList(
            CoordinateLSTM(
                hidden, layer_norm=layer_norm, forget_gate=forget_gate,
                forget_bias=forget_bias, lstm_bias_init=lstm_bias_init,
            )
            for _ in range(n_tensors)
        )
        self.grad_clamp = grad_clamp
        self.smooth_p = smooth_p
        # One graph for every tensor and batch size (dynamic N); eager when not asked for.
        self._compiled_step = torch.compile(controller_step, dynamic=True) if compile else None

    def stacked(self) -> StackedLSTMWeights:
        """The controllers' weights stacked for the fused step (differentiable; once per inner loop)."""
        heads, initial = [], []
        for lstm in self.lstms:
            hw, hb = lstm.step_tensors()[-2:]
            heads.append((hw, hb))
            initial.append((lstm.h0, lstm.c0))
        return stack_lstm_weights(
            [lstm.cell for lstm in self.lstms], [lstm.norm for lstm in self.lstms], heads, initial,
            user_input=CoordinateLSTM.n_inputs - 1,
        )

    def step_fn(self, *args: Any) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """:func:`controller_step`, compiled when asked for; falls back to eager if compiling fails."""
        if self._compiled_step is not None:
            try:
                return self._compiled_step(*args)
            except Exception as exc:  # no C++ compiler / Triton, unsupported platform, ...
                warnings.warn(
                    f"s2meta: torch.compile of the update controller failed ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); running it eagerly (same numbers, slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._compiled_step = None
        return controller_step(*args)

    def forward(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        loss: Tensor,
        states: Sequence[tuple[Tensor, Tensor] | None] | None = None,
        active: Tensor | None = None,
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]], list[Tensor], list[Tensor | None]]:
        """One update of every tensor for every user.

        ``params[k]``/``grads[k]``: ``[B, *shape_k]`` (``grads`` detached), ``loss``: ``[B]``
        support loss (detached), ``active`` ``bool [B]`` (None = all): users not active keep
        their parameters (masked update). Returns ``(new params, states, lrs, forgets)`` where
        ``lrs[k]`` and ``forgets[k]`` have the shape of ``params[k]``.
        """
        states = list(states) if states is not None else [None] * len(params)
        b = loss.shape[0]
        if active is None:
            active = torch.ones(b, dtype=torch.bool, device=loss.device)
        loss_in = preprocess(loss.detach(), self.smooth_p)[0]  # [B]
        new_params, new_states, lrs, forgets = [], [], [], []
        for k, (lstm, theta, g) in enumerate(zip(self.lstms, params, grads)):
            numel = theta[0].numel()
            h, c = states[k] if states[k] is not None else lstm.initial_state(b * numel)
            inputs = [theta.reshape(-1), g.detach().reshape(-1), loss_in.repeat_interleave(numel), active.repeat_interleave(numel)]
            if self._compiled_step is not None:  # views make torch.compile guard on their bases (recompiles)
                inputs = [x.clone() for x in inputs]
            new, lr, forget, h, c = self.step_fn(
                *inputs,
                h,
                c,
                *lstm.step_tensors(),
                self.grad_clamp,
                self.smooth_p,
                lstm.norm.eps if lstm.norm is not None else 0.0,
            )
            new_params.append(new.view_as(theta))
            new_states.append((h, c))
            lrs.append(lr.view_as(theta))
            forgets.append(forget.view_as(theta) if forget is not None else None)
        return new_params, new_states, lrs, forgets


class StopController(nn.Module):
    """Probability of stopping the adaptation, from the gradient norms and the loss.

    Input per user: ``[||g^(1)||, ..., ||g^(P)||, L]`` (log part of the pre-processing), an
    ``LSTMCell(P + 1, 2 (P + 1))`` with learned initial state and a linear output (bias 0).
    """

    def __init__(self, n_tensors: int, *, smooth_p: float = 10.0) -> None:
        super().__init__()
        n_in = n_tensors + 1
        self.cell = nn.LSTMCell(n_in, 2 * n_in)
        self.out = nn.Linear(2 * n_in, 1)
        nn.init.zeros_(self.out.bias)
        self.h0 = nn.Parameter(torch.randn(2 * n_in))
        self.c0 = nn.Parameter(torch.randn(2 * n_in))
        self.smooth_p = smooth_p

    def forward(
        self, grads: Sequence[Tensor] | None, loss: Tensor, state: tuple[Tensor, Tensor] | None = None,
        norms: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``grads[k]`` ``[B, ...]``, ``loss [B]`` -> ``(stop logit [B], state)``; p = sigmoid(logit).

        ``norms`` ``[B, P]``: the gradient norms, if the caller has them already (``grads`` unused).
        """
        if norms is None:
            norms = torch.stack([g.detach().flatten(1).norm(dim=1) for g in grads], dim=1)
        inputs = preprocess(torch.cat([norms.detach(), loss.detach().unsqueeze(1)], dim=1), self.smooth_p)[0]
        if state is None:
            b = inputs.shape[0]
            state = (self.h0.expand(b, -1), self.c0.expand(b, -1))
        h, c = self.cell(inputs, state)
        return self.out(h).squeeze(-1), (h, c)


# --------------------------------------------------------------------------- the learner


@dataclass
class S2MetaConfig(EpisodicConfig):
    """s²Meta's settings; the defaults are the public MovieLens configuration (``paper``)."""

    #: Per-feature embedding size of the schema's features (before the projection).
    embedding_dim: int = setting(32, ge=1)
    #: Width of the user and of the item vector: MLP input = 2 x side_width (128 in the config).
    side_width: int = setting(64, ge=1)
    hidden: tuple[int, ...] = setting((64, 32, 16), ge=1, min_len=1)
    multi_pooling: Literal["mean", "sum", "sigmoid"] = "mean"
    #: Hidden size of each coordinate-wise update LSTM; LayerNorm on its output.
    lstm_hidden: int = setting(16, ge=1)
    layer_norm: bool = True
    forget_gate: bool = True
    #: Initial bias of the forget-gate output (sigmoid(5) ~ 0.993).
    forget_bias: float = 5.0
    #: ``forget`` (LSTM forget-gate bias 1, the intent), ``reference`` (the code's slice), ``default``.
    lstm_bias_init: Literal["forget", "reference", "default"] = "forget"
    #: Inner gradients are clamped to +-grad_clamp before the update (and the LSTM input).
    grad_clamp: float = setting(1.0, gt=0)
    #: Exponent p of the log/sign pre-processing.
    smooth_p: float = setting(10.0, gt=0)
    #: At most ``max_steps`` inner updates; the stop controller may end it from ``min_steps`` on.
    max_steps: int = setting(20, ge=1)
    min_steps: int = setting(4, ge=0)
    #: False: no stop controller, always ``max_steps`` updates.
    flexible_step: bool = True
    #: Evaluation stop rule: ``sample`` (u < p with u drawn from the run seed and the user: the
    #: training rule, reproducible) or ``threshold`` (p > stop_threshold, deterministic).
    eval_stop_rule: Literal["sample", "threshold"] = "sample"
    stop_threshold: float = setting(0.5, gt=0, lt=1)
    #: REINFORCE cost per extra step (0 in the config; negative: a reward for going on).
    step_penalty: float = 0.0
    #: Adam learning rates of the three groups (theta_0, update controller, stop controller).
    init_lr: float = setting(1e-4, gt=0)
    update_lr: float = setting(1e-4, gt=0)
    stop_lr: float = setting(5e-5, gt=0)
    #: Learning rate of the feature embedders and projections (None = init_lr).
    embedding_lr: float | None = setting(None, ge=0)
    weight_decay: float = setting(1e-5, ge=0)
    #: Clip every meta-gradient entry to +-clip_value (None = off).
    clip_value: float | None = setting(0.25, gt=0)
    #: Users per Adam step (the original: one task per step).
    batch_size: int = setting(1, ge=1)
    eval_batch_size: int = setting(32, ge=1)
    #: Users whose inner loops run together (gradients are accumulated over the chunks of a
    #: batch, so the numbers do not depend on it); None = 8 on CPU, the whole batch on CUDA.
    #: Small chunks keep the per-coordinate LSTMs' tensors in cache: on CPU 8 users per chunk
    #: run ~2x faster per user than 32, and a chunk waits for its slowest user.
    chunk_size: int | None = setting(None, ge=1)
    #: Compile the update controller's step with :func:`torch.compile` (needs a C++ compiler, or
    #: Triton on CUDA; falls back to eager with a warning). None: on for the ``fused`` backend
    #: (its pointwise kernels), off for ``reference``.
    compile_controller: bool | None = None
    #: ``fused``: one :mod:`metarec.learned_optim` step for all adapted tensors per inner step,
    #: analytic inner gradients; ``reference``: one LSTM call per tensor under autograd (the
    #: original implementation, kept for the parity test; ``compile_controller`` applies to it).
    backend: Literal["fused", "reference"] = "fused"
    #: Fused backend: ``break`` leaves the inner loop once every user stopped (one host check
    #: per step), ``masked`` always runs ``max_steps`` steps with stopped users frozen (no host
    #: synchronisation; same numbers); ``auto`` = break on CPU, masked on CUDA.
    inner_loop_exit: Literal["auto", "break", "masked"] = "auto"
    #: Fused backend on CPU: the hand-written C++ kernels of the controller step
    #: (:class:`metarec.learned_optim.NativeCoordinateLSTMStep`, compiled on first use); None =
    #: whenever they can run (else the PyTorch kernels, ``compile_controller``), False = never.
    native_kernels: bool | None = None

    rules = (Rule("min_steps <= max_steps", lambda c: c.min_steps <= c.max_steps, ("min_steps", "max_steps")),)


@dataclass
class Adaptation:
    """What the inner loop did for a batch of users (diagnostics and tests)."""

    #: Adapted MLP parameters, name -> ``[B, ...]``.
    params: dict[str, Tensor]
    #: Inner updates taken by each user, ``long [B]``.
    steps: Tensor
    #: Stop probability at each evaluated step, ``[T, B]`` (empty without a stop controller).
    stop_probs: Tensor
    #: Users still adapting after each step's stop decision, ``bool [T, B]``.
    active: Tensor
    #: Mean learning rate / forget gate over the coordinates of the users updated at each step.
    mean_lr: list[float]
    mean_forget: list[float]
    #: Training only: ``log(1 - p_t)`` ``[T, B]`` (differentiable) and the query loss of the
    #: parameters before update ``t`` ``[T, B]`` (no gradient), for the REINFORCE term.
    log_keep: Tensor | None = None
    query_losses: Tensor | None = None


def _histogram_mean(hist: Sequence[int]) -> float:
    n = sum(hist)
    return sum(k * v for k, v in enumerate(hist)) / n if n else float("nan")


def _take(batch: TaskBatch, index: slice) -> TaskBatch:
    """The users ``index`` of a batch (a view; every field is sliced along the user axis)."""
    parts: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        parts[f.name] = {k: v[index] for k, v in value.items()} if isinstance(value, dict) else value[index]
    return TaskBatch(**parts)


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class S2Meta(EpisodicLearner):
    """s²Meta: meta-learned update and stop controllers adapt an MLP recommender to each user."""

    name: ClassVar[str] = "s2meta"
    description: ClassVar[str] = "s²Meta (Du et al. 2019): learned LSTM updates + learned stopping"
    Config: ClassVar[type] = S2MetaConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER}
    #: The three Adam rates around the public configuration's, the controllers' size and the inner
    #: loop's length. Epochs stay short: one ML-1M epoch takes minutes on a CPU (docs: Tuning).
    search_space: ClassVar[dict[str, dict[str, Any]]] = {
        "init_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "update_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "stop_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "lstm_hidden": {"type": "categorical", "choices": [8, 16, 32]},
        "max_steps": {"type": "int", "low": 5, "high": 20, "step": 5},
        "min_steps": {"type": "int", "low": 1, "high": 4},
        "weight_decay": {"type": "categorical", "choices": [0.0, 1e-5, 1e-4]},
        "epochs": {"type": "int", "low": 1, "high": 5},
    }

    # ----------------------------------------------------------------- construction
    def build(self) -> None:
        c: S2MetaConfig = self.config
        self.inputs = FeatureInputs(self.schema, c.embedding_dim, c.side_width, c.multi_pooling).to(self.device)
        self.recommender = mlp([self.inputs.out_dim, *c.hidden, 1], activation="relu", zero_bias=True).to(self.device)
        self.param_names = [n for n, _ in self.recommender.named_parameters()]
        n = len(self.param_names)
        self.update_controller = UpdateController(
            n, c.lstm_hidden, layer_norm=c.layer_norm, forget_gate=c.forget_gate, forget_bias=c.forget_bias,
            lstm_bias_init=c.lstm_bias_init, grad_clamp=c.grad_clamp, smooth_p=c.smooth_p,
            compile=c.backend == "reference" and bool(c.compile_controller),
        ).to(self.device)
        self.stop_controller = StopController(n, smooth_p=c.smooth_p).to(self.device)
        embedding_lr = c.init_lr if c.embedding_lr is None else c.embedding_lr
        groups = [
            {"params": list(self.recommender.parameters()), "lr": c.init_lr},
            {"params": list(self.inputs.parameters()), "lr": embedding_lr},
            {"params": list(self.update_controller.parameters()), "lr": c.update_lr},
            {"params": list(self.stop_controller.parameters()), "lr": c.stop_lr},
        ]
        # One fused kernel for all parameters: with one user per Adam step, the per-tensor loop of
        # the default implementation over the many embedding tables is a large share of a step.
        self.optimizer = torch.optim.Adam(groups, weight_decay=c.weight_decay, fused=True)
        self.meta_steps_done = 0
        self._stats: dict[str, Any] = {}
        #: Users per number of inner updates: ``train_last_epoch``, ``train_all_epochs``, ``eval``.
        self.step_histograms: dict[str, list[int]] = {}
        self._eval_histogram: Tensor | None = None
        #: The native controller step's saved activations, one buffer per inner step, reused by
        #: every meta-step of an epoch (fresh ones cost page faults every step); at most
        #: ``max_steps`` x the rows of one chunk x (6 lstm_hidden + 8) numbers, freed at epoch end.
        self._workspace = ActivationWorkspace()

    def _compiled_fused(self) -> bool:
        """Whether the fused backend runs its compiled (:func:`torch.compile`) kernels."""
        return self.config.compile_controller is not False

    @property
    def chunk_size(self) -> int | None:
        """Users per inner-loop chunk (``config.chunk_size``, or the device's default)."""
        if self.config.chunk_size is not None:
            return self.config.chunk_size
        return 8 if self.device.type == "cpu" else None

    # ----------------------------------------------------------------- functional pieces
    def _mlp(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        """Per-user MLP: ``params[k]`` ``[B, ...]``, ``x`` ``[B, N, width]`` -> ``[B, N]``."""
        names = self.param_names

        def one(p: tuple[Tensor, ...], xx: Tensor) -> Tensor:
            return functional_call(self.recommender, dict(zip(names, p)), (xx,)).squeeze(-1)

        return vmap(one)(tuple(params), x)

    def _losses(self, params: Sequence[Tensor], x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Per-user masked MSE, ``[B]``."""
        return vmap(engine.masked_mse)(self._mlp(params, x), y, mask)

    def _support_grads(self, params: Sequence[Tensor], x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Support loss ``[B]`` and its gradient per user (no second-order graph: both detached)."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(True) for p in params]
            losses = self._losses(leaves, x.detach(), y, mask)
            # Users are independent, so the gradient of the sum is each user's own gradient.
            grads = torch.autograd.grad(losses.sum(), leaves)
        return losses.detach(), list(grads)

    def _query_losses(self, params: Sequence[Tensor], x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Per-user masked MSE ``[B]`` with the backend's MLP (differentiable)."""
        if self.config.backend == "reference":
            return self._losses(params, x, y, mask)
        return engine.masked_mse.per_user(per_user_relu_mlp(params, x)[0].squeeze(-1), y, mask)

    def _predict_adapted(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        if self.config.backend == "reference":
            return self._mlp(params, x)
        return per_user_relu_mlp(params, x)[0].squeeze(-1)

    # ----------------------------------------------------------------- the inner loop
    def adapt(
        self,
        batch: TaskBatch,
        *,
        uniforms: Tensor | None = None,
        x_support: Tensor | None = None,
        x_query: Tensor | None = None,
    ) -> Adaptation:
        """Adapt every user of ``batch`` at once (one inner loop, users masked as they stop).

        ``uniforms`` ``[max_steps, B]``: stochastic stop rule (stop when ``u < p``); ``None``:
        the deterministic rule (``p > stop_threshold``). With ``x_query`` (training), the query
        loss before every update and ``log(1 - p_t)`` are recorded for the REINFORCE term.
        Differentiable with respect to every meta-parameter when grad is enabled; with the native
        kernel the graph keeps its activations in buffers the next ``adapt`` reuses, so take its
        backward first (a stale graph's backward raises autograd's in-place error, never wrong numbers).
        """
        if x_support is None:
            x_support = self.inputs(batch.user_features, batch.support_features)
        if self.config.backend == "fused":
            return self._adapt_fused(batch, uniforms, x_support, x_query)
        return self._adapt_reference(batch, uniforms, x_support, x_query)

    def _stop_decision(self, t: int, logit: Tensor, uniforms: Tensor | None, active: Tensor) -> tuple[Tensor, Tensor]:
        """``(p_t, users still active)`` after step ``t``'s stop decision."""
        c: S2MetaConfig = self.config
        p = torch.sigmoid(logit.detach())
        if t >= c.min_steps:
            stop = uniforms[t] < p if uniforms is not None else p > c.stop_threshold
            active = active & ~stop
        return p, active

    def _adapt_fused(self, batch: TaskBatch, uniforms: Tensor | None, x_support: Tensor, x_query: Tensor | None) -> Adaptation:
        """The inner loop with :func:`metarec.learned_optim.fused_step`: one controller call per step.

        The fast parameters of all users live in one row buffer (:class:`SegmentLayout`), the
        support gradients come from :func:`~metarec.nn.per_user_relu_mlp_mse_grads` (written
        into a buffer of the same layout), statistics stay on the device until the loop ends.
        """
        c: S2MetaConfig = self.config
        b = len(batch)
        device, dtype = x_support.device, x_support.dtype
        base = list(self.recommender.parameters())
        shapes = [p.shape for p in base]
        layout = SegmentLayout(tuple(p.numel() for p in base), b)
        weights = self.update_controller.stacked()
        theta = layout.flatten([p.unsqueeze(0).expand(b, *p.shape) for p in base])
        h, cell = layout.per_row(weights.h0), layout.per_row(weights.c0)
        row_user, seg = layout.row_user(device), layout.row_tensor(device)
        compiled = self._compiled_fused()
        native = c.native_kernels
        grad_buf = torch.empty(layout.rows, dtype=dtype, device=device)
        grad_views = layout.split(grad_buf, shapes)
        # one forward pass of the MLP per step serves the support gradient and the query loss
        if x_query is not None:
            x_all = torch.cat([x_support.detach(), x_query.detach()], dim=1)
            y_all = torch.cat([batch.support_ratings, batch.query_ratings], dim=1)
            zeros_s, zeros_q = torch.zeros_like(batch.support_mask), torch.zeros_like(batch.query_mask)
            mask_s = torch.cat([batch.support_mask, zeros_q], dim=1)
            mask_q = torch.cat([zeros_s, batch.query_mask], dim=1)
        else:
            x_all, y_all, mask_s, mask_q = x_support.detach(), batch.support_ratings, batch.support_mask, None
        # squared gradient norms per (tensor, user): the rows of each are one contiguous segment
        segment_lengths = torch.tensor([n for n in layout.numels for _ in range(b)], device=device)
        rows_per_user = float(sum(layout.numels))
        exit_early = c.inner_loop_exit == "break" or (c.inner_loop_exit == "auto" and device.type == "cpu")
        smooth, clamp = c.smooth_p, c.grad_clamp
        active = torch.ones(b, dtype=torch.bool, device=device)
        steps = torch.zeros(b, dtype=torch.long, device=device)
        stop_state = None
        # the native step's activations go to reused buffers (only when it runs and a graph is built)
        reuse = torch.is_grad_enabled() and native is not False and native_available(theta, weights)
        probs, actives, log_keep, q_losses, lr_sums, fg_sums, counts = [], [], [], [], [], [], []
        for t in range(c.max_steps):
            detached = layout.split(theta.detach(), shapes)
            out = per_user_relu_mlp_mse_grads(detached, x_all, y_all, mask_s, out=grad_views, eval_mask=mask_q)
            loss_s = out[0]
            if c.flexible_step:
                norms = torch.segment_reduce(grad_buf.square(), "sum", lengths=segment_lengths).sqrt()
                logit, stop_state = self.stop_controller(None, loss_s, stop_state, norms=norms.view(-1, b).t())
                p, active = self._stop_decision(t, logit, uniforms, active)
                probs.append(p)
                log_keep.append(F.logsigmoid(-logit))  # log(1 - p_t), numerically stable
            actives.append(active)
            if x_query is not None:
                q_losses.append(out[2])
            if exit_early and not bool(active.any()):  # free on the CPU
                break
            bias = gate_bias(weights, preprocess(loss_s, smooth)[0])  # the loss input, once per user
            ws = self._workspace.get(t, layout.rows, c.lstm_hidden, dtype, device) if reuse else None
            theta, h, cell, lr, fg = fused_step(
                theta, h, cell, grad_buf, active, bias, weights, layout, seg,
                row_user=row_user, clamp=clamp, p=smooth, compiled=compiled, native=native, workspace=ws,
            )
            steps = steps + active.long()
            with torch.no_grad():
                sums = torch.stack([lr, fg]) @ active[row_user].to(dtype)  # [2]: over the rows that updated
                lr_sums.append(sums[0])
                fg_sums.append(sums[1])
                counts.append(active.to(dtype).sum() * rows_per_user)
        mean_lr: list[float] = []
        mean_forget: list[float] = []
        if counts:
            n = torch.stack(counts)
            ran = n > 0  # masked loops: steps after the last user stopped update nothing
            mean_lr = (torch.stack(lr_sums) / n.clamp_min(1))[ran].tolist()
            if c.forget_gate:
                mean_forget = (torch.stack(fg_sums) / n.clamp_min(1))[ran].tolist()
        return Adaptation(
            params=dict(zip(self.param_names, layout.split(theta, shapes))),
            steps=steps,
            stop_probs=torch.stack(probs) if probs else torch.empty(0, b, device=device),
            active=torch.stack(actives),
            mean_lr=mean_lr,
            mean_forget=mean_forget,
            log_keep=torch.stack(log_keep) if log_keep and x_query is not None else None,
            query_losses=torch.stack(q_losses) if q_losses else None,
        )

    def _adapt_reference(self, batch: TaskBatch, uniforms: Tensor | None, x_support: Tensor, x_query: Tensor | None) -> Adaptation:
        """The original inner loop: one LSTM call per adapted tensor, autograd inner gradients."""
        c: S2MetaConfig = self.config
        b = len(batch)
        device = x_support.device
        fast = [p.unsqueeze(0).expand(b, *p.shape) for p in self.recommender.parameters()]
        active = torch.ones(b, dtype=torch.bool, device=device)
        steps = torch.zeros(b, dtype=torch.long, device=device)
        upd_state, stop_state = None, None
        probs, actives, lr_means, fg_means, log_keep, q_losses = [], [], [], [], [], []
        for t in range(c.max_steps):
            loss_s, grads = self._support_grads(fast, x_support, batch.support_ratings, batch.support_mask)
            if c.flexible_step:
                logit, stop_state = self.stop_controller(grads, loss_s, stop_state)
                p = torch.sigmoid(logit.detach())
                probs.append(p)
                if t >= c.min_steps:
                    stop = uniforms[t] < p if uniforms is not None else p > c.stop_threshold
                    active = active & ~stop
                log_keep.append(F.logsigmoid(-logit))  # log(1 - p_t), numerically stable
            actives.append(active)
            if x_query is not None:
                with torch.no_grad():
                    q_losses.append(self._losses(fast, x_query, batch.query_ratings, batch.query_mask))
            if not bool(active.any()):
                break
            fast, upd_state, lrs, fgs = self.update_controller(fast, grads, loss_s, upd_state, active)
            steps = steps + active.long()
            with torch.no_grad():
                w = active.to(x_support.dtype)
                per_user = sum(lr[0].numel() for lr in lrs) * float(w.sum())
                lr_means.append(float(sum((lr.flatten(1).sum(1) * w).sum() for lr in lrs)) / per_user)
                if fgs[0] is not None:
                    fg_means.append(float(sum((fg.flatten(1).sum(1) * w).sum() for fg in fgs)) / per_user)
        return Adaptation(
            params=dict(zip(self.param_names, fast)),
            steps=steps,
            stop_probs=torch.stack(probs) if probs else torch.empty(0, b, device=device),
            active=torch.stack(actives),
            mean_lr=lr_means,
            mean_forget=fg_means,
            log_keep=torch.stack(log_keep) if log_keep and x_query is not None else None,
            query_losses=torch.stack(q_losses) if q_losses else None,
        )

    def meta_objective(self, batch: TaskBatch, uniforms: Tensor | None) -> tuple[Tensor, Tensor, Adaptation]:
        """``(objective, final query loss [B], adaptation)``, the objective averaged over users.

        Per user: ``L^q_T + sum_t -log(1 - p_t) * stopgrad(L^q_t - L^q_T - (T - t) * penalty)``
        over the steps ``t < T`` that continued (the reference code's REINFORCE, no baseline).
        """
        c: S2MetaConfig = self.config
        x_s = self.inputs(batch.user_features, batch.support_features)
        x_q = self.inputs(batch.user_features, batch.query_features)
        ad = self.adapt(batch, uniforms=uniforms, x_support=x_s, x_query=x_q)
        final = self._query_losses(list(ad.params.values()), x_q, batch.query_ratings, batch.query_mask)  # [B]
        per_user = final
        if ad.log_keep is not None:
            t_idx = torch.arange(ad.active.shape[0], device=final.device).unsqueeze(1)
            to_go = (ad.steps.unsqueeze(0) - t_idx).to(final.dtype)  # T_b - t
            advantage = (ad.query_losses - final.detach().unsqueeze(0) - to_go * c.step_penalty).detach()
            continued = ad.active.to(final.dtype)  # steps t < T_b: the user went on after step t's decision
            per_user = per_user + (-ad.log_keep * advantage * continued).sum(0)
        return per_user.mean(), final, ad

    # ----------------------------------------------------------------- training
    def train_uniforms(self, n: int) -> Tensor:
        """The stop rule's draws for the next meta-step, ``[max_steps, n]`` (from seed and step)."""
        gen = torch_generator(self.seed, "train-stop", self.meta_steps_done)
        return torch.rand(self.config.max_steps, n, generator=gen).to(self.device)

    def meta_step(self, batch: TaskBatch) -> float:
        """One Adam step on the batch's mean objective (gradients accumulated over chunks)."""
        c: S2MetaConfig = self.config
        n = len(batch)
        uniforms = self.train_uniforms(n)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for sl in _chunks(n, self.chunk_size):
            objective, final, ad = self.meta_objective(_take(batch, sl), uniforms[:, sl])
            (objective * (final.shape[0] / n)).backward()
            total += float(final.detach().sum())
            self._accumulate(ad)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if c.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, c.clip_value)
        self.optimizer.step()
        self.meta_steps_done += 1
        return total / n

    def _accumulate(self, ad: Adaptation) -> None:
        """Training statistics of one chunk, kept on the device until the epoch ends."""
        s = self._stats
        s["users"] = s.get("users", 0) + ad.steps.shape[0]
        s["chunks"] = s.get("chunks", 0) + 1
        s["histogram"] = s.get("histogram", 0) + self._histogram(ad.steps)
        if ad.mean_lr:
            s["lr"] = s.get("lr", 0.0) + sum(ad.mean_lr) / len(ad.mean_lr)
        if ad.mean_forget:
            s["forget"] = s.get("forget", 0.0) + sum(ad.mean_forget) / len(ad.mean_forget)
        if ad.stop_probs.numel():
            s["stop_p"] = s.get("stop_p", 0.0) + ad.stop_probs[0].mean().detach()

    def _histogram(self, steps: Tensor) -> Tensor:
        """Users per number of inner updates ``0..max_steps``, ``long [max_steps + 1]``."""
        return torch.bincount(steps.detach(), minlength=self.config.max_steps + 1)

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Epoch logs: mean inner steps per user, mean inner lr / forget gate, first-step stop p.

        The epoch's distribution of inner steps per user is kept for :meth:`run_info`.
        """
        s, self._stats = self._stats, {}
        self._workspace.clear()  # the activation buffers are not held between epochs (nor during evaluation)
        if not s:
            return {}
        hist = [int(v) for v in s["histogram"].tolist()]
        self.step_histograms["train_last_epoch"] = hist
        total = self.step_histograms.get("train_all_epochs") or [0] * len(hist)
        self.step_histograms["train_all_epochs"] = [a + b for a, b in zip(total, hist)]
        logs = {"inner_steps": _histogram_mean(hist)}
        for key in ("lr", "forget", "stop_p"):
            if key in s:
                logs[f"mean_{key}"] = float(s[key]) / s["chunks"]
        return logs

    def run_info(self) -> dict[str, Any]:
        """Inner steps per user (mean and distribution) in training and in the last evaluation."""
        info: dict[str, Any] = {
            "histogram_index": f"number of inner updates per user, 0..{self.config.max_steps}",
            "eval_stop_rule": self.config.eval_stop_rule,
            "backend": self.config.backend,
        }
        for key, hist in self.step_histograms.items():
            info[key] = {"users": sum(hist), "mean": _histogram_mean(hist), "histogram": hist}
        return {"inner_steps": info}

    # ----------------------------------------------------------------- evaluation
    def eval_uniforms(self, batch: TaskBatch) -> Tensor:
        """Draws of the stochastic evaluation rule: per user, from the run seed and the user."""
        rows = [
            torch.rand(self.config.max_steps, generator=torch_generator(self.eval_seed, "eval-stop", int(u)))
            for u in batch.user_index.tolist()
        ]
        return torch.stack(rows, dim=1).to(self.device)

    def predict(self, tasks: Any, batch_size: int | None = None) -> Tensor:
        """As every learner; also records the distribution of inner steps of these users (:meth:`run_info`)."""
        self._eval_histogram = torch.zeros(self.config.max_steps + 1, dtype=torch.long, device=self.device)
        try:
            return super().predict(tasks, batch_size)
        finally:
            self.step_histograms["eval"] = [int(v) for v in self._eval_histogram.tolist()]
            self._eval_histogram = None

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        c: S2MetaConfig = self.config
        uniforms = self.eval_uniforms(batch) if c.eval_stop_rule == "sample" else None
        out = []
        with torch.no_grad():
            for sl in _chunks(len(batch), self.chunk_size):
                sub = _take(batch, sl)
                ad = self.adapt(sub, uniforms=None if uniforms is None else uniforms[:, sl])
                if self._eval_histogram is not None:
                    self._eval_histogram += self._histogram(ad.steps)
                x_q = self.inputs(sub.user_features, sub.query_features)
                out.append(self._predict_adapted(list(ad.params.values()), x_q))
        return torch.cat(out)

    # ----------------------------------------------------------------- state
    @property
    def eval_seed(self) -> int:
        """Seed of the seeded stochastic evaluation stop rule (the run seed unless loaded)."""
        return int(self.__dict__.get("_eval_seed", self.seed))

    @eval_seed.setter
    def eval_seed(self, value: int) -> None:
        self._eval_seed = int(value)

    def extra_state(self) -> dict[str, Any]:
        train = {k: v for k, v in self.step_histograms.items() if k.startswith("train")}
        # the evaluation stop draws belong to the trained model: a loaded model predicts the same
        return {**super().extra_state(), "meta_steps_done": self.meta_steps_done, "step_histograms": train,
                "eval_seed": self.eval_seed}

    def load_extra_state(self, extra: Mapping[str, Any]) -> None:
        super().load_extra_state(extra)
        self.meta_steps_done = int(extra.get("meta_steps_done", 0))
        self.eval_seed = int(extra.get("eval_seed", self.seed))
        hists = extra.get("step_histograms", {}) or {}
        self.step_histograms = {str(k): [int(v) for v in h] for k, h in hists.items()}
