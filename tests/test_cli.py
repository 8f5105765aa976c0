"""The metarec command group (click's CliRunner)."""

from __future__ import annotations

from click.testing import CliRunner

import metarec
from metarec.cli import main


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for cmd in ("bench", "datasets", "methods", "report"):
        assert cmd in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert metarec.__version__ in result.output


def test_methods_table_lists_builtins_with_their_source():
    result = CliRunner().invoke(main, ["methods"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "mamo" in result.output
    assert "global-mean" in result.output
    assert "source package" in result.output


def test_unknown_command_fails_cleanly():
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code != 0
    assert "No such command" in result.output
