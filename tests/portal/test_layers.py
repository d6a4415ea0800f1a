"""Tenancy is the lowest floor: apart from the composition root (settings, urls, celery),
no module under portal/ imports another Gantry app. Other apps reach the dashboard and the
demo command through their AppConfig hooks instead."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GANTRY_APPS = {"deployments", "marketplace", "builder", "billing", "gateway", "lab"}
COMPOSITION_ROOT = {"settings.py", "urls.py", "celery.py"}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _portal_modules() -> list[Path]:
    return sorted(
        p
        for p in (ROOT / "portal").rglob("*.py")
        if not (p.parent == ROOT / "portal" and p.name in COMPOSITION_ROOT)
    )


@pytest.mark.parametrize("path", _portal_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_tenancy_module_imports_no_higher_app(path):
    higher = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for line, module in _imported_modules(path)
        if module.split(".")[0] in GANTRY_APPS
    ]
    assert not higher, higher


def test_the_check_sees_function_local_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from deployments.selectors import deployment_list\n")
    assert _imported_modules(sample) == [(2, "deployments.selectors")]
