"""MetaHIN (Lu et al., KDD 2020): meta-path semantic contexts and co-adaptation, for cold-start users.

A user's **semantic context** along a meta-path p is the mean of the (embedded) items the path
reaches from the user's support items; ``e_p = LeakyReLU(W_phi . mean + b_phi)``. The rating
predictor ``theta`` reads ``[item embedding; e_p; user-profile embedding]`` -> MLP -> rating.
Per user and per meta-path (all users and paths of a batch at once):

1. semantic-wise adaptation: ``phi_p = phi - mp_lr * grad_phi MSE_support(theta, e_p(phi))``;
2. semantic prior: ``theta_p = theta * sigmoid(T(e_p(phi_p)))``, one linear ``T`` per tensor of theta;
3. task-wise adaptation: ``theta'_p = theta_p - local_lr * grad MSE_support(theta_p, e_p)``;
4. the paths are mixed with ``a = softmax_p(-MSE_support(theta'_p))``:
   ``theta' = sum_p a_p theta'_p``, ``e = sum_p a_p e_p``; the query is predicted with both.

Meta-training differentiates through both inner steps (second order; ``first_order`` drops it)
and updates everything (embeddings, phi, theta, T) with Adam on the query MSE.

**Backends** (``backend``, the same numbers): ``reference`` runs the steps above through
:mod:`metarec.engine` (``torch.func`` over a per-user forward function, the P paths of B users as
P * B episodes). ``fused`` (default) writes the same math as batched matrix products
(:meth:`MetaHIN.co_adapt_fused`): hand-written inner gradients
(:func:`metarec.nn.per_user_relu_mlp_backward`, differentiable, so the meta-gradient is still
second order); the semantic step in closed form (its gradient is rank one); the gated first
layer -- the one ``[P B, hidden, input]`` tensor -- formed once in :class:`GatedLayer`, and its
task-wise updates ``D^T X`` kept low-rank (applied through support Gram matrices instead of
being materialised); and the contexts from design operators cached with the training graph
(:meth:`TrainingGraph.design_operators`), so no step embeds the whole graph. The tests check
that the two agree in float64 on predictions, path weights, losses and every meta-gradient
over three meta-steps; the docs page has the measured speed.

**Meta-paths are declared from the schema's item features** (``meta_paths``): ``um`` (the
user's support items themselves), ``umum`` (items co-rated by the *training* users who rated the
support item) and ``um-<feature>-m`` for any categorical or multi-valued item feature -- on
ML-1M ``um-director-m``, ``um-genre-m``; on Yelp ``um-category-m``, ``um-city-m`` -- the items
sharing a value of that feature with the support item (the item itself included). Neighbour pools
come from the **training graph only**: the items and ratings of the tasks given to
:meth:`MetaHIN.meta_fit`, stored with the model (so a checkpoint predicts on its own). A test
user's context thus reads their own support set and global training data, never another test
user's interactions and never the query items.

Deviations from the paper / official code (rootlu/MetaHIN), and why:

* **Data protocol**: MAMO's 15 support / 5 query ratings (earliest / latest), vs MetaHIN's
  MeLU-style tasks (query = 10 random ratings, support = the rest; the official loader also drops
  every task with more than 5 support ratings -- not reproduced).
* **No test-label leakage**: the official code weights the meta-paths by each path's *query* loss,
  at test too; here by the support loss after adaptation (``path_weights="support"``), at training
  and test alike, or uniformly (``"uniform"``).
* **No transductive contexts**: the official test contexts pool the support sets of *all* users
  of the same test state (``umum``) and add each query item to the query-side context; here
  pools are training data only and the support-side context is used for the query.
* **Neighbour means in closed form**: a path's per-item context is the mean of the item and its
  neighbours (a multi-valued feature counts a neighbour once per shared value), computed from
  per-value sums of the embedded training items rather than sampled neighbour lists; the
  ``umum`` context is the mean of the item and the average training co-rater's mean item. The
  official code, like this one, then averages all of a user's contexts into one vector.
* **User profile**: fed to the predictor (``use_user_profile``, the paper's task input); the official
  code computes it but does not use it (``False`` reproduces that).
* **Features**: the schema's (ML-1M in MAMO's protocol: rate, year, genre, director; no actors,
  so the paper's ``umam`` path cannot be built); embeddings 32 per feature as in the code.

Presets: ``paper`` = ``code/Config.py`` for ML (context 32, hidden 64-64, 1 semantic + 1 task
step at 5e-3, Adam 5e-4, 32 users per batch, 100 epochs, second order); the config defaults are
the same values, meta-paths ``um, umum, um-director-m, um-genre-m`` (the code's ML paths minus the
actor path) when the schema has those features, else every categorical item feature (see
:func:`default_meta_paths`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from metarec import engine
from metarec.learner import EpisodicConfig, EpisodicLearner
from metarec.nn import (FeatureEmbedder, broadcast_user, masked_mean, masked_mse_output_grad, mlp, per_user_relu_mlp,
                        per_user_relu_mlp_backward)
from metarec.schema import FeatureSchema
from metarec.tasks import TaskBatch, TaskSet


def default_meta_paths(schema: FeatureSchema, min_values: int = 10) -> tuple[str, ...]:
    """``um``, ``umum`` and ``um-<f>-m`` for the item features a path can use.

    ML-1M (``director``, ``genre``): the official code's ML paths minus the actor one. Otherwise
    every categorical or multi-valued item feature with at least ``min_values`` values (a 6-value
    feature such as an age rating links most of the catalogue, which says nothing).
    """
    names = {f.name: f for f in schema.item_features}
    if {"director", "genre"} <= set(names):
        return ("um", "umum", "um-director-m", "um-genre-m")
    feats = [
        f.name for f in schema.item_features
        if f.kind in ("categorical", "multi_categorical") and f.cardinality >= min_values
    ]
    return ("um", "umum", *[f"um-{n}-m" for n in feats])


def path_feature(path: str) -> str | None:
    """The item feature of ``um-<feature>-m`` (None for ``um`` / ``umum``)."""
    if path in ("um", "umum"):
        return None
    if path.startswith("um-") and path.endswith("-m") and len(path) > 5:
        return path[3:-2]
    raise ValueError(f"meta-path {path!r}: use 'um', 'umum' or 'um-<item feature>-m'")


@dataclass
class MetaHINConfig(EpisodicConfig):
    """MetaHIN's settings; the defaults are ``code/Config.py`` for ML (the ``paper`` preset)."""

    embedding_dim: int = 32
    multi_pooling: Literal["mean", "sum", "sigmoid"] = "mean"
    #: Meta-paths ('um', 'umum', 'um-<item feature>-m'); None = :func:`default_meta_paths`.
    meta_paths: tuple[str, ...] | None = None
    #: Size of a semantic context e_p (hard-coded 32 in the official code).
    context_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    use_user_profile: bool = True
    #: Semantic-wise (phi) and task-wise (theta) inner steps and rates.
    mp_lr: float = 5e-3
    mp_steps: int = 1
    local_lr: float = 5e-3
    local_steps: int = 1
    first_order: bool = False
    #: How the adapted meta-paths are mixed: softmax of minus their support loss, or uniformly.
    path_weights: Literal["support", "uniform"] = "support"
    #: ``fused``: the computation below in batched matrix products with hand-written inner
    #: gradients and a low-rank first layer (see the module docstring); ``reference``: the same
    #: model through :mod:`metarec.engine` (vmapped ``functional_call`` and ``torch.func.grad``).
    #: The tests prove they agree; ``fused`` is the faster (measured on the docs page).
    backend: Literal["fused", "reference"] = "fused"
    meta_lr: float = 5e-4
    weight_decay: float = 0.0
    grad_clip: float | None = None
    epochs: int = 100
    drop_last: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.meta_paths is not None:
            self.meta_paths = tuple(self.meta_paths)
            if not self.meta_paths:
                raise ValueError("meta_paths is empty: give at least one path, or None for the default")
            for p in self.meta_paths:
                path_feature(p)
            if len(set(self.meta_paths)) != len(self.meta_paths):
                raise ValueError(f"meta_paths lists a path twice: {list(self.meta_paths)}")
        if self.embedding_dim < 1 or self.context_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError("layer sizes must be >= 1")
        if self.mp_steps < 0 or self.local_steps < 0 or self.mp_lr < 0 or self.local_lr < 0 or self.meta_lr <= 0:
            raise ValueError("inner steps and rates must be >= 0 and meta_lr > 0")


