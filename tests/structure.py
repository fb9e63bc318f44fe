"""Read pagrob's structure from its source: the module import graph, its circles, and size counts.

Run as a script to print the counts the structure issue tracks (import circles, pagrob imports inside
functions, longest parameter list, largest function):

    python tests/structure.py [src/pagrob]

The graph counts every import statement wherever it sits (module level, inside functions, under try), except
those under `if TYPE_CHECKING:`, which never run and so cannot form a circle at import time.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "pagrob"
DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def module_name(path: Path, root: Path) -> str:
    """`pagrob.data.base` for root/data/base.py, `pagrob.data` for root/data/__init__.py."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def modules(root: Path = DEFAULT_ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement that can run, with whether it sits inside a function."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]), in_function)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _runtime_imports(node, inner)


def _targets(node: ast.stmt, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The pagrob modules one import statement loads (the deepest known module of each name)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = importer.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{a.name}" for a in node.names] + [base]
        names = [n for n in names[:-1] if n in known] or [base]  # `from pkg import submodule` loads the submodule
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith(PACKAGE):
            out.add(name)
    return out


def import_graph(root: Path = DEFAULT_ROOT) -> dict[str, set[str]]:
    """Module -> pagrob modules it imports (self-imports dropped)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node, _ in _runtime_imports(tree):
            edges |= _targets(node, name, path.name == "__init__.py", set(mods))
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            visit(v)
    return sorted(found)


def function_imports(root: Path = DEFAULT_ROOT) -> list[tuple[str, int, str]]:
    """(module, line, text) of every pagrob import that sits inside a function."""
    mods = modules(root)
    out = []
    for name, path in mods.items():
        source = path.read_text()
        for node, in_function in _runtime_imports(ast.parse(source)):
            if in_function and _targets(node, name, path.name == "__init__.py", set(mods)):
                out.append((name, node.lineno, ast.get_source_segment(source, node) or ""))
    return out


def functions(root: Path = DEFAULT_ROOT) -> Iterator[tuple[str, int, int]]:
    """(qualified name, parameters, lines) of every function and method; self/cls are not counted."""
    for name, path in modules(root).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                params += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
                params = [p for p in params if p not in ("self", "cls")]
                yield f"{name}.{node.name}", len(params), node.end_lineno - node.lineno + 1


def main(root: Path = DEFAULT_ROOT) -> None:
    graph = import_graph(root)
    found = cycles(graph)
    print(f"import circles (strongly connected groups of modules): {len(found)}")
    for group in found:
        print("   ", " <-> ".join(group))
    inner = function_imports(root)
    print(f"pagrob imports inside functions: {len(inner)}")
    for mod, line, text in inner:
        print(f"    {mod}:{line}: {text.splitlines()[0]}")
    funcs = list(functions(root))
    widest = max(funcs, key=lambda f: f[1])
    longest = max(funcs, key=lambda f: f[2])
    print(f"longest parameter list: {widest[1]} ({widest[0]})")
    print(f"largest function: {longest[2]} lines ({longest[0]})")
    print("parameter lists over 8:", ", ".join(f"{n} {p}" for n, p, _ in sorted(funcs, key=lambda f: -f[1])
                                               if p > 8) or "none")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_ROOT)
