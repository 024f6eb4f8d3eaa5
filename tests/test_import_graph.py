"""The import graph of src/embedtune has no cycles, counting every import of embedtune modules wherever it stands
(module level, inside functions, under TYPE_CHECKING): a cycle dodged by a late import is still a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, src): p for p in (src / "embedtune").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x / from .y import z
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # embedtune.x.Name -> embedtune.x
                    target = target.rpartition(".")[0]
                if target and target != name and target != "embedtune":
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and graph["embedtune.pipeline"], "the graph was not read"
    assert cycles(graph) == [], "import cycles (module groups that import each other)"


def test_a_late_import_that_closes_a_loop_is_found(tmp_path):
    package = tmp_path / "embedtune"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from embedtune.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from embedtune import a\n    return a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from embedtune.a import x\n")
    graph = import_graph(tmp_path)
    assert graph["embedtune.a"] == {"embedtune.b"} and graph["embedtune.b"] == {"embedtune.a"}
    assert cycles(graph) == [["embedtune.a", "embedtune.b"]]
