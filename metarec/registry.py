"""Learner registry: built-in learners by name, third-party ones through entry points.

Third-party packages (and this repository's own ``baselines`` package) declare::

    [project.entry-points."metarec.learners"]
    my-method = "my_package.module:MyLearner"

and ``metarec methods`` / ``metarec bench --methods my-method`` find them. Nothing is imported
until it is needed; a plugin that fails to import is reported with its exception and skipped,
so one broken package cannot take the others down.

Name clashes are never resolved silently. When two distributions declare the same learner name
(or a plugin declares a built-in's name), that name is unusable -- ``get_learner`` raises a
:class:`LearnerClashError` naming both distributions and ``metarec methods`` lists the clash --
until the user picks one::

    METAREC_LEARNER_CHOICE="melu=metarec,my-method=my-dist" metarec bench ...

(``name=distribution``, comma-separated; the same for CLI commands with
``METAREC_COMMAND_CHOICE``). Learners registered in code with :func:`register_learner` are an
explicit choice and take precedence.
"""

from __future__ import annotations

from metarec.errors import UserError

import importlib
import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from metarec.learner import Learner

ENTRY_POINT_GROUP = "metarec.learners"
#: Environment variable choosing a distribution for a clashing learner name: ``name=dist,...``.
LEARNER_CHOICE_ENV = "METAREC_LEARNER_CHOICE"

#: Learners that live inside :mod:`metarec` itself, as ``name -> "module:attribute"``.
BUILTIN_LEARNERS: dict[str, str] = {
    "mamo": "metarec.methods.mamo:MAMO",
    "global-mean": "metarec.methods.simple:GlobalMean",
    "baseline-predictor": "metarec.methods.simple:BaselinePredictor",
    "profile-mlp": "metarec.methods.simple:ProfileMLP",
    "profile-mlp-finetune": "metarec.methods.simple:ProfileMLPFineTune",
    # item warm-up protocol (metarec.warmup): the backbone floors and the feature-only baseline
    "fm": "metarec.warmup.learner:FMFloor",
    "deepfm": "metarec.warmup.learner:DeepFMFloor",
    "wide-deep": "metarec.warmup.learner:WideDeepFloor",
    "feature-only": "metarec.warmup.learner:FeatureOnly",
}

# Learners registered at run time with @register_learner (scripts, notebooks, tests).
_RUNTIME: dict[str, type] = {}

L = TypeVar("L", bound=type)


class UnknownLearnerError(UserError, KeyError):
    """No learner of that name; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class LearnerImportError(ImportError):
    """A registered learner exists but could not be imported."""


class LearnerClashError(UserError, LookupError):
    """Two distributions provide the same learner name and the user has not chosen one."""


@dataclass(frozen=True)
class Provider:
    """One distribution's claim on a name: where the object is and who ships it."""

    target: str
    distribution: str | None
    version: str | None
    origin: str  # "builtin" or "entry-point"

    def label(self) -> str:
        """``dist version (module:attr)``."""
        dist = f"{self.distribution} {self.version}" if self.distribution else "an unknown distribution"
        return f"{dist} ({self.target})"


def parse_choices(env_var: str) -> dict[str, str]:
    """``name=dist,name2=dist2`` from an environment variable (empty when unset)."""
    out: dict[str, str] = {}
    for item in os.environ.get(env_var, "").split(","):
        if item.strip():
            name, sep, dist = item.partition("=")
            if not sep or not name.strip() or not dist.strip():
                raise ValueError(f"{env_var}: {item!r} is not of the form NAME=DISTRIBUTION")
            out[name.strip()] = dist.strip()
    return out


def _norm(dist: str | None) -> str:
    return (dist or "").lower().replace("_", "-").replace(".", "-")


def resolve_providers(name: str, providers: list[Provider], env_var: str, what: str) -> tuple[Provider | None, str | None]:
    """The one provider of ``name``, or ``(None, clash message)``.

    Duplicates of one target from one distribution (installed twice) are one provider.
    """
    unique: list[Provider] = []
    for p in providers:
        if not any(q.target == p.target and _norm(q.distribution) == _norm(p.distribution) for q in unique):
            unique.append(p)
    if len(unique) == 1:
        return unique[0], None
    try:
        choice = parse_choices(env_var).get(name)
    except ValueError as exc:
        return None, str(exc)
    if choice is not None:
        chosen = [p for p in unique if _norm(p.distribution) == _norm(choice)]
        if len(chosen) == 1:
            return chosen[0], None
        return None, (f"{env_var} chooses distribution {choice!r} for {what} {name!r}, but it is provided by "
                      + " and by ".join(p.label() for p in unique))
    dists = [p.distribution or "?" for p in unique]
    return None, (
        f"{what} name {name!r} is provided by {len(unique)} distributions: "
        + " and ".join(p.label() for p in unique)
        + f"; choose one with {env_var}={name}={dists[0]} (or uninstall one)"
    )


