"""A cache of processed splits, so that a second run starts in about a second.

A split is stored as one ``.npz`` (tensors and id arrays) plus one ``.json`` (schema, protocol,
report) through :func:`metarec.checkpoint.save_state` -- no pickle anywhere; loading uses
``allow_pickle=False``. The file name is a hash of everything that determines the tasks: the data
checksum, the loader's version and options, the protocol config and the seed. Any change makes a
new key, so a stale entry is never read; an unreadable entry counts as a miss and is rewritten.

Location: ``$METAREC_CACHE_DIR`` if set, else ``<user cache>/processed``
(``~/.cache/metarec/processed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from metarec.checkpoint import load_state, save_state, state_exists
from metarec.data.catalog import user_cache_root
from metarec.data.protocol import Split
from metarec.schema import FeatureSchema
from metarec.tasks import FeatureTable, TaskSet

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "METAREC_CACHE_DIR"
#: Bumped when the stored layout changes.
CACHE_FORMAT = "metarec-split-1"

_TASK_FIELDS = (
    "user_index", "support_items", "support_ratings", "support_mask",
    "query_items", "query_ratings", "query_mask", "query_scenario",
)


def cache_root() -> Path:
    """Folder of processed-split caches: ``$METAREC_CACHE_DIR`` or ``<user cache>/processed``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else user_cache_root() / "processed"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able ``parts`` (key order does not matter)."""
    text = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_path(dataset: str, key: str) -> Path:
    """Stem of a cache entry (see :func:`metarec.checkpoint.save_state` for its files)."""
    return cache_root() / dataset / f"split-{key}"


def _table_state(t: FeatureTable) -> dict[str, Any]:
    return {
        "features": [f.to_dict() for f in t.features],
        "columns": {k: v.cpu() for k, v in t.columns.items()},
        "ids": np.asarray(t.ids, dtype=str),
    }


def _table_from_state(s: Mapping[str, Any]) -> FeatureTable:
    from metarec.schema import Feature

    return FeatureTable(tuple(Feature.from_dict(f) for f in s["features"]), dict(s["columns"]), np.asarray(s["ids"]))


def save_split(path: str | Path, split: Split) -> None:
    """Write ``split`` at ``path`` (atomic: readers see the whole entry or none)."""
    ref = split.train
    parts = {"train": split.train, "test": split.test}
    if split.validation is not None:
        parts["validation"] = split.validation
    if split.tuning is not None:
        parts["tuning"] = split.tuning
    state = {
        "format": CACHE_FORMAT,
        "schema": ref.schema.to_dict(),
        "users": _table_state(ref.users),
        "items": _table_state(ref.items),
        "parts": {name: {**{f: getattr(ts, f).cpu() for f in _TASK_FIELDS}, "info": json.dumps(ts.info, default=str)}
                  for name, ts in parts.items()},
        "info": json.dumps(split.info, default=_json_default),
    }
    save_state(path, state)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def load_split(path: str | Path) -> Split | None:
    """The split stored at ``path``, or ``None`` when there is no usable entry.

    Every file of the entry is verified against its recorded sha256 first
    (:func:`metarec.checkpoint.load_state`); a damaged or tampered entry is logged as a miss
    (the caller rebuilds and overwrites it). A hit refreshes the entry's time of last use
    (what ``metarec datasets cache --older-than`` prunes by).
    """
    if not state_exists(path):
        return None
    try:
        state = load_state(path)
        if state.get("format") != CACHE_FORMAT:
            return None
        schema = FeatureSchema.from_dict(state["schema"])
        users = _table_from_state(state["users"])
        items = _table_from_state(state["items"])
        sets = {}
        for name, p in state["parts"].items():
            sets[name] = TaskSet(
                schema=schema, users=users, items=items,
                **{f: p[f] for f in _TASK_FIELDS},
                info=json.loads(p["info"]),
            )
        info = json.loads(state["info"])
        split = Split(train=sets["train"], test=sets["test"], validation=sets.get("validation"), info=info,
                      tuning=sets.get("tuning"))
    except Exception as exc:  # noqa: BLE001 - any damage is a miss; the caller rebuilds and overwrites it
        log.warning("split cache: ignoring damaged entry %s (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        return None
    _touch(Path(path))
    return split


def _touch(stem: Path) -> None:
    try:
        os.utime(stem.with_suffix(".json"))
    except OSError:
        pass


def entry_files(stem: Path) -> list[Path]:
    """Every file of a cache entry (its JSON and array files)."""
    return sorted(p for p in stem.parent.glob(f"{stem.name}.*") if p.is_file())


def entry_size(stem: Path) -> int:
    """Bytes on disk of one entry."""
    return sum(p.stat().st_size for p in entry_files(stem))


def entry_last_used(stem: Path) -> float:
    """When the entry was last written or read (Unix time)."""
    return stem.with_suffix(".json").stat().st_mtime


def prune(*, older_than_s: float | None = None, everything: bool = False, dataset: str | None = None) -> list[tuple[Path, int]]:
    """Delete entries unused for ``older_than_s`` seconds (or all); returns ``(stem, bytes)`` removed.

    Leftovers of interrupted writes (temporaries, array files no JSON names) go too.
    """
    if not everything and older_than_s is None:
        raise ValueError("prune needs older_than_s or everything=True")
    now = time.time()
    removed: list[tuple[Path, int]] = []
    for stem in list_entries(dataset):
        if everything or now - entry_last_used(stem) > float(older_than_s or 0):
            size = entry_size(stem)
            for p in entry_files(stem):
                p.unlink(missing_ok=True)
            removed.append((stem, size))
    root = cache_root()
    if root.is_dir():
        for p in root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
        for d in [root / dataset] if dataset else [x for x in root.iterdir() if x.is_dir()]:
            if everything and d.is_dir() and not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
    return removed


def list_entries(dataset: str | None = None) -> list[Path]:
    """Stems of the cached splits (of one dataset, or all)."""
    root = cache_root()
    dirs = [root / dataset] if dataset else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    out = []
    for d in dirs:
        if d.is_dir():
            out.extend(sorted(p.with_suffix("") for p in d.glob("split-*.json") if state_exists(p.with_suffix(""))))
    return out


def entry_summary(stem: Path) -> dict[str, Any]:
    """The report stored with an entry (read from the JSON only), for ``metarec datasets``."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text("utf-8"))
        # the split report is stored as a JSON string inside the state skeleton
        for k, v in meta["state"]["__dict__"]:
            if k == "info":
                return json.loads(v)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def tensors_equal(a: TaskSet, b: TaskSet) -> bool:
    """Whether two task sets hold identical tasks (used by tests and the cache check)."""
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in _TASK_FIELDS)


__all__ = ["CACHE_FORMAT", "ENV_CACHE_DIR", "cache_key", "cache_root", "entry_files", "entry_last_used", "entry_path",
           "entry_size", "list_entries", "load_split", "prune", "save_split"]
