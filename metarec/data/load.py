"""One entry point from a dataset name to tasks: :func:`load_split` (and :func:`load_dataset`).

``name`` is a built-in dataset (``ml-1m``, ``book-crossing``), ``synthetic``, or ``custom`` with
``config_path`` pointing at a dataset schema TOML file (:mod:`metarec.data.custom`). For the
built-in and synthetic datasets, ``config_path`` may point at a TOML file whose ``[loader]``
table overrides the loader's options, e.g.::

    [loader]
    missing_extra_info = "fallback"   # ml-1m: see metarec.data.movielens
    actors = true
"""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from metarec.config import ConfigError, build_config, load_toml
from metarec.data import cache as split_cache
from metarec.data.base import InteractionData
from metarec.data.catalog import (
    CATALOG,
    DatasetEntry,
    Verification,
    dataset_dir,
    get_entry,
    loader_function,
    missing_files_message,
    options_class,
    verify,
)
from metarec.data.custom import ASSEMBLY_VERSION, combined_checksum, file_digest, load_custom, load_schema_file, spec_files
from metarec.data.protocol import ProtocolConfig, Split, build_split
from metarec.data.readers import DataNotFoundError
from metarec.data.synthetic import SyntheticOptions, make_synthetic


#: The one-line error for ``custom`` without a schema file, naming the flag of each entry point.
CUSTOM_NEEDS_SCHEMA = (
    "dataset 'custom' needs the TOML schema file describing your data: "
    "`metarec bench -d custom --dataset-config FILE`, `metarec datasets info custom --config FILE`, "
    "or config_path=FILE in Python (see docs/custom-data.md)"
)


def is_schema_file(path: str | Path) -> bool:
    """Whether a TOML file is a custom dataset schema (it has a ``[ratings]`` table)."""
    try:
        return isinstance(load_toml(path).get("ratings"), dict)
    except (ConfigError, OSError):
        return False


def _loader_options(name: str, cls: type, config_path: str | Path | None) -> Any:
    layer: dict[str, Any] = {}
    if config_path is not None:
        raw = load_toml(config_path)
        unknown = sorted(set(raw) - {"loader"})
        if "ratings" in raw:
            raise ConfigError(
                f"{config_path} is a custom dataset schema (it has [ratings]), but the dataset is {name!r}; "
                f"to load it use -d custom (datasets info: `metarec datasets info custom --config {config_path}`)"
            )
        if unknown:
            raise ConfigError(f"{config_path}: for dataset {name!r} only a [loader] table is read; unknown key(s) {', '.join(unknown)}")
        layer = raw.get("loader", {})
        if not isinstance(layer, dict):
            raise ConfigError(f"{config_path}: [loader] must be a table")
    return build_config(cls, layer, where=f"{name} loader options" + (f" ({config_path})" if config_path else ""))


def _prepare_builtin(entry: DatasetEntry, data_dir: str | Path | None, offline: bool) -> Verification:
    directory = dataset_dir(entry, data_dir)
    ver = verify(entry, directory)
    if ver.missing:
        if offline:
            raise DataNotFoundError(missing_files_message(entry, ver) + " (offline: nothing was downloaded)")
        from metarec.data.download import download_dataset

        download_dataset(entry, data_dir)
        ver = verify(entry, dataset_dir(entry, data_dir))
        if ver.missing:  # pragma: no cover - download_dataset raises first
            raise DataNotFoundError(missing_files_message(entry, ver))
    return ver


def _flag(data: InteractionData, entry: DatasetEntry, ver: Verification) -> InteractionData:
    data.checksum = ver.checksum
    data.canonical = ver.canonical
    data.source_files = {n: str(ver.directory / n) for n in ver.md5}
    data.extras["file_md5"] = dict(ver.md5)
    data.extras["file_status"] = dict(ver.status)
    if ver.non_canonical:
        files = ", ".join(f"{n} ({'' if ':' in v['md5'] else 'md5 '}{v['md5']}, official {v['official_md5']})" for n, v in ver.non_canonical.items())
        data.notes.insert(0, f"NON-CANONICAL DATA: {files} differ(s) from the official {entry.name} release")
    return data


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    offline: bool = True,
    config_path: str | Path | None = None,
) -> InteractionData:
    """Parse and clean a dataset (no protocol applied, no cache)."""
    if name == "custom":
        if config_path is None:
            raise ConfigError(CUSTOM_NEEDS_SCHEMA)
        return load_custom(config_path)
    if name == "synthetic":
        opts = _loader_options(name, SyntheticOptions, config_path)
        return make_synthetic(**asdict(opts))
    entry = get_entry(name)
    ver = _prepare_builtin(entry, data_dir, offline)
    opts = _loader_options(name, options_class(entry), config_path)
    data = loader_function(entry)(ver.directory, opts)
    return _flag(data, entry, ver)


