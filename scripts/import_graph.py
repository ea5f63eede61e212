"""lenx's module import graph: `python scripts/import_graph.py [--src src/lenx] [--quiet]`.

Reads every module under src/lenx with `ast` (nothing is imported) and prints
- the graph: each module and the lenx modules it imports (`name*` = imported inside a function only);
- the cycles: groups of modules that import each other (strongly connected components), each with one cycle;
- the upward arrows: function-local imports of a module that already depends on the importer (they close a cycle);
- every function-local lenx import, with its file and line.
Exit status 1 if there is any cycle, else 0. An import counts whether it is at module level or inside a function
(a function-local import only delays the cycle to the first call). `from lenx.a import b` is an arrow to lenx.a.b
when that is a module, else to lenx.a; the implicit import of a parent package's __init__ is not an arrow.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lenx"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    local: bool  # inside a function body (runs at call time, not at import time)
    path: str
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _local_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes that sit inside a function (at any depth)."""
    local: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return local


def edges(root: Path = SRC) -> tuple[set[str], list[Edge]]:
    """All lenx modules under root and every import arrow between them."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(root, p): p for p in files}
    top = root.name
    out: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        local = _local_nodes(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        rel = str(path.relative_to(root.parent.parent)) if root.parent.parent in path.parents else str(path)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against the importing package
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    while target not in modules and "." in target:  # `import lenx.a.b.c` where c is a name
                        target = target.rpartition(".")[0]
                    edge = Edge(name, target, id(node) in local, rel, node.lineno)
                    if target != name and edge not in out:  # one arrow per statement and module it imports
                        out.append(edge)
    return set(modules), out


def cycles(modules: set[str], arrows: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in arrows:
        graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~50)
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return sorted(found)


def one_cycle(group: list[str], arrows: list[Edge]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first), closed (first == last)."""
    inside = set(group)
    graph: dict[str, list[str]] = {m: [] for m in group}
    for e in arrows:
        if e.source in inside and e.target in inside:
            graph[e.source].append(e.target)
    start = group[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(set(graph[v])):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def report(root: Path = SRC) -> dict:
    """The graph's numbers as plain data (what tests/test_imports.py checks)."""
    modules, arrows = edges(root)
    groups = cycles(modules, arrows)
    member = {m: i for i, g in enumerate(groups) for m in g}
    local = [e for e in arrows if e.local]
    upward = [e for e in local if e.source in member and member[e.source] == member.get(e.target)]
    return {"modules": modules, "arrows": arrows, "cycles": groups,
            "examples": [one_cycle(g, arrows) for g in groups], "local": local, "upward": upward}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SRC, help="the package directory (default: src/lenx)")
    parser.add_argument("--quiet", action="store_true", help="numbers, cycles and local imports only, no graph")
    args = parser.parse_args(argv)
    r = report(args.src)
    if not args.quiet:
        print("graph (module: imports; * = inside a function only)")
        for m in sorted(r["modules"]):
            targets = {}
            for e in r["arrows"]:
                if e.source == m:
                    targets[e.target] = targets.get(e.target, True) and e.local
            shown = ", ".join(t + ("*" if only_local else "") for t, only_local in sorted(targets.items()))
            print(f"  {m}: {shown or '-'}")
    print(f"{len(r['modules'])} modules, {len({(e.source, e.target) for e in r['arrows']})} arrows, "
          f"{len(r['cycles'])} cycles, {len(r['upward'])} upward arrows, "
          f"{len(r['local'])} function-local lenx imports")
    for group, example in zip(r["cycles"], r["examples"]):
        print(f"cycle: {' -> '.join(example)}  (group: {', '.join(group)})")
    for e in r["upward"]:
        print(f"upward: {e.source} -> {e.target}  ({e.path}:{e.line})")
    for e in r["local"]:
        print(f"local: {e.path}:{e.line}  {e.source} -> {e.target}")
    return 1 if r["cycles"] else 0


if __name__ == "__main__":
    sys.exit(main())
