"""Command-line options shared by commands: where work executes (``metarec bench`` and ``metarec tune``).

One definition of ``--executor``, ``--ray-address``, ``--cpus-per-run``, ``--gpus-per-run`` and
``--retries`` -- the choices, ranges and help -- so the two commands cannot drift apart; their
values land in the same :class:`~metarec.bench.config.BenchConfig` fields, which validate them
(e.g. ``--ray-address`` without ``--executor ray`` is refused there, for both).
"""

from __future__ import annotations

from typing import Any, Callable

import click

from metarec.config import DEVICE_CHOICES

#: Option name -> BenchConfig field.
EXECUTOR_FIELDS = {"executor": "executor", "ray_address": "ray_address", "cpus_per_run": "cpus_per_run",
                   "gpus_per_run": "gpus_per_run", "retries": "retries"}


def executor_options(unit: str, retry_note: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command with the executor options; ``unit`` names what executes ("run", "trial")."""
    options = [
        click.option("--executor", type=click.Choice(["local", "process", "inline", "ray"]),
                     help=f"Where {unit}s execute: local worker processes (local = process), the driver's own process "
                          "(inline), or Ray tasks (ray; pip install 'metarec[ray]'). [default: local]"),
        click.option("--ray-address", metavar="auto|HOST:PORT",
                     help="With --executor ray: the cluster to use (auto = the one started by `ray start`). "
                          "[default: $RAY_ADDRESS when set, else a local Ray instance on 127.0.0.1]"),
        click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True),
                     help=f"With --executor ray: CPUs each {unit} declares. [default: --threads]"),
        click.option("--gpus-per-run", type=click.FloatRange(min=0),
                     help=f"With --executor ray: GPUs each {unit} declares; fractions share a device "
                          f"(0.25 = four {unit}s per GPU). [default: 0]"),
        click.option("--retries", type=click.IntRange(min=0),
                     help=f"Retries of a {unit} whose worker or node died{retry_note}. [default: 2]"),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def executor_layer(values: dict[str, Any]) -> dict[str, Any]:
    """The given executor options (``None`` = not given) as bench settings for the CLI layer."""
    return {EXECUTOR_FIELDS[k]: v for k, v in values.items() if k in EXECUTOR_FIELDS and v is not None}


#: ``--device``, the same for every command that trains or predicts.
device_option = click.option("--device", type=click.Choice(DEVICE_CHOICES), help="auto = CUDA when available. [default: auto]")


__all__ = ["EXECUTOR_FIELDS", "device_option", "executor_layer", "executor_options"]
