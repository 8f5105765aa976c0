"""The learn2learn backend computes what the torch.func engine computes, and metarec needs neither.

learn2learn lives in its own virtual env (its torchvision import needs a different torch build
than metarec's CPU one; ``make l2l`` / ``scripts/install_learn2learn.sh`` builds it), so the parity
checks run in a subprocess with that env's python (``METAREC_L2L_PYTHON``): this very file, run as
a script. Without that env the test is skipped locally, but FAILS when ``CI`` is set, so CI can
never skip it silently. The other tests run in metarec's own env and check that the core imports
and works without learn2learn, and the Meta-SGD option of the engine backends.

Parity is checked in float64, so a tolerance of 1e-5 tests the algorithm, not rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

try:
    import pytest
except ImportError:  # run as a script by the learn2learn env's python, which has no pytest
    pytest = None

import torch

from metarec.methods.maml import MAMLLearner

TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]
SUMMARY_PREFIX = "learn2learn parity:"

# Small, fast, but a real adaptation: a large inner rate and 2 inner steps make first- and
# second-order meta-gradients, and local-only versus whole-model adaptation, clearly different.
FAST = {
    "embedding_dim": 6,
    "hidden": (12, 8),
    "inner_lr": 0.3,
    "inner_steps": 2,
    "meta_lr": 1e-2,
    "batch_size": 8,
    "epochs": 1,
}


class AllLocal(MAMLLearner):
    """MetaCS-DNN's choice of local set: every parameter adapts per user."""

    def local_parameter_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]


def _split(n_users: int = 80):
    from metarec.data.protocol import build_split
    from metarec.data.synthetic import make_synthetic

    return build_split(make_synthetic(n_users=n_users, n_items=120, seed=0), seed=0)


def _trainables(learner: MAMLLearner) -> dict[str, torch.Tensor]:
    named = dict(learner.model.named_parameters())
    if learner.config.algorithm == "metasgd":
        named.update({f"lr[{n}]": s for n, s in learner.per_parameter_lrs().items()})
    return named


def _loss_and_grads(learner: MAMLLearner, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The learner's own meta-loss and its gradient w.r.t. every meta-trained tensor."""
    named = _trainables(learner)
    loss = learner.meta_loss(batch)
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return loss.detach(), {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named.items(), grads)}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[k] - b[k]).detach().abs().max()) for k in a)


# --------------------------------------------------------------------------- the script side


