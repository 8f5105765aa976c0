"""``metarec methods``: list the registered learners (and any name two distributions claim)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from metarec.registry import LEARNER_CHOICE_ENV, available_learners, learner_clashes


@click.command("methods")
@click.option("--verbose", "-v", is_flag=True, help="Show full tracebacks of plugins that failed to import.")
def methods(verbose: bool) -> None:
    """List every learner: built-in ones and plugins from the metarec.learners entry points.

    A name provided by two distributions is listed as a clash (unusable until one is chosen
    with METAREC_LEARNER_CHOICE=name=distribution).
    """
    console = Console(soft_wrap=True)
    ok, failed = available_learners()
    table = Table(title="metarec learners")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("source package")
    table.add_column("distribution")
    table.add_column("presets")
    table.add_column("protocol")
    for name, entry in ok.items():
        cls = entry.load()
        presets = ", ".join(getattr(cls, "presets", {}) or {}) or "-"
        dist = f"{entry.distribution} {entry.version or ''}".strip() if entry.distribution else "-"
        table.add_row(name, entry.description, entry.source, dist, presets, getattr(cls, "protocol", "user-cold"))
    console.print(table)
    from metarec.cli import COMMAND_CHOICE_ENV, command_entries

    command_clashes = {n: c for n, (_, c) in command_entries().items() if c}
    for name, message in {**learner_clashes(), **command_clashes}.items():
        console.print(f"[red]clash:[/] {message}")
    for f in failed:
        console.print(
            f"[yellow]warning:[/] learner [bold]{f.name}[/] from package {f.source} ({f.target}) "
            f"was skipped: {f.error}"
        )
        if verbose:
            console.print(f.traceback)
    if learner_clashes() or command_clashes:
        console.print(f"(a clashing name is unusable until you choose: {LEARNER_CHOICE_ENV}=NAME=DISTRIBUTION "
                      f"for a learner, {COMMAND_CHOICE_ENV}=NAME=DISTRIBUTION for a command)")
