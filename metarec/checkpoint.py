"""Safe, pickle-free state files: tensors in ``.npz``, everything else in JSON.

A state is any nesting of dicts/lists holding tensors, numpy arrays and JSON scalars (a
learner's ``state_dict()``, an optimizer's ``state_dict()``, counters). :func:`save_state`
writes ``<path>.npz`` + ``<path>.json`` atomically; :func:`load_state` rebuilds the nesting.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

_TENSOR = "__tensor__"
_ARRAY = "__ndarray__"


#: What a leaf converter returns for a node that is not one of its leaves.
NOT_A_LEAF = object()


def split_leaves(
    state: Any, leaf: Callable[[Any, str], Any], *, int_keys: bool = True, where: str = "a state file"
) -> Any:
    """The JSON skeleton of a nested state, with each leaf replaced by what ``leaf`` makes of it.

    Walks dicts, lists/tuples and JSON scalars (numpy scalars become Python ones); any other node
    goes to ``leaf(node, path)``, which stores it somewhere and returns its JSON entry (a dict with
    a marker key), or :data:`NOT_A_LEAF` for a type it does not store (a ``TypeError`` naming the
    path). ``path`` is dotted (``model.head.0.weight``, ``history[2]``). Integer dict keys (an
    optimizer's state) survive JSON as ``{"int": k}``; with ``int_keys=False`` a non-string key
    is an error. One walker for every safe format: :func:`flatten_state` (``.npz``) and the model
    folder's :func:`metarec.serving.folder.split_state` (safetensors).
    """

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Mapping):
            items = []
            for k, v in node.items():
                if not isinstance(k, str) and not (int_keys and isinstance(k, int)):
                    raise TypeError(f"state key {k!r} at {path or '<root>'} is not a string")
                items.append([_key(k), walk(v, f"{path}.{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(node, (list, tuple)):
            return {"__list__": [walk(v, f"{path}[{i}]") for i, v in enumerate(node)]}
        if isinstance(node, (np.integer, np.floating)):
            return node.item()
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        entry = leaf(node, path)
        if entry is NOT_A_LEAF:
            raise TypeError(f"cannot store {type(node).__name__} at {path or '<root>'} in {where}")
        return entry

    return walk(state, "")


def join_leaves(skeleton: Any, leaf: Callable[[dict], Any]) -> Any:
    """Inverse of :func:`split_leaves`: ``leaf(entry)`` rebuilds a leaf from its JSON entry (or
    returns :data:`NOT_A_LEAF` for a dict that is not one)."""
    if isinstance(skeleton, dict):
        value = leaf(skeleton)
        if value is not NOT_A_LEAF:
            return value
        if "__dict__" in skeleton:
            return {_unkey(k): join_leaves(v, leaf) for k, v in skeleton["__dict__"]}
        if "__list__" in skeleton:
            return [join_leaves(v, leaf) for v in skeleton["__list__"]]
    return skeleton


def leaf_entries(skeleton: Any) -> Iterator[dict]:
    """Every leaf entry (a dict that is neither a ``__dict__`` nor a ``__list__`` node) of a skeleton."""
    if isinstance(skeleton, dict):
        if "__dict__" in skeleton:
            for _, v in skeleton["__dict__"]:
                yield from leaf_entries(v)
        elif "__list__" in skeleton:
            for v in skeleton["__list__"]:
                yield from leaf_entries(v)
        else:
            yield skeleton


def flatten_state(state: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """Split a nested state into a JSON skeleton and a flat dict of arrays (for ``.npz``)."""
    arrays: dict[str, np.ndarray] = {}

    def leaf(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"a{len(arrays)}"
            arrays[key] = node.detach().cpu().numpy()
            return {_TENSOR: key, "dtype": str(node.dtype).replace("torch.", "")}
        if isinstance(node, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = node
            return {_ARRAY: key}
        return NOT_A_LEAF

    return split_leaves(state, leaf), arrays


def unflatten_state(skeleton: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def leaf(entry: dict) -> Any:
        if _TENSOR in entry:
            dtype = getattr(torch, entry.get("dtype", "float32"))
            return torch.from_numpy(np.array(arrays[entry[_TENSOR]])).to(dtype)
        if _ARRAY in entry:
            return np.array(arrays[entry[_ARRAY]])
        return NOT_A_LEAF

    return join_leaves(skeleton, leaf)


def _key(k: Any) -> Any:
    # Optimizer state dicts use integer keys; keep them integers through JSON.
    return {"int": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["int"] if isinstance(k, dict) and "int" in k else k


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_state(path: str | Path, state: Any) -> None:
    """Write ``state`` as ``<path>.json`` (structure) plus an array file it names, atomically.

    The array file's name carries a digest of its content and the JSON is written last, so a
    reader always finds the JSON paired with the arrays written with it -- a kill between the
    two writes leaves the previous, complete state in place.
    """
    import hashlib
    import io

    path = Path(path)
    skeleton, arrays = flatten_state(state)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    arrays_name = f"{path.name}.{hashlib.sha256(data).hexdigest()[:16]}.npz"
    atomic_write_bytes(path.parent / arrays_name, data)
    atomic_write_text(
        path.with_suffix(".json"),
        json.dumps({"format": "metarec-state-2", "arrays": arrays_name, "arrays_sha256": hashlib.sha256(data).hexdigest(),
                    "state_sha256": _skeleton_digest(skeleton), "keys": sorted(arrays), "state": skeleton}),
    )
    for stale in path.parent.glob(f"{path.name}.*.npz"):
        if stale.name != arrays_name:
            stale.unlink(missing_ok=True)


class StateIntegrityError(ValueError):
    """A state file is damaged or was changed after it was written (its digest does not match)."""


def _skeleton_digest(skeleton: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(skeleton, sort_keys=True).encode("utf-8")).hexdigest()


def load_state(path: str | Path) -> Any:
    """Read a state written by :func:`save_state` (no pickle: ``allow_pickle=False``).

    Both files are verified first: the array file against the sha256 recorded in the JSON (and
    the digest its name carries), the JSON's state against its own recorded digest. A damaged
    or altered state raises :class:`StateIntegrityError` naming the file.
    """
    import hashlib
    import re
    import zipfile

    path = Path(path)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise StateIntegrityError(f"{meta_path}: damaged state file ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != "metarec-state-2":
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: not a metarec state file (format {fmt!r})")
    arrays_path = path.parent / meta["arrays"]
    data = arrays_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    named = re.search(r"\.([0-9a-f]{16})\.npz$", arrays_path.name)
    expected = meta.get("arrays_sha256")
    if (expected and digest != expected) or (named and not digest.startswith(named.group(1))):
        raise StateIntegrityError(
            f"{arrays_path}: content does not match its recorded sha256 (damaged or changed after it was written)"
        )
    if "state_sha256" in meta and _skeleton_digest(meta["state"]) != meta["state_sha256"]:
        raise StateIntegrityError(f"{meta_path}: the state does not match its recorded sha256 (changed after it was written)")
    import io

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise StateIntegrityError(f"{arrays_path}: damaged array file ({type(exc).__name__}: {exc})") from None
    missing = set(meta["keys"]) - set(arrays)
    if missing:
        raise ValueError(f"{arrays_path}: incomplete state file, missing {sorted(missing)[:5]}")
    return unflatten_state(meta["state"], arrays)


def state_files(path: str | Path) -> tuple[Path, Path]:
    """The ``(json, arrays)`` files of the state at ``path`` (the array file is named in the JSON)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    arrays = json.loads(meta_path.read_text("utf-8"))["arrays"]
    return meta_path, path.parent / arrays


def state_exists(path: str | Path) -> bool:
    """Whether a complete state written by :func:`save_state` exists at ``path``."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        return False
    try:
        arrays = json.loads(meta_path.read_text("utf-8")).get("arrays", "")
    except (OSError, ValueError):
        return False
    return bool(arrays) and (path.parent / arrays).exists()
