"""The learner contract, as a check any learner -- built-in or plugin -- can run in its own tests.

:func:`check_learner` trains a learner briefly on a tiny synthetic dataset and checks the rules
every method must keep for its numbers to be comparable (scikit-learn's ``check_estimator`` in
spirit)::

    from metarec.testing import check_learner

    def test_my_learner_keeps_the_contract():
        check_learner(MyLearner, overrides={"embedding_dim": 8, "epochs": 2})

A broken rule raises :class:`~metarec.learner.LearnerContractError`, whose ``rule`` attribute
and message name it. The rules (:data:`RULES`):

* ``query-blind``: predictions do not depend on the test users' query ratings (true, random
  or NaN ratings give the same predictions);
* ``batch-size-independence`` / ``user-order-independence``: a user's predictions do not
  depend on who else is in the batch, or in which order;
* ``predict-leaves-state-unchanged``: predicting changes neither the state nor later predictions;
* ``same-seed-identical`` / ``other-seed-different``: two runs with one seed agree bit for
  bit; another seed gives other predictions (learners whose fit draws no random numbers set
  ``stochastic = False`` and must instead give the same predictions for every seed);
* ``checkpoint-round-trip``: the state written and read back through the safe checkpoint
  format (:mod:`metarec.checkpoint`, no pickle) predicts identically in a fresh learner;
* ``resume-equals-uninterrupted``: training interrupted after its first epoch and resumed from
  the checkpoint ends where an uninterrupted run ends (learners with an ``epochs`` setting);
* ``prediction-shape``, ``finite-predictions``, ``prediction-range``: ``[N, Q]``, finite, and
  inside the dataset's rating range when ``clip_predictions`` is on;
* ``precomputed-item-inputs``: a learner that offers
  :meth:`~metarec.learner.Learner.precompute_item_inputs` predicts the same (to 1e-6) when the
  batch's item features carry them, as the serving path passes them (skipped when it offers none).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from metarec.checkpoint import load_state, save_state
from metarec.learner import Callback, Learner, LearnerContractError
from metarec.tasks import TaskSet

__all__ = ["RULES", "CheckReport", "LearnerContractError", "check_learner", "tiny_split"]

#: Every rule :func:`check_learner` checks, in the order it checks them.
RULES: tuple[str, ...] = (
    "prediction-shape",
    "finite-predictions",
    "prediction-range",
    "query-blind",
    "precomputed-item-inputs",
    "batch-size-independence",
    "user-order-independence",
    "predict-leaves-state-unchanged",
    "same-seed-identical",
    "other-seed-different",
    "checkpoint-round-trip",
    "resume-equals-uninterrupted",
)


@dataclass
class CheckReport:
    """What :func:`check_learner` checked: the rules that held and the ones that did not apply."""

    learner: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def tiny_split(seed: int = 0) -> Any:
    """A small synthetic split (60 users, 20 ratings each: 48 training, 12 test users)."""
    from metarec.data.protocol import build_split
    from metarec.data.synthetic import make_synthetic

    return build_split(make_synthetic(n_users=60, n_items=60, ratings_per_user=20, seed=seed), seed=seed)


class _Interrupt(Exception):
    pass


class _StopAfterFirstEpoch(Callback):
    """Saves the learner's state after its first epoch (as the benchmark's checkpoints do), then stops."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, learner: Learner, *, epoch: int, logs: dict[str, float]) -> None:
        save_state(self.path, learner.state_dict())
        raise _Interrupt


