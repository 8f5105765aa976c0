"""``metarec datasets``: where each dataset is, whether it is verified, what the protocol makes of it.

* ``metarec datasets`` -- every dataset with its status: present / verified / non-canonical /
  missing, and how many processed splits are cached;
* ``metarec datasets info NAME`` -- load (or read from the cache) and print the counts of the
  protocol: users kept, train/test, warm/cold users and items, per-scenario query counts;
* ``metarec datasets download NAME`` -- fetch the official archives, verify and extract them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from metarec.schema import SCENARIOS

DATA_DIR_HELP = "Directory holding <dataset>/ folders (default: $METAREC_DATA_DIR, then ~/.cache/metarec/data)."


@click.group("datasets", invoke_without_command=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.pass_context
def datasets(ctx: click.Context, data_dir: str | None) -> None:
    """List datasets with their status (present, verified / non-canonical, cached)."""
    ctx.ensure_object(dict)
    ctx.obj["data_dir"] = data_dir
    if ctx.invoked_subcommand is None:
        _list(data_dir)


def _list(data_dir: str | None) -> None:
    from metarec.data import cache
    from metarec.data.catalog import CATALOG, dataset_dir, resolve_data_dir, verify

    console = Console()
    table = Table(title=f"metarec datasets (data dir: {resolve_data_dir(data_dir)})")
    for col in ("name", "location", "files", "status", "cached splits"):
        table.add_column(col)
    for name, entry in CATALOG.items():
        directory = dataset_dir(entry, data_dir)
        ver = verify(entry, directory)
        present = sum(s != "missing" for s in ver.status.values())
        if ver.missing:
            status = f"[red]missing[/] {', '.join(ver.missing)}"
        elif ver.non_canonical:
            status = f"[yellow]non-canonical[/] ({', '.join(ver.non_canonical)} differ from the release)"
        elif ver.canonical:
            status = "[green]verified[/]"
        else:
            unverified = [n for n, s in ver.status.items() if s == "unverified"]
            status = f"present; unverified: {', '.join(unverified)} (no published checksum)"
        cached = [cache.entry_summary(p) for p in cache.list_entries(name)]
        current = sum(1 for c in cached if c.get("checksum") == ver.checksum) if not ver.missing else 0
        cached_txt = f"{len(cached)}" + (f" ({current} for these files)" if cached else "")
        table.add_row(name, str(directory), f"{present}/{len(ver.status)}", status, cached_txt)
    table.add_row("synthetic", "(generated)", "-", "[green]available[/]", "-")
    table.add_row("custom", "(--config your-schema.toml)", "-", "see docs: your own data", str(len(cache.list_entries("custom"))))
    console.print(table)


def _protocol(overrides: tuple[str, ...], n_support: int | None, tuning_fraction: float | None = None) -> Any:
    from metarec.config import build_config, parse_overrides
    from metarec.data.protocol import ProtocolConfig

    layer = parse_overrides(list(overrides))
    if n_support is not None:
        layer["n_support"] = n_support
    if tuning_fraction is not None:
        layer["tuning_fraction"] = tuning_fraction
    return build_config(ProtocolConfig, layer, where="protocol")


@datasets.command("info")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="custom: the dataset schema TOML; built-in: a TOML with a [loader] table of options.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/test user split.")
@click.option("--n-support", type=int, default=None, help="Support ratings per user (paper: 15; 5-15, query fixed to the last 5).")
@click.option("--protocol", "-p", "overrides", multiple=True, metavar="KEY=VALUE", help="Protocol setting, e.g. -p validation_fraction=0.1.")
@click.option("--tuning-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Set aside this share of the users as the tuning pool (metarec tune's default: 0.1) and show it.")
@click.option("--offline/--download", default=True, show_default=True, help="Download missing files (--download) or fail.")
@click.option("--no-cache", is_flag=True, help="Rebuild the split instead of reading the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.pass_context
def info(ctx: click.Context, name: str, data_dir: str | None, config_path: str | None, seed: int,
         n_support: int | None, overrides: tuple[str, ...], tuning_fraction: float | None, offline: bool, no_cache: bool,
         as_json: bool) -> None:
    """Counts of the cold-start protocol on dataset NAME."""
    from metarec.config import ConfigError
    from metarec.data import load_split
    from metarec.data.protocol import ProtocolError
    from metarec.data.readers import DataFormatError, DataNotFoundError

    data_dir = data_dir or (ctx.obj or {}).get("data_dir")
    try:
        protocol = _protocol(overrides, n_support, tuning_fraction)
        split = load_split(name, data_dir=data_dir, protocol=protocol, seed=seed, offline=offline,
                           use_cache=not no_cache, config_path=config_path)
    except (DataNotFoundError, DataFormatError, ConfigError, ProtocolError, KeyError, ImportError) as exc:
        raise click.ClickException(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)) from None
    report = _report(split)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    _print_report(report)


def _report(split: Any) -> dict[str, Any]:
    info = dict(split.info)
    parts = {"train": split.train, "test": split.test}
    if split.validation is not None:
        parts["validation"] = split.validation
    if getattr(split, "tuning", None) is not None:
        parts["tuning pool"] = split.tuning
    tasks = {}
    for name, ts in parts.items():
        s = ts.support_mask.sum(1)
        q = ts.query_mask.sum(1)
        tasks[name] = {"tasks": len(ts), "support_min": int(s.min()), "support_max": int(s.max()),
                       "query_min": int(q.min()), "query_max": int(q.max())}
    info["tasks"] = tasks
    return info


def _print_report(r: dict[str, Any]) -> None:
    console = Console()
    canonical = r.get("canonical")
    flag = {True: "[green]yes[/]", False: "[yellow]NO (non-canonical)[/]", None: "unverifiable"}[canonical]
    head = Table(title=f"{r['dataset']}: {r.get('title', '')}", show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    head.add_row("data", r.get("data_dir") or r.get("config_path") or "(generated)")
    head.add_row("checksum", str(r.get("checksum")))
    head.add_row("canonical", flag)
    for n, v in (r.get("non_canonical_files") or {}).items():
        head.add_row("  differs", f"{n}: md5 {v['md5']} (official {v['official_md5']})")
    head.add_row("seed", str(r["seed"]))
    cache = r.get("cache", {})
    head.add_row("cache", ("hit" if cache.get("hit") else "built") + f" in {r.get('load_seconds', '?')} s")
    console.print(head)

    paper = r.get("paper_counts", {})
    counts = Table(title="protocol counts")
    counts.add_column("count")
    counts.add_column("value", justify="right")
    counts.add_column("paper", justify="right")
    counts.add_column("difference", justify="right")

    def row(label: str, key: str) -> None:
        v = r.get(key)
        p = paper.get(key)
        counts.add_row(label, f"{v:,}" if isinstance(v, int) else str(v), "" if p is None else f"{p:,}",
                       "" if p is None or not isinstance(v, int) else f"{v - p:+,}")

    row("users in table", "users_total")
    row("users kept (enough ratings)", "users_kept")
    row("users dropped: too few ratings", "users_dropped_too_few_ratings")
    row("train users", "train_users")
    row("test users", "test_users")
    if r.get("validation_users"):
        row("validation users", "validation_users")
    if r.get("tuning_users"):
        protocol = r.get("protocol") or {}
        counts.add_row(
            "tuning-pool users (every seed)",
            f"{r['tuning_users']:,} ({r.get('tuning_users_warm', 0):,} warm, {r.get('tuning_users_cold', 0):,} cold)",
            "", f"fraction {protocol.get('tuning_fraction')}, pool seed {protocol.get('tuning_seed')}",
        )
    row("warm users", "users_warm")
    row("cold users", "users_cold")
    if "split_time" in r:
        counts.add_row("user split time", f"{r['split_time']:.0f} = {r.get('split_time_utc', '')}", "", "")
    row("items in trimmed table", "items_in_trimmed_table")
    row("warm items", "items_warm")
    row("cold items", "items_cold")
    for part, t in r.get("tasks", {}).items():
        s = f"{t['support_min']}" if t["support_min"] == t["support_max"] else f"{t['support_min']}-{t['support_max']}"
        q = f"{t['query_min']}" if t["query_min"] == t["query_max"] else f"{t['query_min']}-{t['query_max']}"
        counts.add_row(f"{part} tasks: support / query per task", f"{t['tasks']:,} tasks: {s} / {q}", "", "")
    console.print(counts)

    scen = Table(title="query ratings per cold-start scenario")
    scen.add_column("scenario")
    parts = [p for p in ("train", "test", "validation", "tuning") if r.get(f"query_scenarios_{p}")]
    for p in parts:
        scen.add_column("tuning pool" if p == "tuning" else p, justify="right")
    for s in SCENARIOS:
        scen.add_row(s, *[f"{r[f'query_scenarios_{p}'][s]:,}" for p in parts])
    scen.add_row("total", *[f"{sum(r[f'query_scenarios_{p}'].values()):,}" for p in parts])
    console.print(scen)

    drops = r.get("load_drops") or {}
    if drops:
        d = Table(title="records dropped while loading (documented rules)")
        d.add_column("reason")
        d.add_column("count", justify="right")
        for k, v in drops.items():
            d.add_row(k, f"{v:,}")
        console.print(d)
    for note in r.get("data_notes", []):
        console.print(f"note: {note}")


@datasets.command("download")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--force", is_flag=True, help="Download again even if the files are present.")
@click.option("--url", "urls", multiple=True, metavar="[OFFICIAL=]MIRROR",
              help="Download from a mirror: OFFICIAL=MIRROR, or just MIRROR for the dataset's main archive.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Network timeout in seconds.")
@click.pass_context
def download(ctx: click.Context, name: str, data_dir: str | None, force: bool, urls: tuple[str, ...], timeout: float) -> None:
    """Fetch NAME's official files, verify their checksums and extract them safely."""
    from metarec.data.catalog import dataset_dir, get_entry
    from metarec.data.download import DownloadError, download_dataset

    data_dir = data_dir or (ctx.obj or {}).get("data_dir")
    try:
        entry = get_entry(name)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from None
    mirrors: dict[str, str] = {}
    for u in urls:
        if "=" in u and not u.split("=", 1)[0].endswith(("?", "&")) and "://" in u.split("=", 1)[0]:
            official, mirror = u.split("=", 1)
            mirrors[official] = mirror
        else:
            mirrors[entry.resources[0].url] = u
    console = Console(stderr=True)
    last = {"pct": -1}

    def progress(url: str, done: int, total: int | None) -> None:
        if total:
            pct = int(100 * done / total)
            if pct // 10 != last["pct"] // 10:
                last["pct"] = pct
                console.print(f"  {url}: {pct}%")

    try:
        status = download_dataset(entry, data_dir, force=force, urls=mirrors, timeout=timeout, progress=progress)
    except (DownloadError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{name}: files in {dataset_dir(entry, data_dir)}")
    for n, s in status.items():
        click.echo(f"  {n}: {s}")
    for res in entry.resources:
        if res.note:
            click.echo(f"  note: {res.note}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(datasets())