class TrainingGraph(nn.Module):
    """The training users' user-item graph and the features of its items, as buffers.

    ``items``: item-table rows of the P items in training tasks; ``feat_<name>``: their feature
    columns; ``edge_user`` / ``edge_item``: one (training task, item position) pair per training
    rating. Empty until :meth:`fit`; loading a checkpoint resizes the buffers.
    """

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.feature_names = [f.name for f in schema.item_features]
        self.register_buffer("items", torch.zeros(0, dtype=torch.long))
        self.register_buffer("edge_user", torch.zeros(0, dtype=torch.long))
        self.register_buffer("edge_item", torch.zeros(0, dtype=torch.long))
        for f in schema.item_features:
            dtype = torch.float32 if f.kind == "numeric" else torch.long
            shape = (0, f.max_values) if f.kind == "multi_categorical" else (0,)
            self.register_buffer(f"feat_{f.name}", torch.zeros(shape, dtype=dtype))

    @property
    def n_users(self) -> int:
        """Training users (tasks) in the graph."""
        return int(self.edge_user.max()) + 1 if len(self.edge_user) else 0

    def fit(self, train: TaskSet) -> None:
        """Build the graph from every (support and query) rating of the training tasks."""
        rows = torch.arange(len(train)).unsqueeze(1)
        users = torch.cat([rows.expand_as(train.support_items)[train.support_mask],
                           rows.expand_as(train.query_items)[train.query_mask]])
        items = torch.cat([train.support_items[train.support_mask], train.query_items[train.query_mask]])
        unique, inverse = torch.unique(items, return_inverse=True)
        device = self.items.device
        self.items = unique.to(device)
        self.edge_user, self.edge_item = users.to(device), inverse.to(device)
        for name, col in train.items.gather(unique).items():
            setattr(self, f"feat_{name}", col.to(device))
        self._ops = self._design_ops = None

    def operators(self, cardinality: Mapping[str, int]) -> dict[str, Any]:
        """Sparse averaging/summing matrices over the graph (built once per graph, then cached).

        ``user_mean [U, P]``: each training user's mean over their items; ``corater_mean [P, U]``:
        each item's mean over its training raters; per feature ``f`` in ``cardinality``:
        ``sum_<f> [V, P]`` (training items per value, summed) and ``count_<f> [V]``.
        """
        key = tuple(sorted(cardinality.items()))
        cached = getattr(self, "_ops", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        P, U, dev = len(self.items), self.n_users, self.items.device
        ones = torch.ones(len(self.edge_user), device=dev)
        n_items_of = torch.zeros(U, device=dev).index_add(0, self.edge_user, ones)
        n_raters_of = torch.zeros(P, device=dev).index_add(0, self.edge_item, ones)
        ops: dict[str, Any] = {
            "user_mean": torch.sparse_coo_tensor(
                torch.stack([self.edge_user, self.edge_item]), ones / n_items_of[self.edge_user], (U, P), check_invariants=True
            ).coalesce(),
            "corater_mean": torch.sparse_coo_tensor(
                torch.stack([self.edge_item, self.edge_user]), ones / n_raters_of[self.edge_item], (P, U), check_invariants=True
            ).coalesce(),
            "in_graph": n_raters_of > 0,
        }
        for name, card in cardinality.items():
            values = getattr(self, f"feat_{name}")
            values = values.unsqueeze(1) if values.dim() == 1 else values
            valid = values >= 0
            item_of = torch.arange(P, device=dev).unsqueeze(1).expand_as(values)[valid]
            vals = values[valid]
            ops[f"sum_{name}"] = torch.sparse_coo_tensor(
                torch.stack([vals, item_of]), torch.ones(len(vals), device=dev), (card, P), check_invariants=True
            ).coalesce()
            ops[f"count_{name}"] = torch.zeros(card, device=dev).index_add(0, vals, torch.ones(len(vals), device=dev))
        self._ops = (key, ops)
        return ops

    def design_operators(self, embedder: FeatureEmbedder, cardinality: Mapping[str, int]) -> dict[str, Any]:
        """The meta-path neighbour means as fixed operators on design rows (cached like :meth:`operators`).

        With a linear item embedder (``pool = D @ table``, ``D`` the graph items' design rows, see
        :meth:`FeatureEmbedder.design <metarec.nn.FeatureEmbedder.design>`), every neighbour mean is
        a fixed combination of design rows: ``corater_design [P, V] = corater_mean @ user_mean @ D``
        (the ``umum`` mean of each graph item) and, per feature ``f``, ``value_design_<f>`` =
        ``(sum_<f> @ D)`` transposed, sparse (CSR) ``[V, V_f]`` (the summed design rows of the training
        items of each value). They depend on the training data only, not on the parameters.
        """
        key = (tuple(sorted(cardinality.items())), tuple(embedder.design_sizes), embedder.table(0).dtype)
        cached = getattr(self, "_design_ops", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        ops = self.operators(cardinality)
        with torch.no_grad():
            design = embedder.design(self.features())  # [P, V]
            out: dict[str, Any] = {
                "corater_design": torch.sparse.mm(ops["corater_mean"], torch.sparse.mm(ops["user_mean"], design)),
            }
            for name in cardinality:
                with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR products are 20x COO's here
                    warnings.simplefilter("ignore", UserWarning)
                    out[f"value_design_{name}"] = torch.sparse.mm(ops[f"sum_{name}"], design).t().to_sparse_csr()
        self._design_ops = (key, out)
        return out

    def features(self) -> dict[str, Tensor]:
        """The graph items' feature columns, as a feature dict."""
        return {n: getattr(self, f"feat_{n}") for n in self.feature_names}

    def positions(self, item_rows: Tensor) -> Tensor:
        """Graph position of each item-table row in ``item_rows`` (-1 for items not in the graph)."""
        if not len(self.items):
            return torch.full_like(item_rows, -1)
        size = max(int(self.items.max()), int(item_rows.max()) if item_rows.numel() else 0) + 1
        lookup = torch.full((size,), -1, dtype=torch.long, device=item_rows.device)
        lookup[self.items.to(item_rows.device)] = torch.arange(len(self.items), device=item_rows.device)
        return lookup[item_rows.clamp_min(0)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        self._ops = self._design_ops = None
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _repeat(batch: TaskBatch, times: int) -> TaskBatch:
    """``batch`` stacked ``times`` times along the user axis (copy-major)."""
    idx = torch.arange(len(batch), device=batch.device).repeat(times)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        out[f.name] = {k: t[idx] for k, t in v.items()} if isinstance(v, dict) else v[idx]
    return TaskBatch(**out)


class GatedLayer(torch.autograd.Function):
    """``x @ (w * sigmoid(e @ t_w.T + t_b).view(E, *w.shape))^T``, ``[E, R, out]``, with a hand-written backward.

    The semantic prior of the first layer: ``E`` episodes' gated copies ``[E, out, in]`` of one
    weight ``w`` applied to ``R`` inputs each (``x [E, R, in]``). The gated copies are the
    largest tensors of a MetaHIN step; this backward makes a handful of passes over them, in
    place, where autograd's chain of mul / sigmoid / bmm backwards allocates one per op.
    ``torch.autograd.gradcheck`` checks it in the tests.
    """

    @staticmethod
    def forward(ctx, w: Tensor, t_w: Tensor, t_b: Tensor, e: Tensor, x: Tensor) -> Tensor:  # noqa: ANN001
        """The layer's outputs; saves the gates and gated weights for :meth:`backward`."""
        gate = torch.mm(e, t_w.t()).add_(t_b).sigmoid_().view(len(e), *w.shape)
        gated = gate * w
        ctx.save_for_backward(w, t_w, e, x, gate, gated)
        return torch.bmm(gated, x.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, d_out: Tensor):  # noqa: ANN001, ANN205
        """Gradients for ``(w, t_w, t_b, e, x)``, in place on one ``[E, out, in]`` buffer."""
        w, t_w, e, x, gate, gated = ctx.saved_tensors
        d_x = torch.bmm(d_out, gated) if ctx.needs_input_grad[4] else None
        d = torch.bmm(d_out.transpose(1, 2), x).mul_(gate)  # d gated * gate
        d_w = d.sum(0)
        d.addcmul_(d, gate, value=-1.0).mul_(w)  # d gated * w * gate (1 - gate) = d pre-sigmoid
        d = d.view(len(e), -1)
        return d_w, d.t() @ e, d.sum(0), d @ t_w, d_x


class MetaHINNet(nn.Module):
    """Item/user embedders, the semantic layer phi, the predictor theta and the prior transforms T."""

    def __init__(self, schema: FeatureSchema, c: MetaHINConfig) -> None:
        super().__init__()
        self.item_embedder = FeatureEmbedder(schema.item_features, c.embedding_dim, multi_pooling=c.multi_pooling)
        self.user_embedder = (
            FeatureEmbedder(schema.user_features, c.embedding_dim, multi_pooling=c.multi_pooling)
            if c.use_user_profile else None
        )
        self.semantic = nn.Linear(self.item_embedder.out_dim, c.context_dim)
        width = self.item_embedder.out_dim + c.context_dim + (self.user_embedder.out_dim if self.user_embedder else 0)
        self.head = mlp([width, *c.hidden, 1])
        self.prior = nn.ModuleDict({
            n.replace(".", "_"): nn.Linear(c.context_dim, p.numel()) for n, p in self.head.named_parameters()
        })

    def context(self, raw: Tensor) -> Tensor:
        """``e = LeakyReLU(phi(raw))``: a semantic context from a mean item embedding."""
        return nn.functional.leaky_relu(self.semantic(raw))

    def forward(self, user_x: Mapping[str, Tensor], items_x: Mapping[str, Tensor]) -> Tensor:
        """Ratings ``[..., N]``; the user's context comes in ``user_x`` as ``ctx_e`` (ready) or
        ``ctx_raw`` (a mean item embedding, mapped through phi here -- what phi adapts through)."""
        items = self.item_embedder(items_x)
        e = user_x["ctx_e"] if "ctx_e" in user_x else self.context(user_x["ctx_raw"])
        parts = [items, broadcast_user(e, items)]
        if self.user_embedder is not None:
            parts.append(broadcast_user(self.user_embedder(user_x), items))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)


class MetaHIN(EpisodicLearner):
    """MetaHIN: meta-path contexts from the training graph, semantic- then task-wise adaptation."""

    name: ClassVar[str] = "metahin"
    description: ClassVar[str] = "MetaHIN (Lu et al. 2020): meta-path contexts, semantic- and task-wise co-adaptation"
    Config: ClassVar[type] = MetaHINConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "embedding_dim": 32, "context_dim": 32, "hidden": (64, 64), "mp_lr": 5e-3, "mp_steps": 1,
            "local_lr": 5e-3, "local_steps": 1, "meta_lr": 5e-4, "batch_size": 32, "epochs": 100,
            "first_order": False, "drop_last": True,
        },
    }
    search_space: ClassVar[dict[str, dict]] = {
        "epochs": {"type": "int", "low": 5, "high": 100, "step": 5},
        "meta_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "mp_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "local_lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "local_steps": {"type": "int", "low": 1, "high": 3},
        "hidden": {"type": "categorical", "choices": [[64, 64], [128, 64]]},
        "context_dim": {"type": "int", "low": 8, "high": 64},
    }

    def build(self) -> None:
        c = self.config
        self.paths = tuple(c.meta_paths) if c.meta_paths is not None else default_meta_paths(self.schema)
        known = {f.name: f for f in self.schema.item_features}
        for p in self.paths:
            f = path_feature(p)
            if f is not None and (f not in known or known[f].kind == "numeric"):
                usable = ", ".join(n for n, x in known.items() if x.kind != "numeric") or "(none)"
                raise ValueError(
                    f"metahin: meta-path {p!r} needs a categorical item feature {f!r}; this dataset's are: {usable}"
                )
        self.model = MetaHINNet(self.schema, c).to(self.device)
        self.graph = TrainingGraph(self.schema).to(self.device)
        self.forward = engine.module_forward(self.model)
        self.phi_names = ["semantic.weight", "semantic.bias"]
        self.theta_names = [f"head.{n}" for n, _ in self.model.head.named_parameters()]
        self.optimizer = engine.make_optimizer("adam", self.model.parameters(), c.meta_lr, c.weight_decay)

    def on_fit_start(self, train: TaskSet) -> None:
        self.graph.fit(train)
        if self.config.backend == "fused" and self._design_contexts():
            self.graph.design_operators(self.model.item_embedder, self._path_cardinality())  # built once, here

    # ------------------------------------------------------------------ semantic contexts
    def item_contexts(self, items_x: Mapping[str, Tensor], item_rows: Tensor) -> dict[str, Tensor]:
        """Per meta-path, the context of each item ``[..., d_item]``: the mean embedding of the
        item and its neighbours along the path in the training graph."""
        m, g = self.model, self.graph
        own = m.item_embedder(items_x)
        out: dict[str, Tensor] = {}
        if not len(g.items):  # no training graph yet: every path sees the item alone
            return {path: own for path in self.paths}
        feats = self._path_cardinality()
        ops = g.operators(feats)
        pool = m.item_embedder(g.features())  # [P, d]
        for path in self.paths:
            feat = path_feature(path)
            if path == "um":
                out[path] = own
            elif path == "umum":
                co = torch.sparse.mm(ops["corater_mean"], torch.sparse.mm(ops["user_mean"], pool))  # [P, d]
                pos = g.positions(item_rows)
                in_graph = (pos >= 0).unsqueeze(-1).to(own.dtype)
                out[path] = own + in_graph * (co[pos.clamp_min(0)] - own) / 2.0
            else:
                sums, counts = torch.sparse.mm(ops[f"sum_{feat}"], pool), ops[f"count_{feat}"]  # [V, d], [V]
                mine = items_x[feat]
                mine = mine.unsqueeze(-1) if mine.dim() == item_rows.dim() else mine
                ok = (mine >= 0).to(own.dtype)
                idx = mine.clamp_min(0)
                num = own + (sums[idx] * ok.unsqueeze(-1)).sum(-2)
                den = 1.0 + (counts[idx] * ok).sum(-1, keepdim=True)
                out[path] = num / den
        return out

    def user_contexts(self, batch: TaskBatch) -> dict[str, Tensor]:
        """Per meta-path, the mean item context over each user's support set, ``[B, d_item]``."""
        per_item = self.item_contexts(batch.support_features, batch.support_items)
        return {p: masked_mean(v, batch.support_mask) for p, v in per_item.items()}

    # ------------------------------------------------------------------ co-adaptation
    def _with_user(self, batch: TaskBatch, **extra: Tensor) -> TaskBatch:
        return dataclasses.replace(batch, user_features={**batch.user_features, **extra})

    def co_adapt(
        self, batch: TaskBatch, *, first_order: bool, detach: bool = False
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Adapt every user along every meta-path and mix: ``(theta' {name: [B, ...]}, e [B, c], a [B, P])``.

        The P paths of B users run as one batch of P * B (path-major) episodes, so each inner
        loop is one vmapped call whatever the number of paths.
        """
        c = self.config
        params = dict(self.model.named_parameters())
        if detach:  # evaluation: no outer graph at all
            params = {k: v.detach() for k, v in params.items()}
        B, P = len(batch), len(self.paths)
        with record_function("metahin.contexts"):
            raw = torch.cat(list(self.user_contexts(batch).values()), dim=0)  # [P * B, d_item]
            rep = _repeat(batch, P)
        with record_function("metahin.semantic_step"):
            phi = engine.adapt_batch(
                self.forward, params, self.phi_names, self._with_user(rep, ctx_raw=raw),
                lr=c.mp_lr, steps=c.mp_steps, first_order=first_order,
            )
            e = nn.functional.leaky_relu(torch.einsum("boi,bi->bo", phi["semantic.weight"], raw) + phi["semantic.bias"])
        with record_function("metahin.prior"):
            prior = {
                n: params[n] * torch.sigmoid(self.model.prior[n[len("head."):].replace(".", "_")](e)).view(P * B, *params[n].shape)
                for n in self.theta_names
            }
        with record_function("metahin.task_steps"):
            with_e = self._with_user(rep, ctx_e=e)
            theta = engine.adapt_batch(
                self.forward, params, self.theta_names, with_e, lr=c.local_lr, steps=c.local_steps,
                first_order=first_order, user_params=prior,
            )
        with record_function("metahin.path_weights"):
            fit = engine.predict_batch(self.forward, params, with_e, user_params=theta, items="support")
            loss = engine.masked_mse.per_user(fit, rep.support_ratings, rep.support_mask).view(P, B).t().detach()
            # the official code detaches its path weights too
            weights = torch.softmax(-loss, dim=1) if c.path_weights == "support" else torch.full_like(loss, 1.0 / P)
        with record_function("metahin.query"):
            w = weights.t()  # [P, B]
            mixed = {
                n: (w.view(P, B, *[1] * (t.dim() - 1)) * t.view(P, B, *t.shape[1:])).sum(0) for n, t in theta.items()
            }
            e_mix = (w.unsqueeze(-1) * e.view(P, B, -1)).sum(0)
        return mixed, e_mix, weights

    # ------------------------------------------------------------------ fused path
    #: Largest corater design matrix (graph items x design columns) the fused contexts build;
    #: beyond it they fall back to the pooled embeddings (:meth:`user_contexts`).
    max_design_entries: ClassVar[int] = 50_000_000

    def _path_cardinality(self) -> dict[str, int]:
        return {f: self.schema.item_feature(f).cardinality for f in map(path_feature, self.paths) if f}

    def _design_contexts(self) -> bool:
        """Whether :meth:`raw_contexts` can use design operators (else it pools embeddings)."""
        emb, n = self.model.item_embedder, len(self.graph.items)
        return bool(n) and emb.is_linear and n * sum(emb.design_sizes) <= self.max_design_entries

    def raw_contexts(self, batch: TaskBatch, own: Tensor) -> Tensor:
        """``[P, B, d_item]``: :meth:`user_contexts` of every path from cached design operators.

        A user's path context is ``sum_s w_s * own_s + from_design(n)``: a weighted mean of their
        own support embeddings ``own [B, S, d_item]`` (weight ``1/N``, ``(1 - 1/2)/N`` for an
        item in the graph on ``umum``, ``1/(N den_s)`` on a feature path) plus one design row
        ``n`` of neighbour weights (data only, no gradient), so no step embeds the whole graph.
        Falls back to :meth:`user_contexts` where that cannot be done (sigmoid pooling, no graph
        yet, a design matrix above :attr:`max_design_entries`).
        """
        m, g = self.model, self.graph
        emb = m.item_embedder
        feats = self._path_cardinality()
        if not self._design_contexts():
            return torch.stack(list(self.user_contexts(batch).values()))
        ops, design = g.operators(feats), g.design_operators(emb, feats)
        own_w, nbr = [], []
        with torch.no_grad():
            w = batch.support_mask.to(own.dtype)
            w = w / w.sum(-1, keepdim=True).clamp_min(1.0)  # masked_mean's weights
            for path in self.paths:
                feat = path_feature(path)
                if path == "um":
                    own_w.append(w)
                    nbr.append(None)
                elif path == "umum":
                    pos = g.positions(batch.support_items)
                    half = (pos >= 0).to(w.dtype) / 2.0
                    own_w.append(w * (1.0 - half))
                    nbr.append(nn.functional.embedding_bag(  # sum_s (w half)_s corater_design[pos_s], no [B, S, V] copy
                        pos.clamp_min(0), design["corater_design"], per_sample_weights=w * half, mode="sum"
                    ))
                else:
                    mine = batch.support_features[feat]
                    mine = mine.unsqueeze(-1) if mine.dim() == batch.support_items.dim() else mine
                    ok = (mine >= 0).to(w.dtype)
                    idx = mine.clamp_min(0)
                    ww = w / (1.0 + (ops[f"count_{feat}"][idx] * ok).sum(-1))
                    own_w.append(ww)
                    h = torch.zeros(len(batch), self.schema.item_feature(feat).cardinality, dtype=w.dtype, device=w.device)
                    h.scatter_add_(1, idx.flatten(1), (ww.unsqueeze(-1) * ok).flatten(1))
                    nbr.append((design[f"value_design_{feat}"] @ h.t()).t())
        raw = torch.bmm(torch.stack(own_w, dim=1), own)  # [B, P, d]
        has = [i for i, n in enumerate(nbr) if n is not None]
        extra = dict(zip(has, emb.from_design(torch.stack([nbr[i] for i in has], dim=1)).unbind(1))) if has else {}
        return torch.stack([raw[:, i] + extra[i] if i in extra else raw[:, i] for i in range(len(self.paths))])

    def co_adapt_fused(self, batch: TaskBatch, *, first_order: bool) -> tuple[Tensor, Tensor]:
        """:meth:`co_adapt` and the query prediction, batched by hand: ``(pred [B, Q], a [B, P])``.

        The same numbers as the reference (to float rounding; the tests check it), computed so
        that the one large per-episode tensor -- the first layer's gated weights ``W_p`` ``[P B,
        h, in]`` -- is formed once (:class:`GatedLayer`, one product with every input it sees:
        the support rows, the query rows without their context, the P path contexts) and its
        adapted value never: its inner gradient is ``D^T X`` (``D`` the support items' gradients
        at that layer's outputs, ``X`` their inputs), so the adapted layer applied to any input
        ``x`` is ``W_p x - lr sum_steps D^T (X x)`` -- support Gram matrices ``X X^T`` in the
        inner loop, ``X x_q`` for the query, whose mixed first layer is
        ``sum_p a_p (W_p x_q - lr D_p^T X_p x_q)``. The semantic step's gradient is rank one
        (every support item reads the same context), so ``phi_p raw`` is updated in closed form. Inner gradients are written out (:func:`~metarec.nn.per_user_relu_mlp_backward`),
        differentiable for the second-order meta-gradient, evaluated without a graph for
        ``first_order``. Call it under :func:`torch.no_grad` to evaluate.
        """
        c, m = self.config, self.model
        B, P = len(batch), len(self.paths)
        E = P * B
        lins = [layer for layer in m.head if isinstance(layer, nn.Linear)]
        shared = [t for layer in lins for t in (layer.weight, layer.bias)]
        inner = torch.no_grad if first_order else contextlib.nullcontext  # FO: gradients at a detached point

        def rep(t: Tensor) -> Tensor:  # [B, ...] -> [P B, ...], path-major like the episodes
            return t.unsqueeze(0).expand(P, *t.shape).reshape(E, *t.shape[1:])

        def mix(t: Tensor, w: Tensor) -> Tensor:  # [P B, ...] -> [B, ...]: sum_p w[p, b] t[p, b]
            return (w.reshape(E, *[1] * (t.dim() - 1)) * t).view(P, B, *t.shape[1:]).sum(0)

        def inputs(items: Tensor, e: Tensor, user: Tensor | None) -> Tensor:
            parts = [items, broadcast_user(e, items)]
            if user is not None:
                parts.append(broadcast_user(user, items))
            return torch.cat(parts, dim=-1)

        def rest(z0: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:  # layers after the first
            return (z0, []) if not params else per_user_relu_mlp(params, torch.relu(z0))

        with record_function("metahin.contexts"):
            own_s = m.item_embedder(batch.support_features)
            own_q = m.item_embedder(batch.query_features)
            user = m.user_embedder(batch.user_features) if m.user_embedder is not None else None
            user_e = rep(user) if user is not None else None
            own_e = rep(own_s)
            y, mask = rep(batch.support_ratings), rep(batch.support_mask)
            raw = self.raw_contexts(batch, own_s).reshape(E, -1)
        d_item, d_ctx = own_s.shape[-1], c.context_dim
        w0 = shared[0]
        w0_ctx = w0[:, d_item:d_item + d_ctx]

        # 1. semantic-wise: phi_p = phi - mp_lr * grad, the gradient (g raw^T, g) of rank one.
        # The first layer of the shared theta sees [item; e_p; user]: the item and user parts are
        # the same on every path, so they are computed per user, not per episode.
        with record_function("metahin.semantic_step"):
            z = m.semantic(raw)
            if c.mp_steps:
                scale = ((raw.detach() if first_order else raw) * raw).sum(-1, keepdim=True) + 1.0
                with inner():
                    base = own_s @ w0[:, :d_item].t() + shared[1]
                    if user is not None:
                        base = base + (user @ w0[:, d_item + d_ctx:].t()).unsqueeze(1)
                    base = rep(base)
            for _ in range(c.mp_steps):
                with inner():
                    z0 = base + (nn.functional.leaky_relu(z) @ w0_ctx.t()).unsqueeze(1)
                    pred, pre = rest(z0, shared[2:])
                    _, d = masked_mse_output_grad(pred.squeeze(-1), y, mask)
                    _, d0 = per_user_relu_mlp_backward([None, None, *shared[2:]], None, [z0, *pre], d, first_layer=False)
                    # times leaky_relu's derivative (its default slope 0.01, as MetaHINNet.context)
                    g = (d0 @ w0_ctx).sum(1) * torch.where(z > 0, torch.ones_like(z), torch.full_like(z, 0.01))
                z = z - c.mp_lr * g * scale
            e = nn.functional.leaky_relu(z)

        # 2. semantic prior: theta_p = theta * sigmoid(T e_p); the first layer's [P B, h, in] inside GatedLayer
        with record_function("metahin.prior"):
            priors = [m.prior[n[len("head."):].replace(".", "_")] for n in self.theta_names]
            gates = [torch.sigmoid(T(e)).view(E, *t.shape) for T, t in zip(priors[1:], shared[1:])]
            # Every input the gated first layer ever sees, in one product (so its gradient is one
            # product too): the support rows [item; e_p; user], the query rows without their context
            # [item; 0; user], and the contexts [0; e_p'; 0] of every path p' (the query's mixed
            # context is their a-weighted sum, known only after the support fit).
            x_s = inputs(own_e, e, user_e)
            zeros_q = own_q.new_zeros(*own_q.shape[:-1], d_ctx)
            x_q0 = torch.cat([own_q, zeros_q] + ([broadcast_user(user, own_q)] if user is not None else []), dim=-1)
            e_rows = rep(e.view(P, B, d_ctx).transpose(0, 1))  # [P B, P, c]: user b's contexts of every path
            x_c = nn.functional.pad(e_rows, (d_item, x_s.shape[-1] - d_item - d_ctx))
            S, Q = x_s.shape[1], x_q0.shape[1]
            out0 = GatedLayer.apply(w0, priors[0].weight, priors[0].bias, e, torch.cat([x_s, rep(x_q0), x_c], dim=1))
            h_s, h_q, h_c = torch.split(out0, [S, Q, P], dim=1)
            b0 = shared[1] * gates[0]
            theta = [t * gate for t, gate in zip(shared[2:], gates[1:])]

        # 3. task-wise steps
        with record_function("metahin.task_steps"):
            with inner():  # FO: the support side only feeds inner gradients and the path weights
                gram = torch.bmm(x_s, x_s.transpose(1, 2)) if c.local_steps else None
            d_sum: Tensor | None = None  # sum over steps of dL/d(first-layer outputs) on the support

            def first_layer() -> Tensor:
                z0 = h_s + b0.unsqueeze(1)
                return z0 if d_sum is None else z0 - c.local_lr * torch.bmm(gram, d_sum)

            for _ in range(c.local_steps):
                with inner():
                    z0 = first_layer()
                    pred, pre = rest(z0, theta)
                    _, d = masked_mse_output_grad(pred.squeeze(-1), y, mask)
                    grads, d0 = per_user_relu_mlp_backward([None, None, *theta], None, [z0, *pre], d, first_layer=False)
                d_sum = d0 if d_sum is None else d_sum + d0
                b0 = b0 - c.local_lr * d0.sum(1)
                theta = [t - c.local_lr * gr for t, gr in zip(theta, grads[2:])]

        # 4. path weights from the support loss after adaptation (no gradient, as the reference)
        with record_function("metahin.path_weights"), torch.no_grad():
            fit = rest(first_layer(), theta)[0].squeeze(-1)
            loss = engine.masked_mse.per_user(fit, y, mask).view(P, B).t()
            a = torch.softmax(-loss, dim=1) if c.path_weights == "support" else torch.full_like(loss, 1.0 / P)

        # 5. sum_p a_p (W0 * gate_p) [item; e_mix; user] + the mixed bias, then the low-rank updates
        with record_function("metahin.query"):
            w = a.t()  # [P, B]
            e_mix = mix(e, w)
            z_q = h_q + torch.bmm(rep(a).unsqueeze(1), h_c) + b0.unsqueeze(1)
            if d_sum is not None:
                x_q = inputs(own_q, e_mix, user)
                cross = torch.bmm(rep(x_q), (x_s.detach() if first_order else x_s).transpose(1, 2))  # [P B, Q, S]
                z_q = z_q - c.local_lr * torch.bmm(cross, d_sum)
            pred = rest(mix(z_q, w), [mix(t, w) for t in theta])[0].squeeze(-1)
        return pred, a

    def _predict_query(self, batch: TaskBatch, first_order: bool, detach: bool = False) -> Tensor:
        if self.config.backend == "fused":
            return self.co_adapt_fused(batch, first_order=first_order)[0]
        theta, e, _ = self.co_adapt(batch, first_order=first_order, detach=detach)
        params = dict(self.model.named_parameters())
        if detach:
            params = {k: v.detach() for k, v in params.items()}
        with record_function("metahin.query"):
            return engine.predict_batch(self.forward, params, self._with_user(batch, ctx_e=e), user_params=theta)

    def meta_step(self, batch: TaskBatch) -> float:
        c = self.config
        self.model.train()
        pred = self._predict_query(batch, first_order=c.first_order)
        loss = engine.masked_mse.per_user(pred, batch.query_ratings, batch.query_mask).mean()
        return engine.outer_step(self.optimizer, loss, grad_clip=c.grad_clip)

    def adapt_and_predict(self, batch: TaskBatch) -> Tensor:
        self.model.eval()
        with torch.no_grad():
            return self._predict_query(batch, first_order=True, detach=True)
