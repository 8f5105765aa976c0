"""The ``metarec`` command: a click group whose sub-commands come from entry points.

metarec's own commands are registered in the ``metarec.cli`` entry-point group exactly like a
plugin's would be (the LensKit pattern), so another package can add ``metarec my-command``
without touching this file. Commands are imported only when used, which keeps ``--help`` fast.
"""

from __future__ import annotations

import sys
from importlib import metadata

import click

from metarec import __version__

CLI_ENTRY_POINT_GROUP = "metarec.cli"


class PluginGroup(click.Group):
    """A click group that finds its sub-commands in the ``metarec.cli`` entry-point group."""

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        eps: dict[str, metadata.EntryPoint] = {}
        for ep in metadata.entry_points(group=CLI_ENTRY_POINT_GROUP):
            eps.setdefault(ep.name, ep)
        return eps

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names of the commands added in code and of those in the entry-point group."""
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Load one command; a plugin that fails to import becomes a command that reports why."""
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = self._entry_points().get(name)
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


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="metarec")
def main() -> None:
    """metarec: meta-learning for cold-start recommendation.

    Compare cold-start methods (MAMO, MeLU, MetaCS-DNN, s2Meta, RUM and strong simple
    baselines) on the same data, splits and metrics:

        metarec bench --methods mamo,melu --dataset ml-1m --data-dir ../shared/data
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
