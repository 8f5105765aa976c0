"""Fetch the official archives, verify their checksums and extract them safely.

Downloads stream to a temporary file next to the target and are renamed into place only after
the checksum matched, so an interrupted or corrupted download never leaves a file that looks
complete. Zip extraction refuses absolute paths, ``..`` components, drive letters and symbolic
links, caps the total extracted size, and writes only the members the catalog names.
"""

from __future__ import annotations

from metarec.errors import UserError

import hashlib
import http.client
import os
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from metarec.data.catalog import DatasetEntry, Resource, dataset_dir, resolve_data_dir, verify

#: Written next to files accepted without a checksum (``--allow-unverified``): which files,
#: fetched from where. :func:`metarec.data.load_split` flags such data as unverified.
UNVERIFIED_FILE = ".metarec-unverified.json"


class DownloadError(UserError, RuntimeError):
    """A download failed or its content does not match the published checksum."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the target directory (or is a link)."""


#: Refuse to extract more than this many bytes from one archive (a zip bomb guard).
MAX_EXTRACT_BYTES = 4 << 30
_CHUNK = 1 << 20


def download_file(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
    size: int | None = None,
) -> Path:
    """Download ``url`` to ``dest``; with ``md5``/``sha256`` the content must match or nothing is written.

    A body shorter or longer than the server's ``Content-Length`` (or than ``size``, the
    known size of the file) is an error too: nothing is saved.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h_md5, h_sha = hashlib.md5(), hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                total = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
                total_n = int(total) if total and str(total).isdigit() else None
                done = 0
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    h_md5.update(chunk)
                    h_sha.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total_n)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, http.client.HTTPException) else str(exc)
            raise DownloadError(f"could not download {url}: {detail}; nothing was saved") from None
        if total_n is not None and done != total_n:
            raise DownloadError(f"{url}: received {done} bytes but the server announced {total_n} (Content-Length); "
                                "the download is incomplete and nothing was saved")
        if size is not None and done != size:
            raise DownloadError(f"{url}: received {done} bytes, the official file has {size}; nothing was saved")
        if md5 and h_md5.hexdigest() != md5.lower():
            raise DownloadError(f"{url}: md5 {h_md5.hexdigest()} does not match the published {md5}; nothing was saved")
        if sha256 and h_sha.hexdigest() != sha256.lower():
            raise DownloadError(f"{url}: sha256 {h_sha.hexdigest()} does not match the published {sha256}; nothing was saved")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _member_target(name: str) -> PurePosixPath:
    """The relative path a member would be written to, or an :class:`UnsafeArchiveError`."""
    if "\\" in name:
        name = name.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if any(part == ".." for part in p.parts):
        raise UnsafeArchiveError(f"archive member {name!r} points outside the target directory ('..')")
    return p


def safe_extract_zip(
    archive: str | Path,
    target: str | Path,
    members: Mapping[str, str] | None = None,
    *,
    max_bytes: int = MAX_EXTRACT_BYTES,
) -> list[Path]:
    """Extract ``members`` (archive path -> file name in ``target``; all files when ``None``).

    Every member of the archive is checked, also those not extracted: an archive that contains
    an unsafe member is rejected as a whole. Files are written atomically.
    """
    target = Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            _member_target(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link")
            total += info.file_size
        if total > max_bytes:
            raise UnsafeArchiveError(f"{archive}: would extract {total} bytes, more than the limit of {max_bytes}")
        by_name = {i.filename: i for i in infos}
        wanted = dict(members) if members is not None else {i.filename: i.filename for i in infos if not i.is_dir()}
        absent = [m for m in wanted if m not in by_name]
        if absent:
            raise DownloadError(f"{archive}: expected member(s) {', '.join(absent)} are not in the archive")
        written = []
        for member, out_name in wanted.items():
            rel = _member_target(out_name)
            dest = target.joinpath(*rel.parts)
            if target.resolve() not in dest.resolve().parents:
                raise UnsafeArchiveError(f"member {member!r} would be written outside {target}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with zf.open(by_name[member]) as src, os.fdopen(fd, "wb") as out:
                    remaining = max_bytes
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        remaining -= len(chunk)
                        if remaining < 0:
                            raise UnsafeArchiveError(f"member {member!r} is larger than its header says")
                        out.write(chunk)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            written.append(dest)
    return written


def fetch_resource(resource: Resource, directory: str | Path, *, url: str | None = None, timeout: float = 60.0,
                   progress: Callable[[int, int | None], None] | None = None,
                   allow_unverified: bool = False) -> list[Path]:
    """Download one catalog resource into ``directory`` (and extract it if it is a zip).

    A resource without a published checksum is refused unless ``allow_unverified``; the files
    it gave are then listed in ``<directory>/.metarec-unverified.json`` (with the URL fetched).
    """
    directory = Path(directory)
    source = url or resource.url
    if not resource.verifiable and not allow_unverified:
        raise DownloadError(
            f"{source} has no published checksum, so its content cannot be verified; pass --allow-unverified "
            "to accept it anyway (the data is then flagged unverified in every result)"
        )
    check = {"md5": resource.md5, "sha256": resource.sha256, "size": resource.size}
    if resource.kind == "file":
        got = [download_file(source, directory / resource.filename, timeout=timeout, progress=progress, **check)]
    else:
        with tempfile.TemporaryDirectory(dir=directory if directory.exists() else None) as tmp:
            archive = Path(tmp) / (PurePosixPath(source).name or "archive.zip")
            download_file(source, archive, timeout=timeout, progress=progress, **check)
            got = safe_extract_zip(archive, directory, resource.members)
    if not resource.verifiable:
        _record_unverified(directory, [p.name for p in got], source)
    return got


def _record_unverified(directory: Path, names: list[str], url: str) -> None:
    import json

    from metarec.checkpoint import atomic_write_text

    path = directory / UNVERIFIED_FILE
    try:
        known = json.loads(path.read_text("utf-8")) if path.exists() else {}
    except ValueError:
        known = {}
    for n in names:
        known[n] = {"url": url, "reason": "no published checksum (--allow-unverified)"}
    atomic_write_text(path, json.dumps(known, indent=2, sort_keys=True) + "\n")


def unverified_files(directory: str | Path) -> dict[str, dict[str, str]]:
    """Files of ``directory`` that were accepted without a checksum, with the URL they came from."""
    import json

    path = Path(directory) / UNVERIFIED_FILE
    try:
        return json.loads(path.read_text("utf-8")) if path.exists() else {}
    except (OSError, ValueError):
        return {"(record unreadable)": {"url": str(path), "reason": "damaged record"}}


def download_dataset(
    entry: DatasetEntry,
    data_dir: str | Path | None = None,
    *,
    force: bool = False,
    urls: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    progress: Callable[[str, int, int | None], None] | None = None,
    allow_unverified: bool = False,
) -> dict[str, str]:
    """Fetch every resource of ``entry`` whose files are missing (all with ``force``).

    ``urls`` replaces the download address of a resource (keyed by its official URL), for
    mirrors. Returns each file's verification status afterwards; a file that arrived but
    differs from its published md5 is removed and reported as an error.
    """
    directory = dataset_dir(entry, data_dir) if not force else resolve_data_dir(data_dir) / entry.folder
    directory.mkdir(parents=True, exist_ok=True)
    have = verify(entry, directory)
    fetched: list[str] = []
    for res in entry.resources:
        names = list(res.members.values()) if res.kind == "zip" else [res.filename]
        needed = [n for n in names if n in have.status]
        if not force and needed and all(have.status[n] != "missing" for n in needed):
            continue
        source = (urls or {}).get(res.url) or res.url
        cb = (lambda done, total, _u=source: progress(_u, done, total)) if progress else None  # the URL fetched
        fetch_resource(res, directory, url=source, timeout=timeout, progress=cb, allow_unverified=allow_unverified)
        fetched.extend(needed)
    after = verify(entry, directory)
    bad = {n: v for n, v in after.non_canonical.items() if n in fetched}
    if bad:
        for n in bad:
            (directory / n).unlink(missing_ok=True)
        detail = "; ".join(f"{n}: {'' if ':' in v['md5'] else 'md5 '}{v['md5']}, published {v['official_md5']}" for n, v in bad.items())
        raise DownloadError(f"{entry.name}: downloaded file(s) do not match their published checksum and were removed ({detail})")
    if after.missing:
        raise DownloadError(f"{entry.name}: file(s) {', '.join(after.missing)} are still missing after the download")
    return dict(after.status)


__all__ = ["DownloadError", "UNVERIFIED_FILE", "UnsafeArchiveError", "download_dataset", "download_file",
           "fetch_resource", "safe_extract_zip", "unverified_files"]