@dataclass
class LearnerEntry:
    """What the registry knows about one learner before (and after) importing it."""

    name: str
    target: str  # "module:attribute"
    source: str  # top-level package that provides it ("metarec", "baselines", ...)
    origin: str  # "builtin", "entry-point", "runtime" or "clash"
    _cls: type | None = field(default=None, repr=False)
    distribution: str | None = None
    version: str | None = None
    #: Set when several distributions provide this name and none was chosen.
    clash: str | None = None

    def load(self) -> type:
        """Import and return the learner class, or raise :class:`LearnerImportError` / :class:`LearnerClashError`."""
        if self.clash:
            raise LearnerClashError(self.clash)
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


def _metarec_dist() -> tuple[str, str | None]:
    try:
        return "metarec", metadata.version("metarec")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "metarec", None


def module_distribution(module: str) -> tuple[str | None, str | None]:
    """The installed distribution (name, version) that provides top-level package of ``module``."""
    top = module.split(".")[0]
    try:
        dists = metadata.packages_distributions().get(top) or []
    except Exception:  # pragma: no cover - broken metadata must not break the registry
        dists = []
    if not dists:
        return None, None
    try:
        return dists[0], metadata.version(dists[0])
    except metadata.PackageNotFoundError:
        return dists[0], None


def learner_entries() -> dict[str, LearnerEntry]:
    """Every registered learner by name, without importing any of them.

    Run-time registrations win (an explicit choice in code); otherwise a name claimed by more
    than one distribution (built-in or entry point) is a clash unless chosen through
    ``METAREC_LEARNER_CHOICE`` -- the entry then raises :class:`LearnerClashError` on use.
    """
    claims: dict[str, list[Provider]] = {}
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        claims.setdefault(ep.name, []).append(
            Provider(ep.value, getattr(dist, "name", None), getattr(dist, "version", None), "entry-point"))
    mdist, mver = _metarec_dist()
    for name, target in BUILTIN_LEARNERS.items():
        claims.setdefault(name, []).append(Provider(target, mdist, mver, "builtin"))
    entries: dict[str, LearnerEntry] = {}
    for name, providers in claims.items():
        chosen, clash = resolve_providers(name, providers, LEARNER_CHOICE_ENV, "learner")
        if chosen is None:
            entries[name] = LearnerEntry(name, " | ".join(p.target for p in providers), "?", "clash", clash=clash)
            continue
        source = chosen.target.split(":")[0].split(".")[0]
        entries[name] = LearnerEntry(name, chosen.target, source, chosen.origin,
                                     distribution=chosen.distribution, version=chosen.version)
    for name, cls in _RUNTIME.items():
        target = f"{cls.__module__}:{cls.__qualname__}"
        dist, ver = module_distribution(cls.__module__)
        entries[name] = LearnerEntry(name, target, cls.__module__.split(".")[0], "runtime", cls,
                                     distribution=dist, version=ver)
    return dict(sorted(entries.items()))


def learner_clashes() -> dict[str, str]:
    """``{name: message}`` of every learner name that two distributions claim without a choice."""
    return {n: e.clash for n, e in learner_entries().items() if e.clash}


def available_learners() -> tuple[dict[str, LearnerEntry], list[PluginFailure]]:
    """Import every registered learner; return the ones that loaded and the ones that failed."""
    ok: dict[str, LearnerEntry] = {}
    failed: list[PluginFailure] = []
    for name, entry in learner_entries().items():
        if entry.clash:
            continue  # see learner_clashes()
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


def learner_protocol(cls: type) -> str:
    """The protocol a learner class follows: its ``protocol`` attribute, ``user-cold`` by default."""
    return getattr(cls, "protocol", "user-cold")


def learners_for_protocol(protocol: str = "user-cold") -> list[str]:
    """Names of the registered learners (that import) which follow ``protocol``."""
    ok, _ = available_learners()
    return [n for n, e in ok.items() if learner_protocol(e.load()) == protocol]


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
