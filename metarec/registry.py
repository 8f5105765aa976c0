"""Learner registry: built-in learners by name, third-party ones through entry points.

Third-party packages (and this repository's own ``baselines`` package) declare::

    [project.entry-points."metarec.learners"]
    my-method = "my_package.module:MyLearner"

and ``metarec methods`` / ``metarec bench --methods my-method`` find them. Nothing is imported
until it is needed; a plugin that fails to import is reported with its exception and skipped,
so one broken package cannot take the others down.
"""

from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from metarec.learner import Learner

ENTRY_POINT_GROUP = "metarec.learners"

#: Learners that live inside :mod:`metarec` itself, as ``name -> "module:attribute"``.
BUILTIN_LEARNERS: dict[str, str] = {
    "mamo": "metarec.methods.mamo:MAMO",
    "global-mean": "metarec.methods.simple:GlobalMean",
    "baseline-predictor": "metarec.methods.simple:BaselinePredictor",
    "profile-mlp": "metarec.methods.simple:ProfileMLP",
    "profile-mlp-finetune": "metarec.methods.simple:ProfileMLPFineTune",
}

# Learners registered at run time with @register_learner (scripts, notebooks, tests).
_RUNTIME: dict[str, type] = {}

L = TypeVar("L", bound=type)


class UnknownLearnerError(KeyError):
    """No learner of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class LearnerImportError(ImportError):
    """A registered learner exists but could not be imported."""


@dataclass
class LearnerEntry:
    """What the registry knows about one learner before (and after) importing it."""

    name: str
    target: str  # "module:attribute"
    source: str  # top-level package that provides it ("metarec", "baselines", ...)
    origin: str  # "builtin", "entry-point" or "runtime"
    _cls: type | None = field(default=None, repr=False)

    def load(self) -> type:
        """Import and return the learner class, or raise :class:`LearnerImportError`."""
        if self._cls is None:
            module_name, _, attr = self.target.partition(":")
            try:
                module = importlib.import_module(module_name)
                obj = module
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except Exception as exc:  # any failure inside a plugin must not escape unlabelled
                raise LearnerImportError(
                    f"learner {self.name!r} ({self.target}, from {self.source}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._cls = obj
        return self._cls

    @property
    def description(self) -> str:
        """The learner's ``description`` attribute, else the first line of its docstring."""
        cls = self.load()
        desc = getattr(cls, "description", "") or (cls.__doc__ or "").strip().splitlines()[0:1]
        return desc if isinstance(desc, str) else (desc[0] if desc else "")


@dataclass
class PluginFailure:
    """A learner that is registered but could not be loaded."""

    name: str
    target: str
    source: str
    error: str
    traceback: str


def register_learner(name: str) -> Callable[[L], L]:
    """Class decorator: make a learner available under ``name`` for this process."""

    def deco(cls: L) -> L:
        if name in _RUNTIME and _RUNTIME[name] is not cls:
            raise ValueError(f"a learner named {name!r} is already registered ({_RUNTIME[name]!r})")
        _RUNTIME[name] = cls
        if not getattr(cls, "name", None):
            cls.name = name
        return cls

    return deco


def unregister_learner(name: str) -> None:
    """Remove a learner added with :func:`register_learner` (tests use this)."""
    _RUNTIME.pop(name, None)


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def learner_entries() -> dict[str, LearnerEntry]:
    """Every registered learner by name, without importing any of them.

    Precedence on a name clash: run-time registrations, then built-ins, then entry points (the
    first entry point of a name wins and the clash is reported by :func:`plugin_failures`).
    """
    entries: dict[str, LearnerEntry] = {}
    for ep in _entry_points():
        if ep.name in entries:
            continue
        source = ep.value.split(":")[0].split(".")[0]
        entries[ep.name] = LearnerEntry(ep.name, ep.value, source, "entry-point")
    for name, target in BUILTIN_LEARNERS.items():
        entries[name] = LearnerEntry(name, target, "metarec", "builtin")
    for name, cls in _RUNTIME.items():
        target = f"{cls.__module__}:{cls.__qualname__}"
        entries[name] = LearnerEntry(name, target, cls.__module__.split(".")[0], "runtime", cls)
    return dict(sorted(entries.items()))


def available_learners() -> tuple[dict[str, LearnerEntry], list[PluginFailure]]:
    """Import every registered learner; return the ones that loaded and the ones that failed."""
    ok: dict[str, LearnerEntry] = {}
    failed: list[PluginFailure] = []
    for name, entry in learner_entries().items():
        try:
            entry.load()
        except LearnerImportError as exc:
            cause = exc.__cause__ or exc
            failed.append(
                PluginFailure(
                    name=name,
                    target=entry.target,
                    source=entry.source,
                    error=f"{type(cause).__name__}: {cause}",
                    traceback="".join(traceback.format_exception(cause)),
                )
            )
            continue
        ok[name] = entry
    return ok, failed


def get_learner(name: str) -> type["Learner"]:
    """The learner class registered as ``name``.

    Raises :class:`UnknownLearnerError` (listing the known names) or :class:`LearnerImportError`.
    """
    entries = learner_entries()
    if name not in entries:
        import difflib

        hint = difflib.get_close_matches(name, entries, n=1)
        did = f" Did you mean {hint[0]!r}?" if hint else ""
        raise UnknownLearnerError(
            f"unknown learner {name!r}.{did} Known learners: {', '.join(entries) or '(none)'}"
        )
    return entries[name].load()