def run_parity_checks() -> str:
    """Every learn2learn-vs-engine check; returns the summary line (raises on any mismatch)."""
    import learn2learn as l2l

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    split = _split()
    schema = split.train.schema
    batch = split.train.batch(list(range(8)))
    batch.support_mask[6, 11:] = False  # ragged support: padded entries must be ignored
    batch.support_mask[7, 4:] = False
    worst, checks = 0.0, []

    def check(what: str, diff: float) -> None:
        nonlocal worst
        if not diff <= TOL:
            raise AssertionError(f"{what}: learn2learn and torch.func differ by {diff:.3e} > {TOL}")
        worst = max(worst, diff)
        checks.append(what)

    def pair(cls, **overrides):
        kw = {**FAST, **overrides}
        return (
            cls.from_settings(schema, overrides={**kw, "backend": "learn2learn"}, seed=3),
            cls.from_settings(schema, overrides={**kw, "backend": "torch.func"}, seed=3),
        )

    # 1. Meta-loss and meta-gradients (model and, for Meta-SGD, the step sizes).
    grads_by_order = {}
    for label, cls in (("MeLU (head local)", MAMLLearner), ("MetaCS-DNN (all local)", AllLocal)):
        for algorithm in ("maml", "metasgd"):
            for first_order in (False, True):
                ours, ref = pair(cls, algorithm=algorithm, first_order=first_order)
                assert isinstance(ours._l2l.algorithm, (l2l.algorithms.MAML, l2l.algorithms.MetaSGD))
                loss_a, grads_a = _loss_and_grads(ours, batch)
                loss_b, grads_b = _loss_and_grads(ref, batch)
                name = f"{label}, {algorithm}, {'first' if first_order else 'second'} order"
                check(f"{name}: query loss", float((loss_a - loss_b).abs()))
                check(f"{name}: meta-gradients", _max_diff(grads_a, grads_b))
                grads_by_order[(label, algorithm, first_order)] = grads_b

    # The checks above can fail: second order really differs from first order here.
    for label, algorithm, _ in [k for k in grads_by_order if not k[2]]:
        gap = _max_diff(grads_by_order[(label, algorithm, False)], grads_by_order[(label, algorithm, True)])
        assert gap > 100 * TOL, f"{label} {algorithm}: first and second order agree ({gap:.2e}); the test is blind"

    # 2. Evaluation: adapt each test user and predict the query.
    for algorithm in ("maml", "metasgd"):
        ours, ref = pair(MAMLLearner, algorithm=algorithm)
        test_batch = split.test.batch(list(range(10)))
        check(
            f"MeLU {algorithm}: adapt_and_predict",
            float((ours.adapt_and_predict(test_batch) - ref.adapt_and_predict(test_batch)).abs().max()),
        )

    # 3. Training: a few meta-steps from the same seed end at the same parameters.
    for algorithm in ("maml", "metasgd"):
        ours, ref = pair(MAMLLearner, algorithm=algorithm, epochs=2)
        train = split.train.subset(list(range(24)))
        ours.meta_fit(train)
        ref.meta_fit(train)
        check(f"MeLU {algorithm}: parameters after 2 epochs of meta_fit", _max_diff(_trainables(ours), _trainables(ref)))

    # 4. learn2learn's plain usage -- MAML wrapped around the whole model, clone(x) as the forward --
    #    equals the engine when every parameter is local (MetaCS-DNN), and is WRONG for MeLU,
    #    which is why the backend wraps only the local parameters.
    def whole_model_losses(learner: MAMLLearner) -> torch.Tensor:
        maml = l2l.algorithms.MAML(learner.model, lr=learner.config.inner_lr)
        out = []
        for b in range(len(batch)):
            row = lambda d: {k: v[b] for k, v in d.items()}  # noqa: E731
            clone = maml.clone()
            for _ in range(learner.config.inner_steps):
                pred = clone(row(batch.user_features), row(batch.support_features))
                clone.adapt(((pred - batch.support_ratings[b]) ** 2)[batch.support_mask[b]].mean())
            pred = clone(row(batch.user_features), row(batch.query_features))
            out.append(((pred - batch.query_ratings[b]) ** 2)[batch.query_mask[b]].mean())
        return torch.stack(out).mean()

    _, ref = pair(AllLocal)
    check("MetaCS-DNN: learn2learn MAML around the whole model", float((whole_model_losses(ref) - ref.meta_loss(batch)).detach().abs()))
    _, ref = pair(MAMLLearner)
    wrong = float((whole_model_losses(ref) - ref.meta_loss(batch)).detach().abs())
    assert wrong > 10 * TOL, f"adapting MeLU's embeddings too should change the loss, got a gap of {wrong:.2e}"

    return (
        f"{SUMMARY_PREFIX} {len(checks)} checks passed (max |diff| {worst:.1e} <= {TOL:g}, float64; "
        f"learn2learn {l2l.__version__}, torch {torch.__version__}; negative control: whole-model "
        f"MAML on MeLU differs by {wrong:.2e})"
    )


# --------------------------------------------------------------------------- the pytest side


