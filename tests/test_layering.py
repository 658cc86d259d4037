"""The package's modules import each other in one direction: no cycle, function-level imports included.

protocols <- errors, config <- engine (context, scheduler, in-process runner) <- algebra <- backends <- apps.
The only cycle allowed is the runnables' base class building its own subclasses (``|``, ``.map()``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rayrunnables

ROOT = Path(rayrunnables.__file__).parent
PACKAGE = "rayrunnables"


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every package module ``name`` imports, at any level, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(base: str, level: int) -> str:
        if level == 0:
            return base
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - (level - 1)]
        return ".".join([*anchor, base] if base else anchor)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module or "", node.level)
            if base.startswith(PACKAGE):
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def allowed(source: str, target: str) -> bool:
    """The base class may build its own subclasses, and they import it."""
    algebra = f"{PACKAGE}.runnables"
    return source == f"{algebra}.base" and target.startswith(algebra)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycle_among_the_package_modules() -> None:
    modules = module_names()
    graph = {
        name: {t for t in imports_of(name, path, modules) if not allowed(name, t)} for name, path in modules.items()
    }
    assert cycles(graph) == []


def test_the_checker_sees_function_level_imports() -> None:
    modules = module_names()
    # ``Runnable.explain`` imports lazily, inside the method: the walk must still see it
    assert imports_of(f"{PACKAGE}.runnables.base", modules[f"{PACKAGE}.runnables.base"], modules)
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(toy) == [["a", "b", "c"]]
