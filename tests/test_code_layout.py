"""The code stays readable: no module grows past ~500 lines and no module defines a
top-level function or class twice (a later copy silently shadows the earlier one)."""

import ast
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPS = ["portal", "marketplace", "builder", "deployments", "billing", "gateway", "lab"]
MAX_LINES = 520


def _modules() -> list[Path]:
    found = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts:
                found.append(path)
    return sorted(found)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_short_and_defines_each_name_once(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_LINES, f"{path.name} has grown past {MAX_LINES} lines"
    tree = ast.parse(text)
    names = Counter(
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    )
    twice = sorted(name for name, n in names.items() if n > 1)
    assert not twice, f"defined more than once in {path.name}: {twice}"
