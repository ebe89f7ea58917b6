"""The package's shape: no function under scripts/ longer than 80 lines (measured with ast)."""

from __future__ import annotations

import ast

from kvstack import REPO

LIMIT = 80


def _long_functions() -> dict[str, int]:
    out = {}
    for path in sorted((REPO / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    out[f"{path.relative_to(REPO)}:{node.name}"] = lines
    return out


def test_no_function_is_longer_than_80_lines():
    assert _long_functions() == {}


def test_test_files_have_unique_names():
    """pytest imports test modules by their base name (no packages under tests/): two files of the
    same name in different tiers stop the whole session at collection."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
