"""`hftrain/core/` imports one way: its modules' import graph, read from the source with `ast` (imports inside
functions included, where a cycle would otherwise hide), has no cycle."""

import ast

from conftest import REPO

CORE = REPO / "hftrain" / "core"


def core_imports(path) -> set[str]:
    """The core modules `path` imports, wherever in the file: `from hftrain.core.x import …`,
    `from hftrain.core import x`, `import hftrain.core.x`."""
    modules = {p.stem for p in CORE.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "hftrain.core":
            found |= {alias.name for alias in node.names} & modules
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hftrain.core."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("hftrain.core.")}
    return found - {path.stem}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as the modules along it (first = last), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for successor in sorted(graph.get(node, ())):
            found = visit(successor, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    return next(filter(None, (visit(node, []) for node in sorted(graph))), None)


def test_core_imports_flow_one_way():
    graph = {path.stem: core_imports(path) for path in CORE.glob("*.py")}
    assert graph["callbacks"] >= {"data", "module", "runs"}  # the reader sees the imports it should
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    source = tmp_path / "console.py"
    source.write_text("def header():\n    from hftrain.core.callbacks import run_folder\n")
    assert core_imports(source) == {"callbacks"}
    graph = {"console": {"callbacks"}, "callbacks": {"data", "module"}, "data": {"console"}, "module": set()}
    assert cycle(graph) == ["callbacks", "data", "console", "callbacks"]