def check_learner(
    learner: type[Learner] | str,
    *,
    overrides: Mapping[str, Any] | None = None,
    preset: str | None = None,
    split: Any = None,
    epochs: int = 2,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> CheckReport:
    """Check that ``learner`` (a class, or a registered name) keeps every rule of :data:`RULES`.

    The learner is built from its Config defaults < ``preset`` < ``overrides`` (pass small model
    sizes here to keep the check fast) with ``epochs`` epochs when it has that setting (at least
    2, so that training can be interrupted and resumed), trained on ``split`` (default:
    :func:`tiny_split`). Comparisons of predictions that are computed the same way are exact;
    ``rtol``/``atol`` apply where batching may change float rounding (batch size, user order).
    Raises :class:`LearnerContractError` at the first broken rule; returns a :class:`CheckReport`.
    """
    if isinstance(learner, str):
        from metarec.registry import get_learner

        cls = get_learner(learner)
    else:
        cls = learner
    name = getattr(cls, "name", "") or cls.__name__
    split = split if split is not None else tiny_split()
    train, test = split.train, split.test
    schema = train.schema
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    settings = dict(overrides or {})
    episodic = "epochs" in fields
    if episodic:
        if epochs < 2:
            raise ValueError(f"check_learner needs epochs >= 2 to test resuming, got {epochs}")
        settings.setdefault("epochs", epochs)
    report = CheckReport(learner=name)

    def fail(rule: str, message: str) -> None:
        raise LearnerContractError(rule, f"{name}: {message}")

    def build(seed: int, **extra: Any) -> Learner:
        return cls.from_settings(schema, preset=preset, overrides={**settings, **extra}, seed=seed)

    def fit(seed: int) -> Learner:
        return build(seed).meta_fit(train)

    def blind_predict(model: Learner, tasks: TaskSet, batch_size: int | None = None) -> Tensor:
        return model.predict(tasks, batch_size=batch_size)

    # -- one trained learner: the shape, finiteness and range of its predictions
    model = fit(0)
    pred = blind_predict(model, test)  # Learner.predict refuses a wrong shape and NaN / inf itself
    if pred.shape != test.query_items.shape:
        fail("prediction-shape", f"predict returned {list(pred.shape)}, expected {list(test.query_items.shape)}")
    report.passed.append("prediction-shape")
    real = pred[test.query_mask]
    if not bool(torch.isfinite(real).all()):
        fail("finite-predictions", f"{int((~torch.isfinite(real)).sum())} predictions are NaN or infinite")
    report.passed.append("finite-predictions")
    if getattr(model.config, "clip_predictions", False):
        lo, hi = schema.rating_min, schema.rating_max
        if float(real.min()) < lo or float(real.max()) > hi:
            fail("prediction-range", f"predictions span [{float(real.min()):.3f}, {float(real.max()):.3f}], "
                 f"outside the rating range [{lo}, {hi}] although clip_predictions is on")
        report.passed.append("prediction-range")
    else:
        report.skipped["prediction-range"] = "clip_predictions is off"

    # -- query-blindness: the same batch with the true, random and NaN query ratings
    batch = test.batch(torch.arange(len(test)), device=model.device)
    gen = torch.Generator().manual_seed(1234)
    lo, hi = schema.rating_min, schema.rating_max
    noisy = torch.rand(batch.query_ratings.shape, generator=gen) * (hi - lo) + lo
    outs = {}
    for label, ratings in (
        ("the true ratings", batch.query_ratings),
        ("random ratings", noisy.to(batch.query_ratings)),
        ("NaN ratings", torch.full_like(batch.query_ratings, float("nan"))),
    ):
        out = model.adapt_and_predict(dataclasses.replace(batch, query_ratings=ratings))  # as predict calls it
        outs[label] = out.detach().cpu()[test.query_mask]
    ref = outs["the true ratings"]
    for label in ("random ratings", "NaN ratings"):
        if not torch.allclose(outs[label], ref, rtol=0.0, atol=1e-6, equal_nan=False):
            diff = (outs[label] - ref).abs()
            shown = "NaN" if bool(torch.isnan(diff).any()) else f"{float(diff.max()):.3g}"
            fail("query-blind", f"adapt_and_predict with {label} in the query slots changes the predictions "
                 f"(max difference {shown}): a learner may read only the support ratings and the query items")
    report.passed.append("query-blind")

    # -- item inputs computed once for every user (what the serving path caches)
    items_x = dict(test.items.to(model.device).columns)
    pre = model.precompute_item_inputs(items_x)
    if not pre:
        report.skipped["precomputed-item-inputs"] = "precompute_item_inputs returns nothing"
    else:
        clash = sorted(set(pre) & set(items_x))
        bad = [k for k, v in pre.items() if not isinstance(v, Tensor) or v.shape[:1] != (len(test.items),)]
        if clash or bad:
            fail("precomputed-item-inputs", f"precompute_item_inputs must return new keys ({clash} are feature "
                 f"names) holding one row per item ({bad} do not)")

        def carry(features: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
            return {**features, **{k: v.detach()[rows] for k, v in pre.items()}}

        with_pre = dataclasses.replace(batch, support_features=carry(batch.support_features, batch.support_items),
                                       query_features=carry(batch.query_features, batch.query_items),
                                       query_ratings=torch.full_like(batch.query_ratings, float("nan")))
        got = model.adapt_and_predict(with_pre).detach().cpu()[test.query_mask]
        if not torch.allclose(got, outs["NaN ratings"], rtol=0.0, atol=1e-6):
            fail("precomputed-item-inputs", "adapt_and_predict with the precomputed item inputs "
                 f"{sorted(pre)} differs by up to {float((got - outs['NaN ratings']).abs().max()):.3g} from "
                 "computing them: they must depend on the item features alone, never on the user or on adaptation")
        report.passed.append("precomputed-item-inputs")

    # -- batch composition
    whole = blind_predict(model, test, batch_size=len(test))
    for size in (1, 5):
        other = blind_predict(model, test, batch_size=size)
        if not torch.allclose(other, whole, rtol=rtol, atol=atol):
            fail("batch-size-independence", f"predictions with {size} user(s) per batch differ from one batch of "
                 f"{len(test)} users by up to {float((other - whole).abs().max()):.3g}")
    report.passed.append("batch-size-independence")
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(7))
    shuffled = blind_predict(model, test.subset(perm), batch_size=5)
    if not torch.allclose(shuffled, whole[perm], rtol=rtol, atol=atol):
        fail("user-order-independence", "predicting the test users in another order changes their predictions "
             f"by up to {float((shuffled - whole[perm]).abs().max()):.3g}")
    report.passed.append("user-order-independence")

    # -- predict leaves the learner as it was
    before = _snapshot(model)
    again = blind_predict(model, test)
    after = _snapshot(model)
    changed = _differences(before, after)
    if changed:
        fail("predict-leaves-state-unchanged", f"predict changed the learner's state: {', '.join(changed[:5])}")
    if not torch.equal(again, pred):
        fail("predict-leaves-state-unchanged", "a second predict gives other predictions than the first "
             f"(by up to {float((again - pred).abs().max()):.3g}): predicting changed something")
    report.passed.append("predict-leaves-state-unchanged")

    # -- seeds
    twin = blind_predict(fit(0), test)
    if not torch.equal(twin, pred):
        fail("same-seed-identical", f"two runs with seed 0 differ by up to {float((twin - pred).abs().max()):.3g}")
    report.passed.append("same-seed-identical")
    other_seed = blind_predict(fit(1), test)
    if getattr(cls, "stochastic", True):
        if torch.equal(other_seed, pred):
            fail("other-seed-different", "seeds 0 and 1 give identical predictions: the run seed does not reach "
                 "the initialisation or the training order (or set `stochastic = False` if fitting draws no "
                 "random numbers)")
    elif not torch.equal(other_seed, pred):
        fail("other-seed-different", "the learner declares `stochastic = False` but seeds 0 and 1 give "
             "different predictions")
    report.passed.append("other-seed-different")

    # -- checkpoints: the safe format, then an interrupted and resumed run
    with tempfile.TemporaryDirectory(prefix="metarec-check-") as tmp:
        path = Path(tmp) / "state"
        save_state(path, model.state_dict())
        fresh = build(1)  # another seed: everything must come from the state
        fresh.load_state_dict(load_state(path))
        restored = blind_predict(fresh, test)
        if not torch.equal(restored, pred):
            fail("checkpoint-round-trip", "a fresh learner loaded from the saved state predicts differently "
                 f"(by up to {float((restored - pred).abs().max()):.3g}): some state is not in state_dict()")
        report.passed.append("checkpoint-round-trip")

        if episodic:
            ckpt = Path(tmp) / "interrupted"
            try:
                build(0).meta_fit(train, callbacks=[_StopAfterFirstEpoch(ckpt)])
            except _Interrupt:
                pass
            else:
                fail("resume-equals-uninterrupted", "meta_fit ran no epoch-end callback, so it cannot be checkpointed")
            resumed = build(0)
            resumed.load_state_dict(load_state(ckpt))
            resumed.meta_fit(train)
            got = blind_predict(resumed, test)
            if not torch.equal(got, pred):
                fail("resume-equals-uninterrupted", "training interrupted after epoch 1 and resumed from its "
                     f"checkpoint ends with other predictions (by up to {float((got - pred).abs().max()):.3g}) "
                     "than an uninterrupted run")
            report.passed.append("resume-equals-uninterrupted")
        else:
            report.skipped["resume-equals-uninterrupted"] = "no epochs setting: training is not episodic"
    return report


def _snapshot(learner: Learner) -> dict[str, Any]:
    from metarec.checkpoint import flatten_state

    skeleton, arrays = flatten_state(learner.state_dict())
    return {"skeleton": skeleton, "arrays": {k: v.copy() for k, v in arrays.items()}}


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    import numpy as np

    if a["skeleton"] != b["skeleton"]:
        return ["the structure or counters of state_dict()"]
    out = []
    for k, v in a["arrays"].items():
        w = b["arrays"].get(k)
        if w is None or v.shape != w.shape or not np.array_equal(v, w, equal_nan=v.dtype.kind == "f"):
            out.append(f"tensor {k}")
    return out
