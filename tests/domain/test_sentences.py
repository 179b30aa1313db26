"""Every sentence a user reads lives in templates/, so a change of wording touches no code.

A Chinese string literal in a .py file is a sentence when it carries Chinese punctuation or more
than ten Chinese characters; names, headers, labels and role names (data) are neither. Docstrings
and comments are for developers and are not looked at. Two literals are data that the rule would
mistake for sentences; they are listed below with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "core", "handlers", "models", "scheduler", "wechat")
DATA_LITERALS = {
    "年度要点工作任务分解表",  # the seed's own name of the task sheet, accepted as a sheet name
    "，控制台：",  # part of the audit log's record of who acted: "王芳(wangfang，控制台：root)"
}
CJK = re.compile(r"[\u4e00-\u9fff]")
PUNCTUATION = re.compile(r"[，。！？；：、（）“”…]")


def is_sentence(text: str) -> bool:
    """Chinese punctuation, or more than ten Chinese characters."""
    return bool(PUNCTUATION.search(text)) or len(CJK.findall(text)) > 10


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def sentences_in(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every Chinese sentence written as a string literal in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs and CJK.search(node.value) and is_sentence(node.value)
            and node.value not in DATA_LITERALS]


def test_no_sentence_outside_templates() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            found += [f"{name}:{line}: {text[:40]!r}" for line, text in sentences_in(path)]
    assert found == []


def test_the_check_tells_a_sentence_from_data(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""模块说明，不算。"""\nROLE = "班主任"\nHEADER = ("学号", "姓名")\n'
                      'MSG = f"第{3}行：学号重复"\n')
    assert [line for line, _ in sentences_in(sample)] == [4]
