"""No import cycles inside onnxcam/ (issue #12 item 7).

A cycle works only as long as nobody reorders imports, and hiding one edge inside a function keeps
the cycle (the import still runs, later). So every ``import`` counts wherever it is, except under
``if TYPE_CHECKING:`` (never executed). Importing ``a.b.c`` also runs package ``a.b``'s
``__init__``, so that edge counts too, unless the importer lives inside ``a.b`` (its package is
already initialising by then) or ``a.b`` is the root package, which only re-exports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root/package`` (packages by their __init__)."""
    found: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement of ``module`` may load (the module, or module.name)."""
    skipped = _type_checking_nodes(tree)
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                source = ".".join(anchor + ([source] if source else []))
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)


def _with_packages(name: str, importer: str, package: str) -> Iterator[str]:
    """``name`` and the packages whose __init__ importing it runs, as seen from ``importer``."""
    parts = name.split(".")
    for k in range(2, len(parts) + 1):
        prefix = ".".join(parts[:k])
        if prefix != package and not importer.startswith(prefix + "."):
            yield prefix


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (module- or function-level, TYPE_CHECKING excluded)."""
    mods = modules(root, package)
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            targets.update(t for t in _with_packages(name, module, package) if t in mods)
        graph[module] = targets - {module}
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): each holds cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per tangle, as a closed import path (what the failure message shows)."""
    return [_path_through(graph, component) for component in tangles(graph)]


def _path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed import path inside ``component`` starting at its first module (for the message)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in parents:
                    parents[target] = node
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_onnxcam_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, "onnxcam")
    assert "onnxcam.graph.split" in graph and "onnxcam.postprocess" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_detector_sees_function_level_and_package_init_cycles(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.low import x\n",  # the root package only re-exports: not an edge
        "pkg/low.py": "x = 1\n",
        "pkg/a.py": "def f():\n    from pkg.b import g\n",
        "pkg/b.py": "from . import a\n",
        "pkg/sub/__init__.py": "from pkg.sub.method import m\n",
        "pkg/sub/method.py": "from pkg.post import p\n",
        "pkg/sub/pca.py": "from pkg.sub import method\n",  # inside pkg.sub: its own package is no edge
        "pkg/post.py": "from pkg.sub.pca import q\n",  # runs pkg/sub/__init__ -> method -> post
        "pkg/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low import x\n",
        "pkg/low2.py": "import pkg.typed\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.typed"] == set() and graph["pkg.low2"] == {"pkg.typed"}
    assert graph["pkg.post"] == {"pkg.sub", "pkg.sub.pca"}
    assert sorted(sorted(c) for c in tangles(graph)) == [
        ["pkg.a", "pkg.b"], ["pkg.post", "pkg.sub", "pkg.sub.method", "pkg.sub.pca"],
    ]
    for cycle in find_cycles(graph):
        assert cycle[0] == cycle[-1] and all(b in graph[a] for a, b in zip(cycle, cycle[1:]))
