"""The README's Python examples run as written (a block preceded by `<!-- no-test -->` is skipped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?P<marker><!-- no-test -->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group("code"))
        for m in BLOCK.finditer(text)
        if not m.group("marker")
    ]


def test_readme_has_the_python_api_example():
    assert any("MPO.from_matrix" in code for _, code in _blocks())


@pytest.mark.parametrize("line, code", _blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_python_block_runs(line, code, capsys):
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
