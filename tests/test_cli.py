"""The metarec command group (click's CliRunner)."""

from __future__ import annotations

from click.testing import CliRunner

import metarec
from metarec.cli import main


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for cmd in ("bench", "datasets", "methods", "report", "tune"):
        assert cmd in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert metarec.__version__ in result.output


def test_methods_table_lists_every_method_with_its_source():
    result = CliRunner().invoke(main, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.output  # every registered learner imports
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 4}
    for name in ("mamo", "global-mean", "baseline-predictor", "profile-mlp", "profile-mlp-finetune"):
        assert "metarec" in rows[name], name
    for name in ("melu", "metacs-dnn", "s2meta", "rum-item", "rum-feature"):
        assert "baselines" in rows[name], name


def test_unknown_command_fails_cleanly():
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code != 0
    assert "No such command" in result.output


def test_make_help_lists_every_target():
    import re
    import shutil
    import subprocess
    from pathlib import Path

    makefile = Path(__file__).resolve().parents[1] / "Makefile"
    phony = re.search(r"^\.PHONY:(.*)$", makefile.read_text(), re.M).group(1).split()
    if shutil.which("make"):
        text = subprocess.run(["make", "-s", "-f", str(makefile), "help"], capture_output=True, text=True,
                              cwd=makefile.parent, check=True).stdout
    else:  # pragma: no cover - the echo lines themselves
        text = makefile.read_text().split("help:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^make (\S+)", text, re.M))
    assert set(phony) <= listed, set(phony) - listed
