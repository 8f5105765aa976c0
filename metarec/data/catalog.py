"""The built-in datasets: their files, official checksums, download sources and loaders.

Where data is looked for (first match wins): the ``data_dir`` argument (``--data-dir``), the
``METAREC_DATA_DIR`` environment variable, then the user cache directory
(``$XDG_CACHE_HOME/metarec/data``, by default ``~/.cache/metarec/data``). A dataset's files live
in ``<data dir>/<folder>/`` (``ml-1m/``, ``book-crossing/``); a ``data_dir`` that already holds
the files directly is accepted too.

Every file with a published checksum is verified on every load (md5 of ~30 MB takes well under
a second). A file that differs from the official release is still used, but the dataset is then
flagged non-canonical, and that flag travels into every split and result made from it.
"""

from __future__ import annotations

from metarec.errors import UserError

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from metarec.data.custom import combined_checksum, file_digest

ENV_DATA_DIR = "METAREC_DATA_DIR"


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset and its official checksum (``None`` when none is published)."""

    name: str
    md5: str | None
    #: Which release the file belongs to (for messages).
    origin: str = ""
    #: sha256 of the file, for releases identified by sha256 rather than md5 (checked instead of md5).
    sha256: str | None = None

    @property
    def digest(self) -> tuple[str, str | None]:
        """``(algorithm, official digest)``: sha256 when known, else md5."""
        return ("sha256", self.sha256) if self.sha256 else ("md5", self.md5)


@dataclass(frozen=True)
class Resource:
    """Something to download: a zip (``members`` maps archive paths to file names) or one file."""

    url: str
    md5: str | None
    kind: str = "zip"  # "zip" | "file"
    members: dict[str, str] = field(default_factory=dict)
    #: File name when ``kind == "file"``.
    filename: str = ""
    note: str = ""
    #: sha256 and size in bytes of the official download, where they can be established
    #: (docs/datasets.md says where each one comes from).
    sha256: str | None = None
    size: int | None = None

    @property
    def verifiable(self) -> bool:
        """Whether the download has a checksum to verify it against."""
        return bool(self.md5 or self.sha256)


@dataclass(frozen=True)
class DatasetEntry:
    """A built-in dataset."""

    name: str
    title: str
    folder: str
    files: tuple[DataFile, ...]
    resources: tuple[Resource, ...]
    #: ``"module:function"``, called as ``function(directory, options) -> InteractionData``
    #: (checksums are set by the caller); imported on first use to keep this module light.
    loader: str
    #: ``"module:Class"`` of the loader-options dataclass.
    options: str
    #: Bumped when the loader would turn the same files into different data (part of cache keys).
    version: int = 1
    homepage: str = ""
    #: Counts the paper reports (for ``metarec datasets info``).
    paper_counts: dict[str, int] = field(default_factory=dict)
    notes: str = ""


_MAMO_RAW = "https://raw.githubusercontent.com/dongmanqing/Code-for-MAMO/feb5b9043056f1999cadfc59ffec759dff99b618/data_raw/ml-1m"

ML_1M = DatasetEntry(
    name="ml-1m",
    title="MovieLens 1M (GroupLens) with MeLU/MAMO's OMDb movie features",
    folder="ml-1m",
    files=(
        DataFile("ratings.dat", "a89aa3591bc97d6d4e0c89459ff39362", "GroupLens ml-1m.zip"),
        DataFile("users.dat", "681c0711d0d4548cd3d4718a49c2dcd8", "GroupLens ml-1m.zip"),
        DataFile("movies.dat", "ef9fd9ff8d1b33faf73e2122c371e910", "GroupLens ml-1m.zip"),
        DataFile("movies_extrainfos.dat", "a7a0e11c3b4d7f5216d91295488c2a84", "MeLU / Code-for-MAMO data_raw/ml-1m"),
        DataFile("List_genre.txt", "5b44e730d146b9d2b8a0eb86535f3e4c", "Code-for-MAMO data_raw/ml-1m"),
        DataFile("List_director.txt", "ddd1acf5c3e8476db4b63400f8761fa4", "Code-for-MAMO data_raw/ml-1m"),
    ),
    resources=(
        Resource(
            "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
            "c4d9eecfca2ab87c1945afe126590906",  # GroupLens' published ml-1m.zip.md5
            members={"ml-1m/ratings.dat": "ratings.dat", "ml-1m/users.dat": "users.dat",
                     "ml-1m/movies.dat": "movies.dat", "ml-1m/README": "README"},
            # TensorFlow Datasets' recorded checksum of the same URL (url_checksums/movielens.txt)
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            size=5917549,
        ),
        Resource(f"{_MAMO_RAW}/movies_extrainfos.dat", "a7a0e11c3b4d7f5216d91295488c2a84", kind="file", filename="movies_extrainfos.dat"),
        Resource(f"{_MAMO_RAW}/List_genre.txt", "5b44e730d146b9d2b8a0eb86535f3e4c", kind="file", filename="List_genre.txt"),
        Resource(f"{_MAMO_RAW}/List_director.txt", "ddd1acf5c3e8476db4b63400f8761fa4", kind="file", filename="List_director.txt"),
    ),
    loader="metarec.data.movielens:load_movielens",
    options="metarec.data.movielens:MovieLensOptions",
    version=1,
    homepage="https://grouplens.org/datasets/movielens/1m/",
    # MAMO paper section 3.1.4 (items on the original ratings.dat; users_kept: all 6,040)
    paper_counts={"users_kept": 6040, "users_warm": 5400, "users_cold": 640, "items_warm": 1683, "items_cold": 1645},
)

BOOK_CROSSING = DatasetEntry(
    name="book-crossing",
    title="Book-Crossing (Ziegler et al. 2004, BX-CSV-Dump), cleaned as in MAMO appendix A.1.2",
    folder="book-crossing",
    files=(
        # Only BX-Users.csv has a checksum we could confirm (5 independent copies agree). The
        # other two files are unverified: candidate git blob ids 9fe95b4d... (ratings) and
        # 8118d4f7... (books) were seen in one repository only.
        DataFile("BX-Book-Ratings.csv", None, "BX-CSV-Dump.zip"),
        DataFile("BX-Users.csv", "cca22ab4cb53125b5d503496597123a5", "BX-CSV-Dump.zip"),
        DataFile("BX-Books.csv", None, "BX-CSV-Dump.zip"),
    ),
    resources=(
        Resource(
            "http://www2.informatik.uni-freiburg.de/~cziegler/BX/BX-CSV-Dump.zip",
            None,  # no published checksum for the archive: only its members with known md5 are verified
            members={"BX-Book-Ratings.csv": "BX-Book-Ratings.csv", "BX-Users.csv": "BX-Users.csv", "BX-Books.csv": "BX-Books.csv"},
            note="the archive has no published checksum; BX-Users.csv is verified after extraction",
        ),
    ),
    loader="metarec.data.bookcrossing:load_bookcrossing",
    options="metarec.data.bookcrossing:BookCrossingOptions",
    version=1,
    homepage="http://www2.informatik.uni-freiburg.de/~cziegler/BX/",
    # MAMO paper section 3.1.4 (warm items) and the reference code's comment (users after processing)
    paper_counts={"users_kept": 4323, "items_warm": 628},
)

_HIN_RAW = "https://raw.githubusercontent.com/librahu/HIN-Datasets-for-Recommendation-and-Network-Embedding/cc05c484b628b08237f0a876fcebf99d736ccbea/Yelp"
_YELP_SHA256 = {
    "user_business.dat": "d57853e95c3f49f0060f31ee9365ab3fffe1010999c76863c3cd9628b91e994d",
    "business_category.dat": "d3c1499e406c0a842b3c08c478ffe7bf26a8758b630e0b056d0f4bcf18c01a5b",
    "business_city.dat": "09c009dfa16709aff52de4831b9cb30f45a16dcfce1db06858d54af6ef5f7d1e",
    "user_compliment.dat": "e7f5c15155bf0843e3bdf9fb4743bb3ebf76826b4108e9e194fd637e0bb05ed6",
    "user_user.dat": "d360f88f66b7ba9a1fd460b8c414dba1bec6489773283083a614a77925bcaaed",
}

YELP = DatasetEntry(
    name="yelp",
    title="Yelp (HIN release used by MetaHIN, KDD 2020): business category/city, user compliments and friends",
    folder="yelp",
    # sha256 of the files of librahu/HIN-Datasets-for-Recommendation-and-Network-Embedding @ cc05c48 (Yelp/);
    # no md5 is published for this release.
    files=tuple(DataFile(n, None, "HIN-Datasets Yelp/", sha256=h) for n, h in _YELP_SHA256.items()),
    resources=tuple(Resource(f"{_HIN_RAW}/{n}", None, kind="file", filename=n,
                             note="verified by sha256 after download") for n in _YELP_SHA256),
    loader="metarec.data.yelp:load_yelp",
    options="metarec.data.yelp:YelpOptions",
    version=1,
    homepage="https://github.com/librahu/HIN-Datasets-for-Recommendation-and-Network-Embedding",
)

#: Built-in datasets backed by files. ``synthetic`` and ``custom`` are handled by :mod:`metarec.data.load`.
CATALOG: dict[str, DatasetEntry] = {e.name: e for e in (ML_1M, BOOK_CROSSING, YELP)}
VIRTUAL_DATASETS = ("synthetic", "custom")


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def options_class(entry: DatasetEntry) -> type:
    """The loader-options dataclass of a dataset."""
    return _import(entry.options)


def loader_function(entry: DatasetEntry) -> Callable[..., Any]:
    """The loader function of a dataset."""
    return _import(entry.loader)


class UnknownDatasetError(UserError, KeyError):
    """No dataset of that name; the message lists the known ones (and the closest match)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def unknown_dataset_message(name: str, config_flag: str = "--dataset-config") -> str:
    """What to type instead of an unknown dataset name (a schema file given as the name, for example)."""
    import difflib

    names = [*CATALOG, *VIRTUAL_DATASETS]
    hint = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
    did = f" (did you mean {hint[0]!r}?)" if hint else ""
    msg = f"unknown dataset {name!r}{did}; known: {', '.join(names)}"
    if str(name).lower().endswith(".toml") or Path(str(name)).is_file():
        msg += f". To load your own data described by {name}, use: -d custom {config_flag} {name}"
    return msg


