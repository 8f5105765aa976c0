"""``metarec recommend``: the k best items for a new user of a model folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click


def read_user(path: str | Path) -> dict[str, Any]:
    """A user's profile: a JSON object of raw feature values."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path}: expected a JSON object of user features, e.g. {{\"gender\": \"F\"}}")
    return data


def read_ratings(path: str | Path) -> list[tuple[str, float]]:
    """``item,rating`` rows (a header naming ``item`` or ``item_id`` and ``rating``), oldest first."""
    path = Path(path)
    rows = list(csv.reader(path.read_text("utf-8").splitlines()))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    item_col = next((header.index(n) for n in ("item", "item_id", "itemid", "movie_id") if n in header), None)
    if item_col is None or "rating" not in header:
        raise click.ClickException(f"{path}: line 1: the header must name an item column (item or item_id) and rating, "
                                   f"got {', '.join(rows[0])}")
    rating_col = header.index("rating")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(item_col, rating_col):
            raise click.ClickException(f"{path}: line {n}: expected {len(header)} fields, got {len(row)}")
        value = row[rating_col].strip()
        try:
            rating = float(value)
        except ValueError:
            raise click.ClickException(f"{path}: line {n}: rating {value!r} is not a number") from None
        out.append((row[item_col].strip(), rating))
    return out


@click.command("recommend")
@click.argument("model", type=click.Path(file_okay=False))
@click.option("--user", "user_file", type=click.Path(dir_okay=False, exists=True), help="JSON file of the user's features.")
@click.option("--ratings", "ratings_file", type=click.Path(dir_okay=False, exists=True),
              help="CSV of the user's ratings (item,rating), oldest first.")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Items to recommend.")
@click.option("--item-state", type=click.Choice(["warm", "cold"]), help="Only warm or only cold items.")
@click.option("--candidates", type=click.Path(dir_okay=False, exists=True), help="File of item ids to rank, one per line.")
@click.option("--include-rated", is_flag=True, help="Also rank the items the user rated.")
@click.option("--skip-unknown", is_flag=True, help="Skip rated item ids that are not in the catalogue (with a warning).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--allow-other-version", is_flag=True, help="Load a folder written by another metarec version.")
def recommend(model: str, user_file: str | None, ratings_file: str | None, k: int, item_state: str | None,
              candidates: str | None, include_rated: bool, skip_unknown: bool, as_json: bool,
              allow_other_version: bool) -> None:
    """Recommend K items of MODEL (a `metarec fit` folder) to a new user.

    \b
    Example:
      metarec recommend models/mamo --user user.json --ratings ratings.csv -k 10
    """
    import warnings

    from rich.console import Console
    from rich.table import Table

    from metarec.serving import ModelFolderError, RecommendError, load_model

    user = read_user(user_file) if user_file else {}
    ratings = read_ratings(ratings_file) if ratings_file else []
    cands = None
    if candidates:
        cands = [line.strip() for line in Path(candidates).read_text("utf-8").splitlines() if line.strip()]
    err = Console(stderr=True)
    try:
        m = load_model(model, allow_other_version=allow_other_version)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped items are in rec.notes
            rec = m.recommend(user=user, ratings=ratings, k=k, exclude_rated=not include_rated, candidates=cands,
                              item_state=item_state, unknown_items="skip" if skip_unknown else "error")
    except (ModelFolderError, RecommendError) as exc:
        where = f"{ratings_file}: " if ratings_file and "ratings[" in str(exc) else ""
        raise click.ClickException(where + str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model": m.method, **rec.to_dict()}, indent=2))
        return
    for note in rec.notes:
        err.print(f"[yellow]note[/]: {note}", highlight=False)
    has_titles = any(t is not None for t in rec.titles)
    table = Table(title=f"{m.method}: top {len(rec.item_ids)} of {rec.n_candidates} items "
                        f"for a new user with {rec.n_ratings_used} rating(s)")
    table.add_column("rank", justify="right")
    table.add_column("item")
    if has_titles:
        table.add_column("title")
    table.add_column("predicted", justify="right")
    table.add_column("state")
    for r, i, t, p, s in zip(rec.ranks, rec.item_ids, rec.titles, rec.predicted, rec.states):
        table.add_row(str(r), i, *([t or ""] if has_titles else []), f"{p:.3f}", s)
    Console().print(table)
