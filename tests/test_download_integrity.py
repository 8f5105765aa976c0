"""Downloads against a real HTTP server on 127.0.0.1: Content-Length, checksums, unverified archives, mirrors."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from datafiles import write_ml1m
from metarec.data import catalog, load_split
from metarec.data.catalog import DataFile, Resource
from metarec.data.download import DownloadError, download_dataset, download_file

ML_FILES = ("ratings.dat", "users.dat", "movies.dat", "movies_extrainfos.dat", "List_genre.txt", "List_director.txt")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "default-data"))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture()
def server(tmp_path):
    """A static server; ``/short/<name>`` announces a Content-Length larger than the body it sends."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.startswith("/short/"):
                body = (root / self.path[len("/short/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + 1000))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, b in files.items():
            zf.writestr(n, b)
    return buf.getvalue()


def served_ml(tmp_path: Path, root: Path, base: str, *, checksum: bool = True) -> catalog.DatasetEntry:
    """An ml-1m entry served locally; ``checksum=False`` gives its archive no checksum (like Book-Crossing's)."""
    fx = write_ml1m(tmp_path / "upstream")
    archive = _zip({f"ml-1m/{n}": (fx.directory / n).read_bytes() for n in ("ratings.dat", "users.dat", "movies.dat")})
    (root / "ml-1m.zip").write_bytes(archive)
    for n in ("movies_extrainfos.dat", "List_genre.txt", "List_director.txt"):
        (root / n).write_bytes((fx.directory / n).read_bytes())
    resources = (
        Resource(f"{base}/ml-1m.zip", md5(archive) if checksum else None,
                 members={f"ml-1m/{n}": n for n in ("ratings.dat", "users.dat", "movies.dat")},
                 sha256=hashlib.sha256(archive).hexdigest() if checksum else None, size=len(archive) if checksum else None),
        *(Resource(f"{base}/{n}", md5((fx.directory / n).read_bytes()), kind="file", filename=n)
          for n in ("movies_extrainfos.dat", "List_genre.txt", "List_director.txt")),
    )
    files = tuple(DataFile(n, md5((fx.directory / n).read_bytes()) if checksum or n not in
                           ("ratings.dat", "users.dat", "movies.dat") else None) for n in ML_FILES)
    return dataclasses.replace(catalog.ML_1M, files=files, resources=resources)


def test_the_ml1m_archive_has_a_sha256_and_size():
    zipped = catalog.ML_1M.resources[0]
    assert zipped.md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert zipped.sha256 == "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
    assert zipped.size == 5917549


def test_a_body_shorter_than_its_content_length_is_refused(tmp_path, server):
    root, base = server
    (root / "f.bin").write_bytes(b"x" * 5000)
    with pytest.raises(DownloadError, match="announced 6000"):
        download_file(f"{base}/short/f.bin", tmp_path / "dl" / "f.bin")  # no checksum given: length still enforced
    assert not list((tmp_path / "dl").iterdir())  # nothing saved, no .part left
    with pytest.raises(DownloadError, match="the official file has 4999"):
        download_file(f"{base}/f.bin", tmp_path / "dl" / "f.bin", size=4999)


def test_sha256_mismatch_is_refused(tmp_path, server):
    root, base = server
    (root / "f.bin").write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="sha256"):
        download_file(f"{base}/f.bin", tmp_path / "dl" / "f.bin", sha256="0" * 64)
    assert not (tmp_path / "dl" / "f.bin").exists()


def test_unverified_archive_is_refused_then_flagged_everywhere(tmp_path, server, monkeypatch):
    root, base = server
    entry = served_ml(tmp_path, root, base, checksum=False)
    monkeypatch.setitem(catalog.CATALOG, "ml-1m", entry)
    data = tmp_path / "data"
    with pytest.raises(DownloadError, match="--allow-unverified"):
        download_dataset(entry, data)
    assert not (data / "ml-1m" / "ratings.dat").exists()
    download_dataset(entry, data, allow_unverified=True)
    split = load_split("ml-1m", data_dir=data)
    assert "ratings.dat from " + f"{base}/ml-1m.zip" in split.info["unverified"]
    from metarec.bench.run import dataset_info
    from metarec.bench.runner import data_flags

    assert dataset_info(split)["unverified"] == split.info["unverified"]  # what results.json records
    assert any("unverified download" in line for line in data_flags(dataset_info(split)))  # the console


def test_cli_progress_names_the_mirror_actually_fetched(tmp_path, server):
    """A real ``metarec datasets download --url`` subprocess against the local server."""
    root, base = server
    fx = write_ml1m(tmp_path / "upstream")
    mirror = root / "mirror"
    mirror.mkdir()
    (mirror / "ml-1m.zip").write_bytes(_zip({f"ml-1m/{n}": (fx.directory / n).read_bytes()
                                             for n in ("ratings.dat", "users.dat", "movies.dat")}))
    env = {**os.environ, "METAREC_CACHE_DIR": str(tmp_path / "cache")}
    res = subprocess.run([sys.executable, "-m", "metarec.cli", "datasets", "download", "ml-1m", "--data-dir",
                          str(tmp_path / "d"), "--url", f"{base}/mirror/ml-1m.zip"],
                         capture_output=True, text=True, env=env, timeout=300)
    # the mirror's file differs from the official one: refused (md5), one line, and the
    # progress named the mirror, never the official address
    assert f"{base}/mirror/ml-1m.zip: 100%" in res.stderr
    assert "files.grouplens.org" not in res.stderr.split("error:")[0]
    assert res.returncode == 2 and "Traceback" not in res.stderr and "the official file has 5917549" in res.stderr
