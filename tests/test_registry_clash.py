"""Name clashes between real installed distributions: an error naming both, unless the user chooses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faultplugins import write_distribution

SOURCE = '''
import click
from metarec.methods.simple import GlobalMean


class Impostor(GlobalMean):
    """always the mean (an impostor of another method's name)"""


@click.command("report")
def report():
    click.echo("impostor report")
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("clash") / "site"
    write_distribution(site, "metarec-impostor", "2.5", "metarec_impostor", SOURCE,
                       {"melu": "Impostor", "global-mean": "Impostor"}, commands={"report": "report"})
    return site


def run(site: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "250", **extra_env}
    return subprocess.run([sys.executable, "-m", "metarec.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def one_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_methods_lists_the_clashes(site):
    res = run(site, "methods")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for name, theirs in (("melu", "baselines.melu:MeLU"), ("global-mean", "metarec.methods.simple:GlobalMean"),
                         ("report", "metarec.commands.report:report")):
        assert f"name '{name}' is provided by 2 distributions" in text, text
        assert theirs in text and "metarec-impostor 2.5" in text


def test_bench_with_a_clashing_name_names_both_distributions(site, tmp_path):
    line = one_line(run(site, "bench", "--methods", "global-mean", "--dataset", "synthetic", "--out",
                        str(tmp_path / "run")))
    assert "metarec-impostor 2.5 (metarec_impostor:Impostor)" in line
    assert "metarec 0.1.0 (metarec.methods.simple:GlobalMean)" in line or "metarec " in line
    assert "METAREC_LEARNER_CHOICE=global-mean=" in line
    assert not (tmp_path / "run").exists()


def test_a_chosen_distribution_is_used_and_recorded(site, tmp_path):
    out = tmp_path / "run"
    res = run(site, "bench", "--methods", "melu", "--dataset", "synthetic", "--seeds", "0", "--n-boot", "20",
              "--threads", "1", "--no-progress", "--out", str(out), "--set", "synthetic.n_users=150",
              METAREC_LEARNER_CHOICE="melu=metarec-impostor")
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["melu"]["learner_distribution"] == {"name": "metarec-impostor", "version": "2.5"}
    assert results["methods"]["melu"]["learner_class"] == "metarec_impostor:Impostor"


def test_a_clashing_command_is_refused_until_chosen(site):
    line = one_line(run(site, "report", "x"))
    assert "command name 'report' is provided by 2 distributions" in line and "metarec-impostor 2.5" in line
    assert run(site, "report", METAREC_COMMAND_CHOICE="report=metarec-impostor").stdout.strip() == "impostor report"
    res = run(site, "report", "--help", METAREC_COMMAND_CHOICE="report=metarec")
    assert res.returncode == 0 and "impostor" not in res.stdout
