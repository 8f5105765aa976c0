"""``metarec methods``: list the registered learners."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from metarec.registry import available_learners


@click.command("methods")
@click.option("--verbose", "-v", is_flag=True, help="Show full tracebacks of plugins that failed to import.")
def methods(verbose: bool) -> None:
    """List every learner: built-in ones and plugins from the metarec.learners entry points."""
    console = Console()
    ok, failed = available_learners()
    table = Table(title="metarec learners")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("source package")
    table.add_column("presets")
    for name, entry in ok.items():
        cls = entry.load()
        presets = ", ".join(getattr(cls, "presets", {}) or {}) or "-"
        table.add_row(name, entry.description, entry.source, presets)
    console.print(table)
    for f in failed:
        console.print(
            f"[yellow]warning:[/] learner [bold]{f.name}[/] from package {f.source} ({f.target}) "
            f"was skipped: {f.error}"
        )
        if verbose:
            console.print(f.traceback)
