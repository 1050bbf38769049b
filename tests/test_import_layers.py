"""The package's import graph: no circles, and imports only go down the stages.

Every `spd` module is parsed (not imported), and each `import`/`from … import` of an `spd` module
counts wherever it stands: at the top, inside a function, or under `TYPE_CHECKING`. The stages, from
the bottom up, are those below; a module may import its own stage and the stages beneath it. Each
stage's `__init__.py` says what it holds.
"""

import ast
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

SPD = REPO_ROOT / "spd"

# Bottom first. `spd` itself (the top-level re-exports) sits above everything.
STAGES: tuple[tuple[str, ...], ...] = (
    ("spd.errors",),
    ("spd.config",),
    ("spd.loading",),
    ("spd.persistence",),
    ("spd.data",),
    ("spd.models",),
    ("spd.losses",),
    ("spd.eval",),
    ("spd.train",),
    ("spd.tracking",),
    ("spd.experiments",),
    ("spd.analysis",),
    ("spd.app",),
    ("spd.launch",),
    ("spd.scripts",),
)
TOP = len(STAGES)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> int:
    if module == "spd":
        return TOP
    for index, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no stage: add its package to STAGES")


def spd_imports(path: Path, modules: set[str], this: str) -> set[str]:
    """The `spd` modules a file (module `this`) imports; a package when a name is no module."""
    found: set[str] = set()
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod when there is one.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "spd" or n.startswith("spd."))
    found.discard(this)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(SPD.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): spd_imports(f, modules, module_name(f)) for f in files}
    for module, imported in graph.items():
        unknown = imported - modules
        assert not unknown, f"{module} imports {sorted(unknown)}, which do not exist"
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} (stage {STAGES[stage_of(module)][0] if stage_of(module) < TOP else 'spd'}) "
        f"imports {target} (stage {STAGES[stage_of(target)][0] if stage_of(target) < TOP else 'spd'})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if stage_of(target) > stage_of(module)
    ]


def test_the_package_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_imports_only_go_down_the_stages() -> None:
    violations = layer_violations(import_graph())
    assert not violations, "upward imports:\n" + "\n".join(violations)


def test_every_stage_package_documents_what_it_holds_and_may_import() -> None:
    for prefixes in STAGES:
        for prefix in prefixes:
            package = SPD.parent / prefix.replace(".", "/")
            if package.is_dir():
                doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
                assert doc and "May import" in doc, f"{prefix}/__init__.py: say what it may import"


# The checker itself must be able to fail: it finds a planted circle and a planted upward import.
@pytest.mark.parametrize(
    ("graph", "expected_cycle"),
    [
        ({"spd.a": {"spd.b"}, "spd.b": {"spd.c"}, "spd.c": {"spd.a"}}, True),
        ({"spd.a": {"spd.b"}, "spd.b": {"spd.c"}, "spd.c": set()}, False),
    ],
)
def test_the_cycle_finder_finds_a_planted_circle(
    graph: dict[str, set[str]], expected_cycle: bool
) -> None:
    assert (find_cycle(graph) is not None) == expected_cycle


def test_the_layer_check_flags_an_import_up_the_stages() -> None:
    planted = {"spd.models.x": {"spd.train.optimize"}, "spd.train.optimize": {"spd.models.x"}}
    assert layer_violations(planted) == [
        "spd.models.x (stage spd.models) imports spd.train.optimize (stage spd.train)"
    ]


def test_the_parser_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "planted.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from spd.train.optimize import optimize\n"
        "def f() -> None:\n    from spd.eval import metrics\n"
    )
    found = spd_imports(
        source, {"spd.train.optimize", "spd.eval.metrics", "spd.eval"}, "spd.models.planted"
    )
    assert found == {"spd.train.optimize", "spd.eval.metrics"}


def test_the_package_docstring_lists_the_stages_in_their_order() -> None:
    # `spd/__init__.py` tells a reader the stage order; it must be this test's order.
    doc = ast.get_docstring(ast.parse((SPD / "__init__.py").read_text())) or ""
    names = [prefix.removeprefix("spd.") for (prefix, *_) in STAGES]
    positions = [doc.find(f"`{name}`") for name in names]
    missing = [name for name, pos in zip(names, positions, strict=True) if pos < 0]
    assert not missing, f"spd/__init__.py does not name the stages {missing}"
    assert positions == sorted(positions), "spd/__init__.py names the stages out of order"
