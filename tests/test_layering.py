"""The package's modules import each other in one direction: no cycle, function-level imports included.

protocols (the contract and leaf helpers) <- engine (context, scheduler, in-process runner, backend
registry) <- algebra (``runnables``) <- backends <- apps (CLI, data engine, demo, interop, public API).
Each module belongs to one layer (``LAYERS``) and imports only its own layer and those below it.
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


# Lowest first. A name stands for that module and, unless it is the package itself, every module under it.
LAYERS: list[tuple[str, list[str]]] = [
    # the contract (``protocols``) and leaf helpers every layer may use; ``progress`` is the display the
    # algebra's ``imap(progress=True)`` drives, ``_aio`` runs a coroutine from synchronous code, ``recent``
    # is the bounded map process state keeps, ``cache`` the step cache's keys, entries and stores (its
    # node is in the algebra). A name no module has yet costs nothing.
    ("protocols", [
        "protocols", "errors", "config", "options", "pacing", "model_calls", "progress", "_aio", "recent", "cache",
    ]),
    # one scheduler, the in-process runner, run events, process state and services, the run context,
    # and the backend registry (``engine.registry``: names to factories imported on first use, so the
    # algebra finds a call's backend without importing the backends layer)
    ("engine", ["engine", "context", "services"]),
    ("algebra", ["runnables"]),
    ("backends", ["backends"]),
    # what a person runs or imports: the public API (the package itself), the command line and its
    # files, the Ray Data engine, the demo, LangChain/OpenTelemetry interop, usage counting, test helpers
    # ``serve`` is the HTTP server (Ray Serve, FastAPI), ``targets`` loads MODULE:ATTR for the commands
    ("apps", ["", "cli", "data", "data_cli", "datafiles", "shardlog", "jsonl", "records", "demo", "interop", "usage",
              "testing", "serve", "targets"]),
]


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the layer ``module`` belongs to (the longest matching name wins)."""
    best: tuple[int, int] | None = None  # (length of the matching name, layer)
    for rank, (_, names) in enumerate(LAYERS):
        for short in names:
            full = f"{PACKAGE}.{short}" if short else PACKAGE
            if module == full or (short and module.startswith(full + ".")):
                if best is None or len(full) > best[0]:
                    best = (len(full), rank)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer than the importer's, as ``"a (layer) -> b (layer)"``."""
    found = []
    for source in sorted(graph):
        for target in sorted(graph[source]):
            if layer_of(target) > layer_of(source):
                found.append(
                    f"{source} ({LAYERS[layer_of(source)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
                )
    return found


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


def test_every_module_belongs_to_one_layer() -> None:
    unplaced = []
    for name in module_names():
        try:
            layer_of(name)
        except KeyError:
            unplaced.append(name)
    assert unplaced == [], "modules in no layer (add them to LAYERS)"


def test_imports_go_down_the_layers_only() -> None:
    """protocols <- engine <- algebra <- backends <- apps: no module imports a layer above its own."""
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert upward_imports(graph) == []


def test_the_direction_checker_sees_an_upward_import() -> None:
    toy = {
        f"{PACKAGE}.runnables.base": {f"{PACKAGE}.engine.registry", f"{PACKAGE}.backends"},
        f"{PACKAGE}.backends": {f"{PACKAGE}.engine.registry"},
        f"{PACKAGE}.engine.registry": {f"{PACKAGE}.protocols"},
        f"{PACKAGE}.protocols": set(),
    }
    assert upward_imports(toy) == [f"{PACKAGE}.runnables.base (algebra) -> {PACKAGE}.backends (backends)"]
    assert layer_of(PACKAGE) == len(LAYERS) - 1  # the package itself (its public API) is an app
    assert layer_of(f"{PACKAGE}.data_cli") == layer_of(f"{PACKAGE}.data") == len(LAYERS) - 1
    assert layer_of(f"{PACKAGE}.engine.registry") == 1


def test_the_checker_sees_function_level_imports() -> None:
    modules = module_names()
    # ``Runnable.explain`` imports lazily, inside the method: the walk must still see it
    assert imports_of(f"{PACKAGE}.runnables.base", modules[f"{PACKAGE}.runnables.base"], modules)
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(toy) == [["a", "b", "c"]]
