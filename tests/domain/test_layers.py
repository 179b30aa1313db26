"""The direction of the layout, written down as a test (ARCHITECTURE.md draws it).

    bot  →  scheduler  →  handlers  →  models  →  wechat  →  core

A package may import the packages to its right, never one to its left. Two exceptions the layout
itself states: `scheduler` imports no `handlers` (jobs build values and render them through
scheduler/notify, not through chat handlers), and `models` imports no `wechat` (the domain does not
speak WeChat). Imports inside functions count: a late import is still an arrow. And the domain
returns values: `models` does not render templates (handlers and scheduler/notify do).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["bot", "scheduler", "handlers", "models", "wechat", "core"]
FORBIDDEN = {
    "scheduler": {"handlers"},
    "models": {"wechat", "flask", "werkzeug"},
    "wechat": {"flask", "werkzeug"},
    "core": {"flask", "werkzeug", "sqlalchemy"},
}
FORBIDDEN_MODULES = {"models": ("core.render", "jinja2")}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    """Every import in `package` that climbs up the layers or crosses a forbidden line."""
    above = set(LAYERS[:LAYERS.index(package)])
    banned = above | FORBIDDEN.get(package, set())
    modules = FORBIDDEN_MODULES.get(package, ())
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, target in imported_packages(path):
            if target.split(".")[0] in banned or any(target == m or target.startswith(m + ".") for m in modules):
                out.append(f"{path.relative_to(root)}:{line} imports {target}")
    return out


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule fails on what it is meant to catch: a late import of bot inside a function."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from bot.pipeline import handle_message\n    import flask\n")
    assert imported_packages(sample) == [(2, "bot.pipeline"), (3, "flask")]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.py").write_text("from core.render import render\nfrom core.config import Settings\n")
    assert violations("models", tmp_path) == ["models/x.py:1 imports core.render"]
