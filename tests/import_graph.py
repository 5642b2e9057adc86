"""The project's import graph, read from the source (nothing is imported).

Reusable by any test about who imports whom::

    graph = import_graph()                    # module -> {Import(target, lazy, line)}
    cycles = find_cycles(graph)               # strongly connected sets of project modules
    eager_closure(graph, "persona_sdk.agent") # what importing a module pulls in

Modules are named as installed: ``cli/`` is ``persona_sdk.cli`` and
``exporters/`` is ``persona_sdk.exporters`` (pyproject's package-dir).
Relative imports are resolved; ``from pkg import name`` points at
``pkg.name`` when that is a project module, else at ``pkg``. Imports inside
functions are kept with ``lazy=True`` (they run only when the function is
called); imports under ``if TYPE_CHECKING:`` are left out (they never run).
Implicit parent-package imports are not edges.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"persona_sdk": ROOT / "persona_sdk", "persona_sdk.cli": ROOT / "cli",
            "persona_sdk.exporters": ROOT / "exporters"}


@dataclass(frozen=True)
class Import:
    target: str  # dotted module name (project or third-party)
    lazy: bool  # inside a function: runs only when called
    line: int


def project_modules() -> dict[str, Path]:
    """Dotted name -> source file of every project module."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def import_graph() -> dict[str, set[Import]]:
    """Every project module's imports."""
    modules = project_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[Import] = set()

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub, lazy)
                continue
            visit_stmt(child, lazy)

    def visit_stmt(child: ast.AST, lazy: bool) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                found.add(Import(alias.name, lazy, child.lineno))
        elif isinstance(child, ast.ImportFrom):
            base = _resolve(package, child.module, child.level)
            for alias in child.names:
                sub = f"{base}.{alias.name}"
                found.add(Import(sub if sub in modules else base, lazy, child.lineno))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, True)
            return
        if not isinstance(child, (ast.Import, ast.ImportFrom)):
            visit(child, lazy)

    visit(tree, False)
    return found


def _resolve(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def edges(graph: dict[str, set[Import]], lazy: bool = True) -> dict[str, set[str]]:
    """Project module -> project modules it imports (lazy ones too unless ``lazy=False``)."""
    return {m: {i.target for i in imps if i.target in graph and (lazy or not i.lazy)} for m, imps in graph.items()}


def eager_closure(graph: dict[str, set[Import]], module: str) -> set[str]:
    """Every module (project or third-party) that importing ``module`` imports, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for imp in graph.get(current, ()):
            if not imp.lazy and imp.target not in seen:
                seen.add(imp.target)
                todo.append(imp.target)
    return seen


def find_cycles(graph: dict[str, set[Import]], lazy: bool = True) -> list[set[str]]:
    """Sets of project modules that import each other in a circle (Tarjan's strongly connected components)."""
    adj = edges(graph, lazy)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    counter = 0
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(adj[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in adj[node]:
                    cycles.append(component)
    return cycles
