"""Finding data, downloading it safely (local servers only), checksums, and the split cache."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from datafiles import write_ml1m
from metarec.checkpoint import state_files
from metarec.data import cache as split_cache
from metarec.data import catalog, load_split
from metarec.data.catalog import DataFile, Resource, dataset_dir, resolve_data_dir
from metarec.data.download import DownloadError, UnsafeArchiveError, download_dataset, download_file, safe_extract_zip
from metarec.data.protocol import ProtocolConfig
from metarec.data.readers import DataNotFoundError

ML_FILES = ("ratings.dat", "users.dat", "movies.dat", "movies_extrainfos.dat", "List_genre.txt", "List_director.txt")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("METAREC_DATA_DIR", raising=False)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ data dir


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    assert resolve_data_dir() == tmp_path / "xdg" / "metarec" / "data"
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_dataset_dir_accepts_parent_or_the_folder_itself(tmp_path):
    write_ml1m(tmp_path / "root" / "ml-1m")
    assert dataset_dir(catalog.ML_1M, tmp_path / "root") == tmp_path / "root" / "ml-1m"
    assert dataset_dir(catalog.ML_1M, tmp_path / "root" / "ml-1m") == tmp_path / "root" / "ml-1m"


def test_offline_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_split("ml-1m", data_dir=tmp_path / "empty")
    msg = str(err.value)
    assert str(tmp_path / "empty" / "ml-1m") in msg
    for name in ML_FILES:
        assert name in msg
    assert "metarec datasets download ml-1m" in msg and "files.grouplens.org" in msg


def test_env_data_dir_is_used(tmp_path, monkeypatch):
    write_ml1m(tmp_path / "envdata" / "ml-1m")
    monkeypatch.setenv("METAREC_DATA_DIR", str(tmp_path / "envdata"))
    split = load_split("ml-1m")
    assert split.info["data_dir"] == str(tmp_path / "envdata" / "ml-1m")


# ------------------------------------------------------------------------------ checksums


def test_non_canonical_files_are_used_but_flagged_everywhere(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    split = load_split("ml-1m", data_dir=tmp_path)
    assert split.info["canonical"] is False
    assert set(split.info["non_canonical_files"]) == set(ML_FILES)  # every fixture file differs
    assert split.info["non_canonical_files"]["ratings.dat"]["official_md5"] == "a89aa3591bc97d6d4e0c89459ff39362"
    assert split.train.info["canonical"] is False and split.test.info["canonical"] is False
    assert split.info["data_notes"][0].startswith("NON-CANONICAL DATA")
    cached = load_split("ml-1m", data_dir=tmp_path)
    assert cached.info["cache"]["hit"] and cached.info["canonical"] is False
    assert cached.test.info["canonical"] is False


def test_verified_when_checksums_match(tmp_path, monkeypatch):
    fx = write_ml1m(tmp_path / "ml-1m")
    files = tuple(DataFile(n, md5(fx.directory / n)) for n in ML_FILES)
    monkeypatch.setitem(catalog.CATALOG, "ml-1m", dataclasses.replace(catalog.ML_1M, files=files))
    split = load_split("ml-1m", data_dir=tmp_path)
    assert split.info["canonical"] is True and split.info["non_canonical_files"] == {}
    assert set(split.info["file_status"].values()) == {"verified"}


# ------------------------------------------------------------------------------ download


def _zip_bytes(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("bad", ["/abs/evil.txt", "../evil.txt", "ok/../../evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_extraction_rejects_paths_outside_the_target(tmp_path, bad):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"good.txt": b"x", bad: b"evil"}))
    with pytest.raises(UnsafeArchiveError):
        safe_extract_zip(archive, tmp_path / "out", {"good.txt": "good.txt"})
    assert not (tmp_path / "out" / "good.txt").exists()  # the whole archive is refused
    assert not (tmp_path / "evil.txt").exists()


def test_extraction_rejects_symlinks(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"good.txt": b"x"}, symlink="link"))
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")


def test_extraction_size_limit_and_members(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip_bytes({"d/a.txt": b"a" * 100, "d/b.txt": b"b"}))
    with pytest.raises(UnsafeArchiveError, match="limit"):
        safe_extract_zip(archive, tmp_path / "out", max_bytes=50)
    written = safe_extract_zip(archive, tmp_path / "out", {"d/b.txt": "b.txt"})
    assert written == [tmp_path / "out" / "b.txt"] and not (tmp_path / "out" / "a.txt").exists()
    with pytest.raises(DownloadError, match="missing.txt"):
        safe_extract_zip(archive, tmp_path / "out", {"missing.txt": "m.txt"})


def test_download_file_url_with_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello metarec")
    got = download_file(src.as_uri(), tmp_path / "dl" / "x.bin", md5=md5(src))
    assert got.read_bytes() == b"hello metarec"
    with pytest.raises(DownloadError, match="does not match"):
        download_file(src.as_uri(), tmp_path / "dl" / "y.bin", md5="0" * 32)
    assert not (tmp_path / "dl" / "y.bin").exists()
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.endswith(".part")]
    with pytest.raises(DownloadError, match="could not download"):
        download_file((tmp_path / "nope").as_uri(), tmp_path / "dl" / "z.bin")


@pytest.fixture()
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve_ml(tmp_path, root: Path, base: str, *, corrupt_extra: bool = False) -> catalog.DatasetEntry:
    """An ml-1m catalog entry whose official sources are a zip + files on the local server."""
    fx = write_ml1m(tmp_path / "upstream")
    zipped = {f"ml-1m/{n}": (fx.directory / n).read_bytes() for n in ("ratings.dat", "users.dat", "movies.dat")}
    (root / "ml-1m.zip").write_bytes(_zip_bytes(zipped))
    for n in ("movies_extrainfos.dat", "List_genre.txt", "List_director.txt"):
        (root / n).write_bytes((fx.directory / n).read_bytes())
    extra_md5 = md5(fx.directory / "movies_extrainfos.dat")
    if corrupt_extra:
        (root / "movies_extrainfos.dat").write_bytes(b"tampered")
    resources = (
        Resource(f"{base}/ml-1m.zip", md5(root / "ml-1m.zip"),
                 members={f"ml-1m/{n}": n for n in ("ratings.dat", "users.dat", "movies.dat")}),
        *(Resource(f"{base}/{n}", md5(fx.directory / n) if n != "movies_extrainfos.dat" else extra_md5, kind="file", filename=n)
          for n in ("movies_extrainfos.dat", "List_genre.txt", "List_director.txt")),
    )
    files = tuple(DataFile(n, md5(fx.directory / n)) for n in ML_FILES)
    return dataclasses.replace(catalog.ML_1M, files=files, resources=resources)


def test_download_from_local_server_then_load(tmp_path, http_server, monkeypatch):
    root, base = http_server
    entry = _serve_ml(tmp_path, root, base)
    monkeypatch.setitem(catalog.CATALOG, "ml-1m", entry)
    data_dir = tmp_path / "data"
    with pytest.raises(DataNotFoundError):
        load_split("ml-1m", data_dir=data_dir, offline=True)
    split = load_split("ml-1m", data_dir=data_dir, offline=False)
    assert split.info["canonical"] is True
    assert {p.name for p in (data_dir / "ml-1m").iterdir()} == set(ML_FILES)
    assert len(split.train) + len(split.test) == 30


def test_download_checksum_mismatch_leaves_nothing(tmp_path, http_server, monkeypatch):
    root, base = http_server
    entry = _serve_ml(tmp_path, root, base, corrupt_extra=True)
    with pytest.raises(DownloadError, match="md5"):
        download_dataset(entry, tmp_path / "data")
    assert not (tmp_path / "data" / "ml-1m" / "movies_extrainfos.dat").exists()


def test_cli_download(tmp_path, http_server, monkeypatch):
    from metarec.commands.datasets import datasets

    root, base = http_server
    monkeypatch.setitem(catalog.CATALOG, "ml-1m", _serve_ml(tmp_path, root, base))
    result = CliRunner().invoke(datasets, ["download", "ml-1m", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "ratings.dat: verified" in result.output
    listing = CliRunner().invoke(datasets, ["--data-dir", str(tmp_path / "data")])
    assert listing.exit_code == 0 and "verified" in listing.output


# ------------------------------------------------------------------------------ cache


def test_cache_hit_gives_identical_tasks_and_no_pickle(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    a = load_split("ml-1m", data_dir=tmp_path, seed=3)
    b = load_split("ml-1m", data_dir=tmp_path, seed=3)
    assert a.info["cache"]["hit"] is False and b.info["cache"]["hit"] is True
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert split_cache.tensors_equal(x, y)
        assert x.schema == y.schema
        assert np.array_equal(x.items.ids, y.items.ids)
        for k in x.items.columns:
            assert np.array_equal(x.items.columns[k].numpy(), y.items.columns[k].numpy())
    stem = Path(b.info["cache"]["path"])
    with np.load(state_files(stem)[1], allow_pickle=False) as npz:
        assert len(npz.files) > 0
    json.loads(stem.with_suffix(".json").read_text())
    for k in ("users_warm", "items_cold", "query_scenarios_test", "load_drops", "protocol"):
        assert a.info[k] == b.info[k]


def test_cache_key_depends_on_seed_protocol_options_and_data(tmp_path):
    fx = write_ml1m(tmp_path / "ml-1m")
    base = load_split("ml-1m", data_dir=tmp_path)
    keys = {base.info["cache"]["key"]}
    keys.add(load_split("ml-1m", data_dir=tmp_path, seed=1).info["cache"]["key"])
    keys.add(load_split("ml-1m", data_dir=tmp_path, protocol=ProtocolConfig(n_support=10)).info["cache"]["key"])
    opt = tmp_path / "opts.toml"
    opt.write_text('[loader]\nmissing_extra_info = "fallback"\n')
    other = load_split("ml-1m", data_dir=tmp_path, config_path=opt)
    assert other.info["loader_options"]["missing_extra_info"] == "fallback"
    keys.add(other.info["cache"]["key"])
    ratings = fx.directory / "ratings.dat"
    ratings.write_bytes(ratings.read_bytes().replace(b"::5::", b"::4::", 1))
    changed = load_split("ml-1m", data_dir=tmp_path)
    assert changed.info["cache"]["hit"] is False
    keys.add(changed.info["cache"]["key"])
    assert len(keys) == 5


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    a = load_split("ml-1m", data_dir=tmp_path)
    stem = Path(a.info["cache"]["path"])
    state_files(stem)[1].write_bytes(b"garbage")
    b = load_split("ml-1m", data_dir=tmp_path)
    assert b.info["cache"]["hit"] is False and split_cache.tensors_equal(a.train, b.train)
    assert load_split("ml-1m", data_dir=tmp_path).info["cache"]["hit"] is True


def test_use_cache_false_writes_nothing(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    load_split("ml-1m", data_dir=tmp_path, use_cache=False)
    assert split_cache.list_entries("ml-1m") == []


def test_bad_loader_option_file(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    opt = tmp_path / "opts.toml"
    opt.write_text('[loader]\nmissing_extra_info = "guess"\n')
    from metarec.config import ConfigError

    with pytest.raises(ConfigError, match="guess"):
        load_split("ml-1m", data_dir=tmp_path, config_path=opt)


def test_cli_info_and_listing(tmp_path):
    from metarec.commands.datasets import datasets

    write_ml1m(tmp_path / "ml-1m")
    runner = CliRunner()
    res = runner.invoke(datasets, ["info", "ml-1m", "--data-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["users_kept"] == 30 and report["tasks"]["test"]["support_min"] == 15
    assert set(report["query_scenarios_test"]) == {"W-W", "W-C", "C-W", "C-C"}
    res = runner.invoke(datasets, ["info", "ml-1m", "--data-dir", str(tmp_path), "--n-support", "5"])
    assert res.exit_code == 0, res.output
    assert "warm items" in res.output and "C-C" in res.output and "5 / 5" in res.output
    res = runner.invoke(datasets, ["--data-dir", str(tmp_path)])
    assert res.exit_code == 0 and "non-canonical" in res.output and "ml-1m" in res.output
    res = runner.invoke(datasets, ["info", "book-crossing", "--data-dir", str(tmp_path)])
    assert res.exit_code != 0 and "BX-Book-Ratings.csv" in res.output


def test_entry_point_signatures_are_the_documented_ones():
    """The benchmark harness calls these by keyword: keep the signatures stable."""
    import inspect

    from metarec.data import load_dataset

    sig = inspect.signature(load_split)
    assert list(sig.parameters) == ["name", "data_dir", "protocol", "seed", "offline", "use_cache", "config_path"]
    assert [p.default for p in list(sig.parameters.values())[1:]] == [None, None, 0, True, True, None]
    assert all(p.kind is p.KEYWORD_ONLY for p in list(sig.parameters.values())[1:])
    assert list(inspect.signature(load_dataset).parameters) == ["name", "data_dir", "offline", "config_path"]
