"""favor.ops's import structure: the reference module stays out of the package, and no cycles.

Read off the source with ``ast``, so that a new import anywhere in ops/ fails here.
"""

import ast
from pathlib import Path

import pytest

OPS = Path(__file__).resolve().parents[2] / "ops"
MODULES = sorted(path.stem for path in OPS.glob("*.py"))
REFERENCE = "reference"


def _imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """favor.ops modules ``node`` imports, by file stem (``__init__`` for the package itself)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif node.level == 0:
        names = [node.module or ""]
    elif node.level == 1 and node.module is None:  # from . import x, y
        names = [f"favor.ops.{alias.name}" for alias in node.names]
    elif node.level == 1:
        names = [f"favor.ops.{node.module}"]
    else:
        return []
    found = []
    for name in names:
        if name == "favor.ops":
            found.append("__init__")
        elif name.startswith("favor.ops."):
            found.append(name.removeprefix("favor.ops.").split(".")[0])
    return found


def _tree(module: str) -> ast.Module:
    return ast.parse((OPS / f"{module}.py").read_text(), filename=f"{module}.py")


def _imports(module: str) -> set[str]:
    """Every favor.ops module that ``module`` imports, at any depth of its code."""
    return {
        target
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in _imported_modules(node)
    }


def test_scanner_resolves_every_import_form():
    source = (
        "import favor.ops.reference\n"
        "from favor.ops import reference\n"
        "from favor.ops.reference import x\n"
        "from . import features, reference\n"
        "from .reference import x\n"
        "import torch\n"
        "from torch import nn\n"
    )
    found = [target for node in ast.parse(source).body for target in _imported_modules(node)]
    assert found == ["reference", "__init__", "reference", "features", "reference", "reference"]


@pytest.mark.parametrize("module", [m for m in MODULES if m != REFERENCE])
def test_package_modules_never_import_the_reference_module(module):
    assert REFERENCE not in _imports(module)


@pytest.mark.parametrize("module", MODULES)
def test_package_imports_sit_at_module_level(module):
    # An import of a sibling inside a function is how a cycle gets hidden; none is needed.
    tree = _tree(module)
    top_level = {id(node) for node in tree.body}
    nested = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and id(node) not in top_level
        and _imported_modules(node)
    ]
    assert nested == [], f"{module}.py imports favor.ops inside code at lines {nested}"


def test_module_imports_form_no_cycle():
    graph = {module: _imports(module) for module in MODULES}
    finished: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module) :], module))
        if module in finished:
            return
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        finished.add(module)

    for module in graph:
        visit(module, ())
