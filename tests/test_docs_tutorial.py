"""The docs tutorial ("add your own method") is executed here, so the page cannot rot.

The tutorial's package (docs/tutorial/toy_learner) is pip-installed into a temporary target
directory exactly as a user would install a plugin, put on ``sys.path``, and found by metarec
through its real ``metarec.learners`` entry point (``importlib.metadata``) -- no run-time
registration, no mock. The page includes the same source file through a snippet directive.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "docs" / "tutorial" / "toy_learner"
SOURCE = PACKAGE / "toy_learner" / "reptile.py"
PAGE = REPO / "docs" / "tutorial.md"
NAME = "toy-reptile"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Install the tutorial package with pip into a fresh target dir and make it importable."""
    tmp = tmp_path_factory.mktemp("toy_plugin")
    src = tmp / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None:
        # build with the environment's own setuptools: no index needed
        cmd += ["--no-build-isolation", "--no-index"]
    cmd += ["--target", str(target), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"pip install of the tutorial package failed:\n{proc.stdout}\n{proc.stderr}"
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for mod in [m for m in sys.modules if m == "toy_learner" or m.startswith("toy_learner.")]:
            del sys.modules[mod]
        importlib.invalidate_caches()


def test_tutorial_source_is_short_and_included_verbatim_by_the_page():
    lines = SOURCE.read_text("utf-8").splitlines()
    assert len(lines) < 60, f"the tutorial learner must stay under 60 lines, it has {len(lines)}"
    page = PAGE.read_text("utf-8")
    assert '--8<-- "docs/tutorial/toy_learner/toy_learner/reptile.py"' in page
    assert '--8<-- "docs/tutorial/toy_learner/pyproject.toml"' in page


def test_entry_point_is_declared_and_installed(installed_plugin):
    eps = {ep.name: ep for ep in metadata.entry_points(group="metarec.learners")}
    assert NAME in eps, f"{NAME} not among the installed metarec.learners entry points: {sorted(eps)}"
    assert eps[NAME].value == "toy_learner.reptile:Reptile"
    assert eps[NAME].dist is not None and eps[NAME].dist.name == "toy-learner"


def test_registry_finds_the_plugin_through_its_entry_point(installed_plugin):
    from metarec.registry import get_learner, learner_entries

    entry = learner_entries()[NAME]
    assert entry.origin == "entry-point"
    assert entry.source == "toy_learner"
    cls = get_learner(NAME)
    assert cls.__name__ == "Reptile"
    # the class comes from the pip-installed copy, not from the docs source tree
    assert Path(sys.modules[cls.__module__].__file__).resolve().is_relative_to(installed_plugin.resolve())


def test_metarec_methods_lists_the_plugin(installed_plugin, monkeypatch):
    from click.testing import CliRunner

    from metarec.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0, result.output
    line = next((ln for ln in result.output.splitlines() if NAME in ln), None)
    assert line is not None, f"`metarec methods` does not list {NAME}:\n{result.output}"
    assert "toy_learner" in line and "quick" in line


def test_tutorial_learner_trains_and_beats_the_global_mean(installed_plugin, synthetic_data, synthetic_split):
    from metarec.registry import get_learner

    cls = get_learner(NAME)
    train, test = synthetic_split.train, synthetic_split.test
    learner = cls.from_settings(synthetic_data.schema, overrides={"epochs": 4, "batch_size": 16}, seed=0)
    start = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    learner.meta_fit(train)

    pred = learner.predict(test)
    assert pred.shape == test.query_ratings.shape
    mask = test.query_mask
    mae = float((pred - test.query_ratings).abs()[mask].mean())

    # The global mean: the mean of every training rating (support and query), for every query.
    mu = torch.cat([train.support_ratings[train.support_mask], train.query_ratings[train.query_mask]]).mean()
    mae_mean = float((mu - test.query_ratings).abs()[mask].mean())
    assert mae < 0.85 * mae_mean, f"tutorial learner MAE {mae:.4f} does not beat the global mean's {mae_mean:.4f}"

    # Reptile's point: every weight, the feature embeddings included, is meta-learned.
    for name, p in learner.model.named_parameters():
        assert not torch.equal(p.detach(), start[name]), f"{name} was never updated"

    # Same seed, same numbers: a second (short) run reproduces the predictions exactly.
    one = lambda: cls.from_settings(synthetic_data.schema, overrides={"epochs": 1}, seed=0).meta_fit(train).predict(test)  # noqa: E731
    assert torch.equal(one(), one())


def test_tutorial_page_python_example_runs(installed_plugin, monkeypatch):
    import re

    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text("utf-8"), re.S | re.M)
    assert blocks, "the tutorial page lost its Python example"
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": "docs_tutorial"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/tutorial.md [python block {i + 1}]", "exec"), namespace)
    assert namespace["pred"].shape == namespace["split"].test.query_ratings.shape


def test_tutorial_plugin_passes_its_own_contract_test(installed_plugin):
    """The plugin's test file that the page shows (check_learner through the entry point) passes."""
    import runpy

    test_file = PACKAGE / "tests" / "test_contract.py"
    assert '--8<-- "docs/tutorial/toy_learner/tests/test_contract.py"' in PAGE.read_text("utf-8")
    namespace = runpy.run_path(str(test_file))
    namespace["test_reptile_keeps_the_learner_contract"]()