def get_entry(name: str) -> DatasetEntry:
    """The catalog entry of a built-in dataset (an error listing the known names otherwise)."""
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownDatasetError(unknown_dataset_message(name)) from None


# ------------------------------------------------------------------------------ directories


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/metarec`` or ``~/.cache/metarec``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "metarec"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` > ``$METAREC_DATA_DIR`` > ``<user cache>/data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return user_cache_root() / "data"


def dataset_dir(entry: DatasetEntry, data_dir: str | Path | None = None) -> Path:
    """Where ``entry``'s files are (or would be put): ``<data dir>/<folder>``, or ``data_dir`` itself if it holds them."""
    root = resolve_data_dir(data_dir)
    sub = root / entry.folder
    if not sub.is_dir() and all((root / f.name).exists() for f in entry.files):
        return root
    return sub


@dataclass
class Verification:
    """What was found for each file of a dataset."""

    directory: Path
    status: dict[str, str]  # name -> verified | non-canonical | unverified | missing
    #: Digest per file: md5 hex, or ``"sha256:<hex>"`` for files the catalog knows by sha256.
    md5: dict[str, str]
    expected: dict[str, str | None]

    @property
    def missing(self) -> list[str]:
        """Files that are not there."""
        return [n for n, s in self.status.items() if s == "missing"]

    @property
    def non_canonical(self) -> dict[str, dict[str, str | None]]:
        """Files whose checksum differs from the official release (theirs and the official md5)."""
        return {n: {"md5": self.md5[n], "official_md5": self.expected[n]} for n, s in self.status.items() if s == "non-canonical"}

    @property
    def canonical(self) -> bool | None:
        """False if any file differs from the release; True if all are verified; None if some cannot be checked."""
        if self.missing:
            return None
        if self.non_canonical:
            return False
        return True if all(s == "verified" for s in self.status.values()) else None

    @property
    def checksum(self) -> str:
        """One checksum over all files, recorded in every result."""
        return combined_checksum(self.md5)

    def summary(self) -> str:
        """One line for ``metarec datasets``: missing, non-canonical or verified."""
        if self.missing:
            return f"missing {', '.join(self.missing)}"
        if self.non_canonical:
            return f"non-canonical ({', '.join(self.non_canonical)} differ from the official release)"
        unverified = [n for n, s in self.status.items() if s == "unverified"]
        if unverified:
            return f"present; {', '.join(n for n, s in self.status.items() if s == 'verified') or 'no file'} verified, " \
                   f"{', '.join(unverified)} unverified (no published checksum)"
        return "verified (every file matches the official checksum)"


def verify(entry: DatasetEntry, directory: str | Path) -> Verification:
    """md5 of each file of ``entry`` in ``directory`` against its official value."""
    directory = Path(directory)
    status, md5, expected = {}, {}, {}
    for f in entry.files:
        p = directory / f.name
        algorithm, official = f.digest
        prefix = "" if algorithm == "md5" else f"{algorithm}:"
        expected[f.name] = None if official is None else prefix + official
        if not p.is_file():
            status[f.name] = "missing"
            continue
        md5[f.name] = prefix + file_digest(p, algorithm)
        if official is None:
            status[f.name] = "unverified"
        else:
            status[f.name] = "verified" if md5[f.name] == expected[f.name] else "non-canonical"
    return Verification(directory, status, md5, expected)


def missing_files_message(entry: DatasetEntry, ver: Verification) -> str:
    """Which files to put where, and how to get them."""
    sources = "; ".join(r.url for r in entry.resources)
    return (
        f"dataset {entry.name!r}: file(s) not found in {ver.directory}: {', '.join(ver.missing)}. "
        f"Put the original files there (from {sources}), run `metarec datasets download {entry.name}`, "
        f"or point --data-dir / ${ENV_DATA_DIR} at a directory containing {entry.folder}/."
    )


__all__ = [
    "BOOK_CROSSING",
    "CATALOG",
    "YELP",
    "DataFile",
    "DatasetEntry",
    "ENV_DATA_DIR",
    "ML_1M",
    "Resource",
    "UnknownDatasetError",
    "Verification",
    "dataset_dir",
    "get_entry",
    "loader_function",
    "missing_files_message",
    "options_class",
    "resolve_data_dir",
    "user_cache_root",
    "verify",
]
