"""The Python examples of the docs pages run as written (the tutorial's are run in test_docs_tutorial).

Each ```python block of a page is executed in order, in one namespace per page, from the
repository root (the pages use repository-relative paths such as docs/examples/...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ("quickstart.md", "custom-data.md", "serving.md", "tuning.md")
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((REPO / "docs" / page).read_text("utf-8"))


@pytest.mark.parametrize("page", PAGES)
def test_page_python_examples_run(page, monkeypatch, capsys):
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no python example"
    monkeypatch.chdir(REPO)
    namespace: dict = {"__name__": f"docs_{page.replace('.', '_').replace('-', '_')}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/{page} [python block {i + 1}]", "exec"), namespace)
        except Exception as exc:  # name the block, keep the traceback
            raise AssertionError(f"docs/{page}, python block {i + 1} failed: {type(exc).__name__}: {exc}") from exc
    capsys.readouterr()
