"""Bookkeeping of a benchmark's output folder: the lock, resume checks, repairs, dropped runs.

* :class:`OutDirLock` -- one ``metarec bench`` per folder: an exclusive ``fcntl`` lock on
  ``<out>/.metarec.lock`` held for the whole benchmark (the kernel releases it when the driver
  dies, even by ``kill -9``); a second process is refused with the holder's pid and host.
* :func:`prepare_out_dir` -- a fresh folder must be empty of results; a resumed one must
  continue the same settings (it may add seeds or methods).
* :func:`inspect_runs` -- on resume, every kept run is checked against the current invocation
  (data checksum, metarec version, settings: a mismatch is refused, saying what changed) and
  against its own files (a damaged record, a missing or altered predictions file): damaged runs
  are set aside as ``*.damaged``, reported by path and redone.
* :func:`remove_orphans` -- temporaries left by a killed writer are removed (under the lock,
  nobody else can be writing them).
* :func:`drop_failed` -- ``--drop-failed``: failed runs leave the benchmark explicitly (their
  records move to ``runs/dropped/`` and ``config.json`` lists them), so a folder with a method
  that always dies can still be completed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from metarec.bench.config import CONFIG_FORMAT, RESULT_FIELDS, BenchConfig, differences, run_settings
from metarec.bench.results import RUN_FORMAT, RunDir, read_json, run_key, write_json
from metarec.config import jsonable
from metarec.errors import UserError

LOCK_NAME = ".metarec.lock"


class BenchError(UserError, RuntimeError):
    """The benchmark cannot start (bad method name, bad settings, unusable output folder)."""


class OutDirLocked(BenchError):
    """Another process holds the output folder."""


class OutDirLock:
    """Exclusive, non-blocking lock on a benchmark or tune folder for the lifetime of the driver."""

    def __init__(self, out: str | Path, what: str = "metarec bench") -> None:
        self.path = Path(out) / LOCK_NAME
        self.what = what  # the command named in the refusal
        self._fh: Any = None

    def acquire(self) -> "OutDirLock":
        """Take the lock or raise :class:`OutDirLocked` naming the holder."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                info = json.loads(holder)
                who = f"pid {info.get('pid')} on host {info.get('host')}, since {info.get('since')}"
            except ValueError:
                who = "a process that has not written its name yet"
            raise OutDirLocked(
                f"{self.path.parent} is in use by another {self.what} ({who}); wait for it to finish, "
                "or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        """Release the lock (also done by the kernel when the process ends)."""
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "OutDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------------------- config.json


def read_folder_config(rd: RunDir) -> dict[str, Any]:
    """``config.json`` of a bench folder, checked (a refusal names the file)."""
    if not rd.config.exists():
        raise BenchError(f"--resume: {rd.root} holds no config.json; it is not a metarec bench folder")
    try:
        saved = read_json(rd.config)
    except ValueError as exc:
        raise BenchError(f"--resume: {exc}; the folder's configuration is damaged") from None
    if not isinstance(saved, dict) or saved.get("format") != CONFIG_FORMAT:
        fmt = saved.get("format") if isinstance(saved, dict) else None
        raise BenchError(f"{rd.config}: unknown format {fmt!r}")
    return saved


def write_folder_config(rd: RunDir, cfg: BenchConfig, *, data_checksum: str | None,
                        dropped: Sequence[dict[str, Any]] = ()) -> None:
    """Write ``config.json``: the resolved config, the data checksum and metarec version, dropped runs."""
    import metarec

    write_json(rd.config, {"format": CONFIG_FORMAT, "config": cfg.to_dict(), "data_checksum": data_checksum,
                           "metarec_version": metarec.__version__, "dropped": list(dropped)})


def prepare_out_dir(cfg: BenchConfig, out: Path, resume: bool) -> tuple[BenchConfig, list[dict[str, Any]]]:
    """Check that the output folder is free (or, resuming, that it continues ``cfg``).

    Resuming may *extend* a benchmark with more seeds or methods (every run is independent and
    its record names the code it ran): the returned config holds the union, saved ones first.
    Result-relevant settings (data, protocol, method settings, ...) must not change. Returns the
    config and the runs dropped earlier (``--drop-failed``).
    """
    rd = RunDir(out)
    if resume:
        saved = read_folder_config(rd)
        saved_cfg = BenchConfig.from_dict(saved["config"])
        diff = differences(saved_cfg, cfg, [f for f in RESULT_FIELDS if f != "method_settings"])

        def settings(c: BenchConfig, m: str) -> dict[str, Any]:
            return jsonable(dataclasses.asdict(c.settings_for(m)))

        # a method already in the folder must keep its settings; added methods bring their own
        diff += [
            f"settings of {m}: {settings(saved_cfg, m)} -> {settings(cfg, m)}"
            for m in saved_cfg.methods
            if m in cfg.methods and settings(saved_cfg, m) != settings(cfg, m)
        ]
        if diff:
            raise BenchError(
                f"--resume: these settings differ from the interrupted run in {out}: " + "; ".join(diff)
                + ". Resume with the same settings, or start a new --out folder."
            )
        methods = (*saved_cfg.methods, *[m for m in cfg.methods if m not in saved_cfg.methods])
        seeds = (*saved_cfg.seeds, *[s for s in cfg.seeds if s not in saved_cfg.seeds])
        return dataclasses.replace(cfg, methods=tuple(methods), seeds=tuple(seeds)), list(saved.get("dropped") or [])
    if rd.config.exists() or rd.run_files() or rd.results.exists() or (out / "checkpoints").exists():
        raise BenchError(
            f"{out} already holds a benchmark; pass --resume to continue it or choose another --out"
        )
    return cfg, []


# ---------------------------------------------------------------------------- kept runs


@dataclass
class RunInventory:
    """What a resumed folder holds: runs to keep, runs to redo (and why), repairs made."""

    keep: set[tuple[str, int]] = field(default_factory=set)
    failed: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)


def _set_aside(path: Path) -> Path:
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    return target


def inspect_runs(rd: RunDir, cfg: BenchConfig, *, data_checksum: str | None, saved_checksum: str | None,
                 dropped: set[tuple[str, int]]) -> RunInventory:
    """Sort the folder's run records into kept, failed and damaged (set aside, to redo).

    A kept run made from other data, by another metarec version or with other settings is
    refused with a :class:`BenchError` that says what changed.
    """
    import metarec
    from metarec.bench.run import predictions_digest

    inv = RunInventory()
    for m in cfg.methods:
        for s in cfg.seeds:
            if (m, s) in dropped:
                continue
            path = rd.run_json(m, s)
            if not path.exists():
                continue
            try:
                rec = read_json(path)
                if not isinstance(rec, dict) or rec.get("format") != RUN_FORMAT:
                    raise ValueError(f"{path}: not a metarec run record")
                if rec.get("method") != m or rec.get("seed") != s or "status" not in rec:
                    raise ValueError(f"{path}: the record names another run or lacks its status")
            except (ValueError, OSError) as exc:
                inv.repairs.append(f"damaged run record {path} ({exc}); set aside as {_set_aside(path).name}, redoing it")
                continue
            if rec["status"] != "ok":
                inv.failed[(m, s)] = rec
                continue
            made_from = rec.get("data_checksum", saved_checksum)
            if made_from and data_checksum and made_from != data_checksum:
                raise BenchError(
                    f"--resume: the data changed: {path} was computed from data {made_from}, the data now is "
                    f"{data_checksum}; restore the original files or start a new --out folder"
                )
            version = rec.get("metarec_version")
            if version and version != metarec.__version__:
                raise BenchError(
                    f"--resume: {path} was made by metarec {version}, this is metarec {metarec.__version__}; "
                    "resume with the same version or start a new --out folder"
                )
            if "settings" in rec:
                now = run_settings(cfg, m)
                changed = [f"{k}: {rec['settings'].get(k)!r} -> {v!r}" for k, v in now.items()
                           if rec["settings"].get(k) != v]
                if changed:
                    raise BenchError(f"--resume: the settings of {path} differ from this invocation: "
                                     + "; ".join(changed) + ". Resume with the same settings or start a new --out")
            preds = rd.run_predictions(m, s)
            if not preds.exists():
                inv.repairs.append(f"missing predictions file {preds}; redoing {run_key(m, s)}")
                _set_aside(path)
                continue
            digest = rec.get("predictions_digest")
            if digest and predictions_digest(preds.read_text("utf-8", errors="replace")) != digest:
                inv.repairs.append(f"predictions file {preds} does not match its record (damaged); redoing "
                                   f"{run_key(m, s)}")
                _set_aside(preds)
                _set_aside(path)
                continue
            inv.keep.add((m, s))
    return inv


def remove_orphans(root: Path) -> list[Path]:
    """Delete temporaries of interrupted atomic writes (``.<name>.*.tmp`` / ``.part``) under ``root``."""
    removed = []
    for pattern in (".*.tmp", ".*.part"):
        for p in root.rglob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def drop_failed(rd: RunDir, failed: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Move failed runs' records to ``runs/dropped/``; the entries to list in ``config.json``."""
    out = []
    for (m, s), rec in sorted(failed.items()):
        src = rd.run_json(m, s)
        dest = rd.root / "runs" / "dropped" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            os.replace(src, dest)
        out.append({"method": m, "seed": s, "error": rec.get("error"), "record": str(dest.relative_to(rd.root))})
    return out


__all__ = [
    "BenchError",
    "OutDirLock",
    "OutDirLocked",
    "RunInventory",
    "drop_failed",
    "inspect_runs",
    "prepare_out_dir",
    "read_folder_config",
    "remove_orphans",
    "write_folder_config",
]
