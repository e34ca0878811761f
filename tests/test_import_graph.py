"""The import graph of ``controller/``: no circle, and no function-local import that would hide one.

The layers themselves are import-linter's contracts (``.importlinter``, run by ``make lint``); these
checks cover what a layers contract does not see: a circle inside one package, and local imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parent.parent / "controller"


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_import_graph_has_no_circle() -> None:
    graph = grimp.build_graph("controller", include_external_packages=False)
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert circles(graph) == [["a", "b", "c"]]


def local_imports_without_a_reason(path: Path) -> list[str]:
    """``file:line`` of each import inside a function with no comment on its line or the line above."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    unexplained = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                block = _comment_block_above(lines, node.lineno)
                if "#" not in here and not above.strip().startswith("#") and not block:
                    unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return unexplained


def _comment_block_above(lines: list[str], number: int) -> bool:
    """A comment right above the run of imports that the import on line ``number`` belongs to."""
    row = number - 2
    while row >= 0 and _part_of_imports(lines[row].strip()):
        row -= 1
    return row >= 0 and lines[row].strip().startswith("#")


def _part_of_imports(line: str) -> bool:
    return line == "" or line.startswith(("from ", "import ", ")"))


def test_every_function_local_import_says_why_it_is_local() -> None:
    """Local imports are only for deferring heavy modules (the Lambda's cold start), each with a comment:
    never to hide a circle."""
    unexplained = [
        where for path in sorted(PACKAGE.rglob("*.py")) for where in local_imports_without_a_reason(path)
    ]
    assert unexplained == []
