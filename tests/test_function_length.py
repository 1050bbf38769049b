"""No function in `spd/` is longer than 60 lines (STYLE.md), from its `def` line to its last line.

The files are parsed, not imported. `CHECKED` lists the parts of the package this holds for;
it grows until it is the whole of `spd/`.
"""

import ast
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

MAX_LINES = 60
CHECKED = (
    "spd/launch",
    "spd/scripts",
    "spd/tracking",
    "spd/persistence",
    "spd/analysis",
)


def long_functions(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int]]:
    """(qualified name, length in lines) of every function or method longer than `max_lines`."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > max_lines:
                    found.append((name.removesuffix("."), length))
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def checked_files() -> list[Path]:
    return sorted(path for part in CHECKED for path in (REPO_ROOT / part).rglob("*.py"))


def test_the_checked_parts_exist() -> None:
    for part in CHECKED:
        assert (REPO_ROOT / part).is_dir(), part


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = [
        f"{path.relative_to(REPO_ROOT)}:{name} has {length} lines"
        for path in checked_files()
        for name, length in long_functions(path.read_text())
    ]
    assert not too_long, f"over {MAX_LINES} lines (split them): {too_long}"


@pytest.mark.parametrize("body_lines", [59, 60])
def test_the_walk_finds_a_long_nested_function(body_lines: int) -> None:
    inner = "\n".join(f"            x{i} = {i}" for i in range(body_lines))
    source = f"class A:\n    def outer(self):\n        def inner():\n{inner}\n        return 1\n"
    found = dict(long_functions(source))
    # `inner` is its def line plus the body; `outer` adds its own def line and the return.
    assert found.get("A.outer.inner") == (None if body_lines + 1 <= MAX_LINES else body_lines + 1)
    assert found.get("A.outer") == body_lines + 3
