"""The layout shows the design: batchgen's modules import each other without a cycle.

The graph is read from the source with `ast` (module-level imports only: an import
inside a function is a deliberate, lazy edge, and `if TYPE_CHECKING:` ones never run).
`python -m tests.test_layout` prints it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchgen"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in modules}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    edges = {module_name(path): imports_of(path, modules) for path in paths}
    for name, targets in edges.items():  # a module's own packages load before it anyway
        parts = name.split(".")
        targets -= {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_modules_import_each_other_without_a_cycle() -> None:
    edges = graph()
    assert len(edges) > 30  # the walk found the package
    assert cycles(edges) == []


def test_the_engine_never_imports_the_cli_or_the_emulator() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name in ("batchgen.__main__", "batchgen.cli", "batchgen.commands"):
            continue
        if name.startswith("batchgen.emulator"):
            continue
        assert not {"batchgen.cli", "batchgen.commands"} & targets, name
        assert not any(t.startswith("batchgen.emulator") for t in targets), name


if __name__ == "__main__":
    for module, targets in sorted(graph().items()):
        print(f"{module}: {', '.join(sorted(targets)) or '-'}")
    found = cycles(graph())
    print("cycles:", found or "none")
    sys.exit(1 if found else 0)
