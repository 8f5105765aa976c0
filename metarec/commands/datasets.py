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
@click.argument("name", metavar="NAME")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="custom: the dataset schema TOML; built-in: a TOML with a [loader] table of options.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="Seed of the train/test user split.")
@click.option("--n-support", type=click.IntRange(1, 10_000), default=None, help="Support ratings per user (paper: 15; 5-15, query fixed to the last 5).")
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
    """Counts of the cold-start protocol on dataset NAME: ml-1m, yelp, book-crossing, synthetic, or custom
    (your own data: `metarec datasets info custom --config SCHEMA.toml`)."""
    from metarec.config import ConfigError
    from metarec.data import load_split
    from metarec.data.protocol import ProtocolError
    from metarec.data.readers import DataFormatError, DataNotFoundError
    from metarec.errors import UserError, one_line

    data_dir = data_dir or (ctx.obj or {}).get("data_dir")
    try:
        protocol = _protocol(overrides, n_support, tuning_fraction)
        split = load_split(name, data_dir=data_dir, protocol=protocol, seed=seed, offline=offline,
                           use_cache=not no_cache, config_path=config_path)
    except (DataNotFoundError, DataFormatError, ConfigError, ProtocolError, UserError, KeyError, ImportError) as exc:
        msg = one_line(exc)
        raise click.ClickException(msg.replace("use: -d custom --dataset-config", "use: metarec datasets info custom --config")) from None
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
    if r.get("unverified"):
        head.add_row("unverified", f"[yellow]{r['unverified']}[/]")
    for n, v in (r.get("non_canonical_files") or {}).items():
        head.add_row("  differs", f"{n}: {'' if ':' in v['md5'] else 'md5 '}{v['md5']} (official {v['official_md5']})")
    head.add_row("seed", str(r["seed"]))
    proto = r.get("protocol") or {}
    source = r.get("protocol_defaults_from") or {}

    def from_(key: str) -> str:
        return f" ({source[key]})" if source.get(key, "config") != "config" else ""

    if proto:
        order = proto.get("rating_order")
        head.add_row("rating order", f"{order}" + (f", order_seed {proto.get('order_seed')}" if order == "random" else "")
                     + from_("rating_order"))
        rule = proto.get("user_state_rule")
        detail = {"time_quantile": f"warm iff first rating before the {proto.get('user_time_quantile')} time quantile",
                  "id_order": f"first {proto.get('user_warm_fraction')} of users by {proto.get('id_order_by')} order warm",
                  "random": f"{proto.get('user_warm_fraction')} warm / {round(1 - proto.get('user_warm_fraction', 0.9), 6)} cold "
                            f"at random, order_seed {proto.get('order_seed')}"}.get(rule, "")
        head.add_row("user state", f"{rule}: {detail}{from_('user_state_rule')}")
        head.add_row("item state", f"warm iff more than {proto.get('item_cold_max_ratings')} ratings in the trimmed table"
                     + from_("item_cold_max_ratings"))
        head.add_row("time", str(r.get("time_source", "")))
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


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or ``2w`` -> seconds (an error naming the value otherwise)."""
    import re

    from metarec.config import ConfigError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not m:
        raise ConfigError(f"--older-than {text!r}: use a number with a unit s, m, h, d or w (e.g. 30d, 12h)")
    value = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    if not 0 < value <= 100 * 365 * 86400:
        raise ConfigError(f"--older-than {text!r} is out of range: allowed more than 0 up to 100 years")
    return value


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


@datasets.command("cache")
@click.option("--dataset", "dataset", default=None, help="Only this dataset's entries.")
@click.option("--older-than", default=None, metavar="AGE",
              help="Remove entries not used for AGE (e.g. 30d, 12h, 2w).")
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
@click.option("--dry-run", is_flag=True, help="With --older-than/--all: only show what would be removed.")
def cache_command(dataset: str | None, older_than: str | None, everything: bool, dry_run: bool) -> None:
    """List the processed-split cache (entries, sizes, last use), or prune it.

    The cache lives in $METAREC_CACHE_DIR, else ~/.cache/metarec/processed. Every entry is
    verified against its recorded sha256 when it is read; a damaged one is rebuilt.
    """
    import time

    from metarec.config import ConfigError
    from metarec.data import cache

    if older_than is not None and everything:
        raise ConfigError("--older-than and --all exclude each other: give one")
    entries = cache.list_entries(dataset)
    now = time.time()
    if older_than is None and not everything:
        console = Console(soft_wrap=True)
        table = Table(title=f"split cache: {cache.cache_root()}")
        for col in ("dataset", "entry", "seed", "data checksum", "size", "last used"):
            table.add_column(col)
        total = 0
        for stem in entries:
            info = cache.entry_summary(stem)
            size = cache.entry_size(stem)
            total += size
            age_d = (now - cache.entry_last_used(stem)) / 86400
            table.add_row(stem.parent.name, stem.name, str(info.get("seed", "?")), str(info.get("checksum", "?"))[:23],
                          _size(size), f"{age_d:.1f} days ago")
        console.print(table)
        console.print(f"{len(entries)} entries, {_size(total)} in {cache.cache_root()}")
        return
    limit = parse_duration(older_than) if older_than is not None else None
    if dry_run:
        doomed = [s for s in entries if everything or now - cache.entry_last_used(s) > (limit or 0)]
        for stem in doomed:
            click.echo(f"would remove {stem} ({_size(cache.entry_size(stem))})")
        click.echo(f"{len(doomed)} entries, {_size(sum(cache.entry_size(s) for s in doomed))} would be freed")
        return
    removed = cache.prune(older_than_s=limit, everything=everything, dataset=dataset)
    for stem, size in removed:
        click.echo(f"removed {stem} ({_size(size)})")
    click.echo(f"{len(removed)} entries removed, {_size(sum(s for _, s in removed))} freed; "
               f"{len(cache.list_entries(dataset))} left")


@datasets.command("download")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help=DATA_DIR_HELP)
@click.option("--force", is_flag=True, help="Download again even if the files are present.")
@click.option("--url", "urls", multiple=True, metavar="[OFFICIAL=]MIRROR",
              help="Download from a mirror: OFFICIAL=MIRROR, or just MIRROR for the dataset's main archive.")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=3600), default=60.0, show_default=True,
              help="Network timeout in seconds (0.1-3600).")
@click.option("--allow-unverified", is_flag=True,
              help="Accept an archive that has no published checksum (the data is flagged unverified everywhere).")
@click.pass_context
def download(ctx: click.Context, name: str, data_dir: str | None, force: bool, urls: tuple[str, ...], timeout: float,
             allow_unverified: bool) -> None:
    """Fetch NAME's official files, verify their checksums and extract them safely."""
    from metarec.data.catalog import dataset_dir, get_entry
    from metarec.data.download import download_dataset

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
        status = download_dataset(entry, data_dir, force=force, urls=mirrors, timeout=timeout, progress=progress,
                                  allow_unverified=allow_unverified)
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    from metarec.data.download import unverified_files

    for n, v in unverified_files(dataset_dir(entry, data_dir)).items():
        console.print(f"[yellow]unverified[/]: {n} from {v['url']} ({v['reason']})")
    click.echo(f"{name}: files in {dataset_dir(entry, data_dir)}")
    for n, s in status.items():
        click.echo(f"  {n}: {s}")
    for res in entry.resources:
        if res.note:
            click.echo(f"  note: {res.note}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(datasets())
