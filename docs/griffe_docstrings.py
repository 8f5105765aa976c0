"""Griffe extension used by the API reference: render metarec's reST-flavoured docstrings.

metarec's docstrings are written for readers of the source: they use Sphinx roles
(``:class:`~metarec.tasks.TaskSet```), reST literals and ``::`` literal blocks. mkdocstrings
renders Markdown, so this extension, run once the whole package is loaded,

* turns each role into a cross-reference to the object's API entry when the target is a
  public metarec (or baselines) object that the reference renders, and into inline code
  otherwise (torch, numpy, private helpers), so ``mkdocs build --strict`` never meets a
  dangling reference;
* turns a paragraph-ending ``::`` into ``:`` (the indented block after it is already a
  Markdown code block);
* gives a method without a docstring the docstring of the method it overrides, the way
  :func:`inspect.getdoc` does, so that the reference shows what every public method does;
* documents an attribute (a config field, a module constant) from its Sphinx-style ``#:``
  comment lines above it, or else from a trailing ``# comment`` on its line.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|obj|exc|const):`([^`]+)`")
DOCUMENTED_PACKAGES = ("metarec", "baselines")


def _is_public_path(path: str) -> bool:
    return all(not part.startswith("_") for part in path.split("."))


class MetarecDocstrings(griffe.Extension):
    """Rewrite Sphinx roles as autorefs / code spans and inherit missing method docstrings."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name not in DOCUMENTED_PACKAGES:
            return
        self._collection = loader.modules_collection
        self._inherit_docstrings(pkg)
        self._attribute_comments(pkg)
        self._rewrite(pkg)

    # -- docstring inheritance ---------------------------------------------------------
    def _inherit_docstrings(self, obj: griffe.Object) -> None:
        for member in list(obj.members.values()):
            if member.is_alias:
                continue
            if member.is_class:
                self._inherit_into_class(member)
            if member.is_module or member.is_class:
                self._inherit_docstrings(member)

    def _inherit_into_class(self, cls: griffe.Class) -> None:
        try:
            bases = cls.mro()
        except Exception:  # unresolvable base (torch, abc): nothing to inherit from it
            bases = []
        for name, member in cls.members.items():
            if member.is_alias or not member.is_function or member.docstring is not None:
                continue
            for base in bases:
                other = base.members.get(name)
                if other is not None and not other.is_alias and other.docstring is not None:
                    member.docstring = griffe.Docstring(
                        other.docstring.value, parent=member, lineno=other.docstring.lineno
                    )
                    break

    # -- attribute comments --------------------------------------------------------
    def _attribute_comments(self, obj: griffe.Object) -> None:
        for member in obj.members.values():
            if member.is_alias:
                continue
            if member.is_attribute and member.docstring is None and member.lineno:
                text = self._comment_for(member)
                if text:
                    member.docstring = griffe.Docstring(text, parent=member, lineno=member.lineno)
            if member.is_module or member.is_class:
                self._attribute_comments(member)

    @staticmethod
    def _comment_for(attr: griffe.Object) -> str:
        try:
            lines = attr.module.lines
        except Exception:
            return ""
        if not lines:
            return ""
        idx = attr.lineno - 1  # 0-based index of the attribute's first line
        above: list[str] = []
        j = idx - 1
        while j >= 0 and lines[j].strip().startswith("#:"):
            above.insert(0, lines[j].strip()[2:].strip())
            j -= 1
        if above:
            return "\n".join(above)
        own = lines[idx] if idx < len(lines) else ""
        m = re.search(r"\s{2}#\s+(?!noqa|type:|pragma)(.+)$", own)
        return m.group(1).strip() if m else ""

    # -- roles ---------------------------------------------------------------------
    def _rewrite(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self._convert(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(member)

    def _convert(self, obj: griffe.Object, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            target = match.group(2).strip()
            short = target.startswith("~")
            target = target.lstrip("~")
            shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
            path = self._resolve(obj, target.lstrip("."))
            if path is None:
                return f"`{shown}`"
            return f"[`{shown}`][{path}]"

        text = ROLE.sub(replace, text)
        # reST literal-block marker at the end of a paragraph line.
        return re.sub(r"(?m)(\S)::$", r"\1:", text)

    def _resolve(self, obj: griffe.Object, target: str) -> str | None:
        parts = target.split(".")
        if parts[0] in DOCUMENTED_PACKAGES:
            path = target
        else:
            try:
                head = obj.resolve(parts[0])
            except Exception:
                return None
            path = ".".join([head, *parts[1:]])
        if not path.startswith(DOCUMENTED_PACKAGES) or not _is_public_path(path):
            return None
        try:
            found = self._collection.get_member(path)
        except Exception:
            return None
        if found.is_alias:
            try:
                path = found.final_target.path
            except Exception:
                return None
        if not _is_public_path(path):
            return None
        return path