if pytest is not None:

    def test_learn2learn_backend_matches_engine(capsys):
        python = os.environ.get("METAREC_L2L_PYTHON")
        if not python:
            why = (
                "METAREC_L2L_PYTHON is not set: run `make test`, or build the env with `make l2l` "
                "and set METAREC_L2L_PYTHON=$PWD/.venv-l2l/bin/python"
            )
            if os.environ.get("CI"):
                pytest.fail(f"CI must run the learn2learn parity test, but {why}")
            pytest.skip(why)
        if not Path(python).exists():
            pytest.fail(f"METAREC_L2L_PYTHON={python} does not exist (build it with `make l2l`)")
        path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
        proc = subprocess.run(
            [python, str(Path(__file__).resolve())], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"parity script failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(SUMMARY_PREFIX)]
        assert lines, f"no summary line in the parity script's output:\n{proc.stdout}\n{proc.stderr[-2000:]}"
        with capsys.disabled():  # show in CI's log that the checks really ran
            print(f"\n{lines[-1]}")

    def test_import_metarec_does_not_import_learn2learn():
        code = (
            "import sys, time; t = time.perf_counter();"
            "import metarec, metarec.registry, metarec.methods.maml, metarec.backends.learn2learn;"
            "print(time.perf_counter() - t);"
            "heavy = sorted({'learn2learn', 'torchvision', 'gym'} & set(sys.modules)); assert not heavy, heavy"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    def test_selecting_the_backend_without_learn2learn_says_how_to_install(monkeypatch):
        monkeypatch.setitem(sys.modules, "learn2learn", None)  # as if not installed, whatever the env
        schema = _split(40).train.schema
        with pytest.raises(ImportError, match=r"scripts/install_learn2learn\.sh") as err:
            MAMLLearner.from_settings(schema, overrides={**FAST, "backend": "learn2learn"})
        assert "metarec[learn2learn]" in str(err.value)
        MAMLLearner.from_settings(schema, overrides=FAST)  # the default backend needs nothing

    def test_bench_backend_option_sets_every_method_that_has_a_backend():
        from metarec.commands.bench import _backend_layer
        from metarec.config import ConfigError

        layer = _backend_layer(("melu", "global-mean", "metacs-dnn"), "learn2learn")
        assert layer == {"methods": {"melu": {"backend": "learn2learn"}, "metacs-dnn": {"backend": "learn2learn"}}}
        with pytest.raises(ConfigError, match="mamo offers"):  # MAMO's own loop has no learn2learn backend
            _backend_layer(("mamo", "melu"), "learn2learn")
        with pytest.raises(ConfigError, match="none of the selected methods"):
            _backend_layer(("global-mean",), "loop")

    @pytest.mark.parametrize("first_order", [False, True])
    def test_metasgd_engine_batched_matches_loop(first_order):
        """Meta-SGD on metarec's own backends (no learn2learn): same loss and gradients, step sizes included."""
        split = _split(60)
        batch = split.train.batch(list(range(6)))
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            kw = {**FAST, "algorithm": "metasgd", "first_order": first_order}
            a = MAMLLearner.from_settings(split.train.schema, overrides={**kw, "backend": "torch.func"}, seed=1)
            b = MAMLLearner.from_settings(split.train.schema, overrides={**kw, "backend": "loop"}, seed=1)
            loss_a, grads_a = _loss_and_grads(a, batch)
            loss_b, grads_b = _loss_and_grads(b, batch)
        finally:
            torch.set_default_dtype(prev)
        assert float((loss_a - loss_b).abs()) <= TOL
        assert _max_diff(grads_a, grads_b) <= TOL
        assert all(float(g.abs().max()) > 0 for n, g in grads_a.items() if n.startswith("lr["))

    def test_metasgd_learns_its_step_sizes_and_checkpoints_them(tmp_path):
        from metarec.checkpoint import load_state, save_state

        split = _split(60)
        kw = {**FAST, "algorithm": "metasgd"}
        learner = MAMLLearner.from_settings(split.train.schema, overrides=kw, seed=0)
        assert set(learner.per_parameter_lrs()) == set(learner.local_names)
        learner.meta_fit(split.train)
        rates = torch.cat([s.detach().flatten() for s in learner.per_parameter_lrs().values()])
        assert not torch.allclose(rates, torch.full_like(rates, FAST["inner_lr"]))
        save_state(tmp_path / "ckpt", learner.state_dict())
        fresh = MAMLLearner.from_settings(split.train.schema, overrides=kw, seed=5)
        fresh.load_state_dict(load_state(tmp_path / "ckpt"))
        test = split.test.batch(list(range(5)))
        assert torch.equal(fresh.adapt_and_predict(test), learner.adapt_and_predict(test))
        # plain MAML keeps no step-size state: its checkpoints are unchanged by the option
        assert "inner_lrs" not in MAMLLearner.from_settings(split.train.schema, overrides=FAST).state_dict()


if __name__ == "__main__":
    print(run_parity_checks())
