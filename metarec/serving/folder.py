"""The model folder: what ``metarec fit`` writes and :func:`~metarec.serving.persist.load_model` reads.

A folder is self-contained and pickle-free::

    model.json            method, learner class, resolved config, seed, versions, git commit,
                          the non-tensor part of the learner's state, the user-feature policy
    weights.safetensors   the learner's tensors (modules and tensor attributes; no optimizer)
    schema.json           the feature schema with every vocabulary and the rating range
    catalogue.json        item ids (and titles), warm/cold state and rating counts
    catalogue.safetensors the items' encoded feature columns
    card.json, card.md    the model card: data, checksum, settings, held-out metrics
    manifest.json         SHA-256 and size of every file above (written last)

:func:`verify_folder` verifies the manifest before it parses anything, so a missing, truncated or
edited file is refused with an error naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from metarec.checkpoint import NOT_A_LEAF, atomic_write_bytes, atomic_write_text, join_leaves, leaf_entries, split_leaves

#: Format tag of a model folder; a folder with another tag is refused.
MODEL_FORMAT = "metarec-model-1"
MANIFEST = "manifest.json"
FILES = ("model.json", "weights.safetensors", "schema.json", "catalogue.json", "catalogue.safetensors", "card.json", "card.md")

_TENSOR = "__tensor__"


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, tampered with or from elsewhere; the message says which file."""


def _safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - the extra is installed in the test environment
        raise ModelFolderError(
            "model folders store their weights with safetensors, which is not installed: pip install 'metarec[model]'"
        ) from None
    return st


# ---------------------------------------------------------------------------- state <-> tensors + JSON


def split_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A nested state as ``(JSON skeleton, {dotted.path: tensor})`` for safetensors + JSON
    (:func:`metarec.checkpoint.split_leaves` with tensors named by their path)."""
    tensors: dict[str, torch.Tensor] = {}

    def leaf(node: Any, path: str) -> Any:
        if not isinstance(node, torch.Tensor):
            return NOT_A_LEAF
        name = path or "tensor"
        if name in tensors:
            raise ValueError(f"two tensors of the state map to the name {name!r}")
        tensors[name] = node.detach().cpu().contiguous().clone()
        return {_TENSOR: name}

    return split_leaves(state, leaf, int_keys=False, where="a model folder"), tensors


def join_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_state`."""
    return join_leaves(skeleton, lambda entry: tensors[entry[_TENSOR]] if _TENSOR in entry else NOT_A_LEAF)


def tensor_names(skeleton: Any) -> set[str]:
    """Every tensor name a skeleton refers to."""
    return {entry[_TENSOR] for entry in leaf_entries(skeleton) if _TENSOR in entry}


def save_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """``tensors`` as safetensors bytes."""
    return _safetensors().save(dict(tensors))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (no pickle: safetensors holds raw arrays and a JSON header)."""
    try:
        return dict(_safetensors().load(path.read_bytes()))
    except Exception as exc:  # safetensors raises its own error type on a bad header
        raise ModelFolderError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------- writing and reading


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_folder(path: str | Path, files: Mapping[str, bytes | str], *, metarec_version: str) -> Path:
    """Write ``files`` (name -> content) into ``path``, then the manifest of their digests.

    The manifest goes last, so a folder interrupted while being written has none and is refused.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    entries = {}
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        atomic_write_bytes(path / name, data)
        entries[name] = {"sha256": sha256(data), "bytes": len(data)}
    manifest = {"format": MODEL_FORMAT, "metarec": metarec_version, "files": entries}
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return path


def verify_folder(path: str | Path) -> dict[str, Any]:
    """Check the manifest against the files; return the manifest or raise :class:`ModelFolderError`."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: no such model folder (write one with `metarec fit`)")
    mpath = path / MANIFEST
    if not mpath.exists():
        raise ModelFolderError(
            f"{mpath}: missing; {path} is not a complete metarec model folder (was `metarec fit` interrupted?)"
        )
    try:
        manifest = json.loads(mpath.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelFolderError(
            f"{mpath}: model format {got!r}, this metarec reads {MODEL_FORMAT!r}; refit the model with this version"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise ModelFolderError(f"{mpath}: the manifest must list exactly {', '.join(FILES)}")
    for name, entry in files.items():
        fpath = path / name
        if not fpath.exists():
            raise ModelFolderError(f"{fpath}: missing from the model folder")
        data = fpath.read_bytes()
        if len(data) != entry.get("bytes"):
            raise ModelFolderError(
                f"{fpath}: {len(data)} bytes, the manifest says {entry.get('bytes')} (truncated or replaced); refit or restore the folder"
            )
        if sha256(data) != entry.get("sha256"):
            raise ModelFolderError(f"{fpath}: checksum does not match the manifest (the file was modified); refit or restore the folder")
    return manifest


def read_json(path: Path) -> Any:
    """A JSON file of a (verified) folder, with an error naming it."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: cannot read ({exc})") from None


__all__ = [
    "FILES",
    "MANIFEST",
    "MODEL_FORMAT",
    "ModelFolderError",
    "join_state",
    "load_tensors",
    "read_json",
    "save_tensors",
    "split_state",
    "tensor_names",
    "verify_folder",
    "write_folder",
]