def load_split(
    name: str,
    *,
    data_dir: str | Path | None = None,
    protocol: ProtocolConfig | None = None,
    seed: int = 0,
    offline: bool = True,
    use_cache: bool = True,
    config_path: str | Path | None = None,
) -> Split:
    """Tasks of ``name`` under the protocol: loaded, split and cached.

    ``Split.info`` reports the dataset, its checksum and canonical flag (with the files that
    differ from the official release), every documented drop made while loading, the protocol
    and the counts of the split, and whether the cache was used.
    """
    t0 = time.perf_counter()
    protocol = protocol or ProtocolConfig()
    if not isinstance(protocol, ProtocolConfig):
        raise TypeError(f"protocol must be a ProtocolConfig, got {type(protocol).__name__}")
    extra_info: dict[str, Any] = {}
    key_parts: dict[str, Any] = {"dataset": name, "protocol": asdict(protocol), "seed": int(seed), "assembly": ASSEMBLY_VERSION}
    entry: DatasetEntry | None = None
    ver: Verification | None = None
    opts: Any = None
    if name == "custom":
        if config_path is None:
            raise ConfigError(CUSTOM_NEEDS_SCHEMA)
        spec = load_schema_file(config_path)
        files = spec_files(spec)
        missing = [f"{k}: {p}" for k, p in files.items() if not p.exists()]
        if missing:
            raise DataNotFoundError(f"{config_path}: file(s) not found: {'; '.join(missing)}")
        digests = {k: file_digest(p, "sha256") for k, p in files.items()}
        digests["schema"] = file_digest(config_path, "sha256")
        key_parts["data_checksum"] = combined_checksum(digests)
        extra_info["config_path"] = str(config_path)
    elif name == "synthetic":
        opts = _loader_options(name, SyntheticOptions, config_path)
        key_parts["options"] = asdict(opts)
        use_cache = False  # generating is faster than reading a cache entry
    else:
        entry = get_entry(name)
        ver = _prepare_builtin(entry, data_dir, offline)
        opts = _loader_options(name, options_class(entry), config_path)
        key_parts.update(data_checksum=ver.checksum, options=asdict(opts), loader_version=entry.version)
        extra_info.update(
            data_dir=str(ver.directory),
            file_status=dict(ver.status),
            non_canonical_files=ver.non_canonical,
        )
        from metarec.data.download import unverified_files

        unverified = {n: v for n, v in unverified_files(ver.directory).items() if n in ver.status}
        if unverified:
            extra_info["unverified"] = "; ".join(f"{n} from {v['url']} ({v['reason']})" for n, v in unverified.items())
    if opts is not None and is_dataclass(opts):
        extra_info["loader_options"] = asdict(opts)

    key = split_cache.cache_key(key_parts)
    stem = split_cache.entry_path(name, key)
    if use_cache:
        cached = split_cache.load_split(stem)
        if cached is not None:
            cached.info["cache"] = {"hit": True, "key": key, "path": str(stem)}
            cached.info["load_seconds"] = round(time.perf_counter() - t0, 3)
            return cached

    if name == "custom":
        data = load_custom(config_path)  # type: ignore[arg-type]
    elif name == "synthetic":
        data = make_synthetic(**asdict(opts))
    else:
        assert entry is not None and ver is not None
        data = _flag(loader_function(entry)(ver.directory, opts), entry, ver)
    split = build_split(data, protocol, seed=seed)
    split.info.update(extra_info)
    split.info["title"] = entry.title if entry is not None else name
    if entry is not None and entry.paper_counts:
        split.info["paper_counts"] = dict(entry.paper_counts)
    split.info["cache"] = {"hit": False, "key": key, "path": str(stem) if use_cache else None}
    if use_cache:
        try:
            split_cache.save_split(stem, split)
        except OSError as exc:  # a read-only or full cache must not stop a run
            split.info["cache"]["error"] = f"could not write the cache: {exc}"
    split.info["load_seconds"] = round(time.perf_counter() - t0, 3)
    return split


def available_datasets() -> list[str]:
    """Names that :func:`load_split` accepts."""
    return [*CATALOG, "synthetic", "custom"]


__all__ = ["CUSTOM_NEEDS_SCHEMA", "available_datasets", "is_schema_file", "load_dataset", "load_split"]
