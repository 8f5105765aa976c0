"""MkDocs hooks of the metarec site (declared under ``hooks:`` in mkdocs.yml).

* The results page is generated at build time from the committed files under
  ``benchmarks/results/`` (see ``docs/gen_results.py``): the page's markdown holds a marker
  that is replaced by the rendered tables, so no number on the site is typed by hand.
* A method page's presets table is generated from the learner class itself
  (``<!-- metarec:presets module:Class -->``): its ``Config`` defaults and every preset, so the
  page shows the values the code runs with.
* Every sub-command registered in the ``metarec.cli`` entry-point group must import: the CLI
  reference is generated from the live click group, which shows a command that fails to load
  as "(unavailable)" -- the strict build fails instead of publishing that.
* Every public module of ``metarec`` and ``baselines`` must be rendered by a ``::: module``
  directive of some API reference page; a module that is not makes the strict build fail, so
  a new module cannot silently miss the reference.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.metarec")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
RESULTS_MARKER = "<!-- metarec:generated-results -->"
PRESETS_MARKER = re.compile(r"<!-- metarec:presets ([\w.]+):(\w+) -->")
API_DIR = DOCS / "reference" / "api"
DOCUMENTED_PACKAGES = ("metarec", "baselines")


def _load_gen_results() -> Any:
    spec = importlib.util.spec_from_file_location("metarec_docs_gen_results", DOCS / "gen_results.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def public_modules(root: Path = ROOT) -> list[str]:
    """Dotted names of every public module of the documented packages (found on disk, not imported)."""
    names = []
    for package in DOCUMENTED_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith("_") for p in parts) or "__pycache__" in parts:
                continue
            names.append(".".join(parts))
    return names


def documented_modules(api_dir: Path = API_DIR) -> set[str]:
    """Identifiers of every ``::: identifier`` directive in the API reference pages."""
    found: set[str] = set()
    for page in api_dir.glob("*.md"):
        found.update(re.findall(r"(?m)^:::\s+([\w.]+)\s*$", page.read_text("utf-8")))
    return found


def broken_cli_commands() -> list[str]:
    """``name (target): error`` of every ``metarec.cli`` entry point that fails to load."""
    from importlib import metadata

    import click

    broken = []
    for ep in metadata.entry_points(group="metarec.cli"):
        try:
            obj = ep.load()
        except Exception as exc:
            broken.append(f"{ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
            continue
        if not isinstance(obj, click.Command):
            broken.append(f"{ep.name} ({ep.value}): not a click command")
    return broken


def on_pre_build(config: Any, **kwargs: Any) -> None:
    for problem in broken_cli_commands():
        log.warning("CLI command %s -- the CLI reference would show it as unavailable", problem)
    missing = [m for m in public_modules() if m not in documented_modules()]
    for module in missing:
        log.warning(
            "public module %s is not rendered by any API page: add '::: %s' to a page under %s",
            module, module, API_DIR.relative_to(ROOT),
        )


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float):
        text = f"{value:g}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text}`".replace("|", "\\|")


def presets_table(module_name: str, class_name: str) -> str:
    """Markdown table of a learner's Config defaults and presets (only keys that differ are filled)."""
    import dataclasses
    import importlib

    cls = getattr(importlib.import_module(module_name), class_name)
    fields = [f for f in dataclasses.fields(cls.Config)]
    defaults = {f.name: getattr(cls.Config(), f.name) for f in fields}
    presets = dict(getattr(cls, "presets", {}) or {})
    default_preset = getattr(cls, "default_preset", None)
    head = ["key", "Config default", *[
        f"`{name}`" + (" (bench default)" if name == default_preset else "") for name in presets
    ]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fields:
        cells = [f"`{f.name}`", _fmt(defaults[f.name])]
        for preset in presets.values():
            if f.name in preset and preset[f.name] != defaults[f.name]:
                value = preset[f.name]
                value = tuple(value) if isinstance(value, list) else value
                cells.append("" if value == defaults[f.name] else _fmt(value))
            else:
                cells.append("")
        rows.append("| " + " | ".join(cells) + " |")
    note = (
        f"Generated from `{module_name}.{class_name}` at build time: an empty preset cell means "
        "the preset keeps the Config default."
    )
    return note + "\n\n" + "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if RESULTS_MARKER in markdown:
        gen = _load_gen_results()
        markdown = markdown.replace(RESULTS_MARKER, gen.render(ROOT / "benchmarks" / "results"))

    def presets(match: re.Match[str]) -> str:
        try:
            return presets_table(match.group(1), match.group(2))
        except Exception as exc:  # a broken learner must fail the strict build, not hide
            log.warning("%s: cannot render presets of %s:%s: %s: %s", page.file.src_uri,
                        match.group(1), match.group(2), type(exc).__name__, exc)
            return f"*(presets of {match.group(1)}:{match.group(2)} could not be loaded)*"

    return PRESETS_MARKER.sub(presets, markdown)
