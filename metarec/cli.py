"""The ``metarec`` command: a click group whose sub-commands come from entry points.

metarec's own commands are registered in the ``metarec.cli`` entry-point group exactly like a
plugin's would be (the LensKit pattern), so another package can add ``metarec my-command``
without touching this file. Commands are imported only when used, which keeps ``--help`` fast.
Two distributions claiming one command name is an error naming both, unless one is chosen with
``METAREC_COMMAND_CHOICE=name=distribution`` (see :mod:`metarec.registry`).

A user's mistake (an unknown name, a bad value, a malformed data file, a usage error) is printed
as ONE line on stderr, ``metarec <command>: error: <message>``, with exit status 2; ``--debug``
(or ``METAREC_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Any

import click

from metarec import __version__
from metarec.errors import USER_ERROR_EXIT, UserError, one_line

CLI_ENTRY_POINT_GROUP = "metarec.cli"
COMMAND_CHOICE_ENV = "METAREC_COMMAND_CHOICE"
DEBUG_ENV = "METAREC_DEBUG"


def _command_providers() -> dict[str, list[tuple[Any, metadata.EntryPoint]]]:
    from metarec.registry import Provider

    out: dict[str, list[tuple[Any, metadata.EntryPoint]]] = {}
    for ep in metadata.entry_points(group=CLI_ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        prov = Provider(ep.value, getattr(dist, "name", None), getattr(dist, "version", None), "entry-point")
        out.setdefault(ep.name, []).append((prov, ep))
    return out


def command_entries() -> dict[str, tuple[metadata.EntryPoint | None, str | None]]:
    """``{name: (entry point, None)}`` or ``{name: (None, clash message)}`` of the CLI commands."""
    from metarec.registry import resolve_providers

    out: dict[str, tuple[metadata.EntryPoint | None, str | None]] = {}
    for name, pairs in _command_providers().items():
        chosen, clash = resolve_providers(name, [p for p, _ in pairs], COMMAND_CHOICE_ENV, "command")
        ep = next((e for p, e in pairs if p == chosen), None) if chosen else None
        out[name] = (ep, clash)
    return out


class PluginGroup(click.Group):
    """A click group that finds its sub-commands in the ``metarec.cli`` entry-point group."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names of the commands added in code and of those in the entry-point group."""
        return sorted(set(super().list_commands(ctx)) | set(command_entries()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Load one command; a plugin that fails to import becomes a command that reports why."""
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep, clash = command_entries().get(name, (None, None))
        if clash:
            @click.command(name=name, help=f"(unavailable) {clash}",
                           context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
            def clashing() -> None:
                raise click.ClickException(clash)

            return clashing
        if ep is None:
            return None
        try:
            cmd = ep.load()
        except Exception as exc:  # a broken plugin command must not break the others
            message = f"command {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"

            @click.command(name=name, help=f"(unavailable) {message}")
            def broken() -> None:
                raise click.ClickException(message)

            return broken
        if not isinstance(cmd, click.Command):
            raise click.ClickException(f"entry point {ep.value} is not a click command")
        return cmd

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command; user errors become one line on stderr and exit status 2."""
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        where = _command_name(argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except (click.ClickException, UserError) as exc:
            if debug:
                raise
            message = exc.format_message() if isinstance(exc, click.ClickException) else one_line(exc)
            click.echo(f"{where}: error: {' '.join(message.split())}", err=True)
            sys.exit(USER_ERROR_EXIT)
        sys.exit(rv if isinstance(rv, int) else 0)


def _command_name(argv: list[str]) -> str:
    words = ["metarec"]
    for a in argv:
        if a.startswith("-"):
            continue
        words.append(a)
        if len(words) == 3 or a not in ("datasets",):
            break
    return " ".join(words)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="metarec")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also METAREC_DEBUG=1).")
def main(debug: bool) -> None:
    """metarec: meta-learning for cold-start recommendation.

    Compare cold-start methods (MAMO, MeLU, MetaCS-DNN, s2Meta, RUM and strong simple
    baselines) on the same data, splits and metrics:

        metarec bench --methods mamo,melu --dataset ml-1m --data-dir ../shared/data
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
