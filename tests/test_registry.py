"""The learner registry: built-ins, real entry-point plugins, broken plugins, unknown names."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metarec import registry
from metarec.learner import Learner
from metarec.registry import UnknownLearnerError, get_learner, register_learner, unregister_learner

REPO = Path(__file__).resolve().parents[1]

GOOD_PLUGIN = '''
"""A throwaway third-party learner package."""
import torch
from metarec.learner import Learner, LearnerConfig


class ConstantFive(Learner):
    """Predicts the top of the rating scale for everyone."""

    name = "constant-five"
    description = "always predicts the maximum rating"

    def meta_fit(self, train, *, callbacks=(), validation=None):
        return self

    def adapt_and_predict(self, batch):
        return torch.full_like(batch.query_ratings, self.schema.rating_max)
'''

BROKEN_PLUGIN = '''
raise RuntimeError("this plugin is broken on purpose")
'''


def _make_distribution(root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(textwrap.dedent(source))
    eps = "\n".join(f'{k} = "{v}"' for k, v in entry_points.items())
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.0.1"

            [tool.setuptools]
            packages = ["{module}"]

            [project.entry-points."metarec.learners"]
            """
        )
        + eps
        + "\n"
    )
    return pkg


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Build and install two real distributions (one good, one broken) into a private site dir."""
    root = tmp_path_factory.mktemp("plugins")
    site = root / "site"
    good = _make_distribution(root, "metarec-toy-plugin", "metarec_toy_plugin", GOOD_PLUGIN,
                              {"constant-five": "metarec_toy_plugin:ConstantFive"})
    broken = _make_distribution(root, "metarec-broken-plugin", "metarec_broken_plugin", BROKEN_PLUGIN,
                                {"broken-method": "metarec_broken_plugin:Nothing"})
    for pkg in (good, broken):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(site), str(pkg)],
            check=True, capture_output=True, text=True,
        )
    return site


def _run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "metarec.cli", *args], capture_output=True, text=True, env=env)


def test_installed_plugin_is_listed_by_metarec_methods(plugin_site):
    out = _run_cli(plugin_site, "methods")
    assert out.returncode == 0, out.stderr
    assert "constant-five" in out.stdout
    assert "metarec_toy_plugin" in out.stdout  # its source package
    assert "always predicts the maximum rating" in out.stdout


def test_broken_plugin_is_reported_and_skipped(plugin_site):
    out = _run_cli(plugin_site, "methods")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "broken-method" in text and "skipped" in text
    assert "this plugin is broken on purpose" in text
    assert "constant-five" in text  # the good plugin still loads


def test_plugin_learner_is_usable_through_get_learner(plugin_site, synthetic_split, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    import importlib

    importlib.invalidate_caches()
    cls = get_learner("constant-five")
    learner = cls(synthetic_split.train.schema)
    pred = learner.predict(synthetic_split.test)
    assert pred.shape == synthetic_split.test.query_ratings.shape
    assert float(pred.max()) == 5.0
    ok, failed = registry.available_learners()
    assert "constant-five" in ok
    assert any(f.name == "broken-method" and "broken on purpose" in f.error for f in failed)
    with pytest.raises(registry.LearnerImportError, match="broken-method"):
        get_learner("broken-method")


def test_unknown_learner_lists_known_names():
    with pytest.raises(UnknownLearnerError) as info:
        get_learner("mamoo")
    msg = str(info.value)
    assert "unknown learner 'mamoo'" in msg
    assert "Did you mean 'mamo'" in msg
    assert "global-mean" in msg and "melu" in msg


def test_runtime_registration_and_clash():
    class Tiny(Learner):
        def meta_fit(self, train, *, callbacks=(), validation=None):
            return self

        def adapt_and_predict(self, batch):
            return batch.query_ratings * 0

    register_learner("tiny-test-learner")(Tiny)
    try:
        assert get_learner("tiny-test-learner") is Tiny
        assert registry.learner_entries()["tiny-test-learner"].origin == "runtime"

        class Other(Tiny):
            pass

        with pytest.raises(ValueError, match="already registered"):
            register_learner("tiny-test-learner")(Other)
    finally:
        unregister_learner("tiny-test-learner")
    assert "tiny-test-learner" not in registry.learner_entries()


def test_baselines_are_entry_points_of_package_baselines():
    entries = registry.learner_entries()
    for name in ("melu", "metacs-dnn", "s2meta", "rum-item", "rum-feature"):
        assert entries[name].origin == "entry-point"
        assert entries[name].source == "baselines"
    assert entries["mamo"].source == "metarec"
