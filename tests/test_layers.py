"""The packages depend only downward: ``core`` (records, config schema, model loading, distributed helpers,
the task contract) ← ``teacher`` and ``student`` (the two roles, independent of each other) ← ``orchestrator``
(the loop, the protocols, the CLI). Every import counts, at module level or inside a function; only a block
under ``if TYPE_CHECKING:`` (annotations, never run) is left out. No cycle between modules either."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"core": 0, "teacher": 1, "student": 1, "orchestrator": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYER:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == (
            "TYPE_CHECKING"
        ):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module → the project modules it imports (a ``from pkg import mod`` names ``pkg.mod``)."""
    modules = modules or _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t.split(".")[0] in LAYER and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_every_import_points_down_a_layer():
    wrong = sorted(
        f"{src} imports {dst}"
        for src, deps in import_graph().items()
        for dst in deps
        if (a := src.split(".")[0]) != (b := dst.split(".")[0]) and LAYER[b] >= LAYER[a]
    )
    assert not wrong, "upward or sideways imports (core ← teacher, student ← orchestrator):\n" + "\n".join(
        wrong
    )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    # a package's __init__ re-exporting its submodules is not a cycle through the package
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    assert _cycles(graph) == []


@pytest.mark.parametrize(
    "src, text, bad",
    [
        (
            "core/x.py",
            "def f():\n    from orchestrator import runner\n",
            "core.x imports orchestrator.runner",
        ),
        ("student/x.py", "from teacher.model import Teacher\n", "student.x imports teacher.model"),
    ],
)
def test_the_check_catches_an_upward_import_inside_a_function(tmp_path, src, text, bad):
    modules = _modules()
    path = tmp_path / src
    path.parent.mkdir(parents=True)
    path.write_text(text)
    modules[src[:-3].replace("/", ".")] = path
    graph = import_graph(modules)
    found = {f"{s} imports {d}" for s, deps in graph.items() for d in deps if s == src[:-3].replace("/", ".")}
    assert bad in found


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
