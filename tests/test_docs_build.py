"""The documentation site builds with ``mkdocs build --strict``, and its generated parts are right.

The strict build fails on a broken link, a missing API reference target, a page missing from
the nav, a public module no API page renders, a CLI command that does not load, or a snippet
whose file is gone (see docs/hooks.py and mkdocs.yml).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs_missing() -> str | None:
    for mod in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_click"):
        if importlib.util.find_spec(mod.split(".")[0]) is None:
            return mod
    return None


@pytest.mark.skipif(_mkdocs_missing() is not None, reason=f"docs tools not installed ({_mkdocs_missing()}); pip install -e '.[docs]'")
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    # the generated parts are really there
    cli = (site / "reference" / "cli" / "index.html").read_text("utf-8")
    for command in ("metarec bench", "metarec methods"):
        assert command in cli
    assert "(unavailable)" not in cli
    api = (site / "reference" / "api" / "learners" / "index.html").read_text("utf-8")
    assert 'id="metarec.learner.Learner"' in api and "Base class of every method" in api
    tutorial = (site / "tutorial" / "index.html").read_text("utf-8")
    assert "ReptileConfig" in tutorial and "toy_learner.reptile:Reptile" in tutorial  # the included files
    results = (site / "results" / "index.html").read_text("utf-8")
    assert "Generated at build time" in results
    assert "<!-- metarec:" not in (site / "methods" / "melu" / "index.html").read_text("utf-8")


def test_every_public_module_has_an_api_page():
    hooks = _load("metarec_docs_hooks", REPO / "docs" / "hooks.py")
    missing = [m for m in hooks.public_modules() if m not in hooks.documented_modules()]
    assert not missing, f"add '::: <module>' to a page under docs/reference/api for: {missing}"


def test_presets_table_comes_from_the_learner_class():
    hooks = _load("metarec_docs_hooks", REPO / "docs" / "hooks.py")
    from metarec.methods.maml import MAMLConfig

    table = hooks.presets_table("metarec.methods.maml", "MAMLLearner")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    import dataclasses

    assert [r.split("|")[1].strip().strip("`") for r in rows] == [f.name for f in dataclasses.fields(MAMLConfig)]
    assert "| `inner_lr` | `5e-06` |" in table


def _bench(out: Path) -> dict:
    from click.testing import CliRunner

    from metarec.cli import main

    result = CliRunner().invoke(main, [
        "bench", "--methods", "global-mean,baseline-predictor", "--dataset", "synthetic", "--seeds", "0,1",
        "--out", str(out), "--no-progress", "--n-boot", "50", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text("utf-8"))


def test_results_page_is_generated_from_results_files(tmp_path):
    gen = _load("metarec_docs_gen_results", REPO / "docs" / "gen_results.py")
    empty = gen.render(tmp_path / "nothing")
    assert "No benchmark results are committed yet" in empty
    assert "No speed measurements are committed yet" in empty

    results_dir = tmp_path / "results"
    data = _bench(results_dir / "smoke")
    page = gen.render(results_dir)
    assert "No benchmark results are committed yet" not in page
    cell = data["methods"]["baseline-predictor"]["cells"]["W-C"]["mae"]
    expected = f"{cell['mean']:.4f} ± {cell['std']:.4f}<br><small>[{cell['ci'][0]:.4f}, {cell['ci'][1]:.4f}]</small>"
    assert expected in page, "the page must show exactly the numbers of results.json"
    assert "**global-mean**" in page and "**baseline-predictor**" in page
    # RMSE, the within-user NDCG and the paper's clip NDCG have rows of their own
    assert "|  | RMSE |" in page and "|  | NDCG@3 per user |" in page and "|  | clip NDCG@3 (A.2.3) |" in page
    assert "Notes: how these results were produced" not in page
    (results_dir / "smoke" / "NOTES.md").write_text("# How\n\n* s2Meta ran 1 epoch, not 20.\n")
    page = gen.render(results_dir)
    assert '???+ note "Notes: how these results were produced' in page and "    * s2Meta ran 1 epoch, not 20." in page
    assert "    **How**" in page

    speed = results_dir / "l2l_speed_cpu_20260101T000000Z.json"  # the shape benchmarks/bench_l2l_speed.py writes
    speed.write_text(json.dumps({
        "what": "median wall time per meta-batch", "method": "melu", "users_per_batch": 32,
        "results": [{"inner_steps": 1, "order": "first", "median_s": {"learn2learn": 0.25, "torch.func": 0.0125},
                     "ratio_l2l_over_engine": 20.0}],
        "environment": {"device": "cpu", "torch": "2.13.0"},
    }))
    page = gen.render(results_dir)
    assert "No speed measurements are committed yet" not in page
    assert "| inner_steps | order | median_s.learn2learn | median_s.torch.func | ratio_l2l_over_engine |" in page
    assert "| 1 | first | 0.25 | 0.0125 | 20 |" in page
    # one measurement without a list of records (benchmarks/bench_mamo_speed.py): its summaries as a row
    (results_dir / "mamo_speed_ml-1m_cpu_20260101T000000Z.json").write_text(json.dumps({
        "what": "one MAMO epoch", "epoch_s": {"lowrank": 7.0, "loop": 98.0}, "ratio_loop_over": {"lowrank": 14.0},
        "batch_s": {"lowrank": [0.1, 0.2]}, "config": {"embedding_dim": 100}, "environment": {"device": "cpu"},
    }))
    page = gen.render(results_dir)
    assert "| epoch_s.lowrank | epoch_s.loop | ratio_loop_over.lowrank |" in page
    assert "| 7 | 98 | 14 |" in page


def test_paper_reference_matches_the_published_table():
    gen = _load("metarec_docs_gen_results", REPO / "docs" / "gen_results.py")
    ref = gen.load_reference(REPO / "docs" / "data" / "paper-table1.json")
    # the harness keeps its own transcription; the two must agree number for number
    bench_ref = REPO / "benchmarks" / "reference" / "mamo-table1.json"
    if bench_ref.exists():
        other = gen.load_reference(bench_ref)
        for ds, methods in ref.items():
            for method, entry in methods.items():
                for cell, metrics in entry["cells"].items():
                    for metric, value in metrics.items():
                        theirs = other[ds][method]["cells"][cell][metric]["mean"]
                        assert theirs == value["mean"], f"{ds} {method} {cell} {metric}: {theirs} != {value['mean']}"
    # spot checks against MAMO's Table 1 (KDD 2020)
    assert ref["ml-1m"]["mamo"]["cells"]["C-C"]["mae"]["mean"] == 0.8894
    assert ref["ml-1m"]["melu"]["cells"]["W-W"]["ndcg@3"]["mean"] == 0.8904
    assert ref["book-crossing"]["rum-feature"]["cells"]["W-C"]["mae"]["mean"] == 2.0837
    assert ref["book-crossing"]["s2meta"]["cells"]["C-C"]["ndcg@3"]["mean"] == 0.8422
    for ds in ("ml-1m", "book-crossing"):
        assert sorted(ref[ds]) == sorted(gen.PAPER_METHODS)
        for cells in (m["cells"] for m in ref[ds].values()):
            assert sorted(cells) == ["C-C", "C-W", "W-C", "W-W"]
