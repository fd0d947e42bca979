"""The package's imports run one way: core -> data -> radiomics -> models -> reporting -> engine | inference -> cli.

Read from the source (every import statement, at module level or inside a function), so a lazy
import cannot hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "breastai"
LAYERS = {"core": 0, "data": 1, "radiomics": 2, "models": 3, "reporting": 4, "engine": 5, "inference": 5, "cli": 6}


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("breastai"):
                for alias in node.names:  # ``from breastai.x import y`` may name the module breastai.x.y
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("breastai")}
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: relative import"
        # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are dependencies too, except the
        # packages this module sits in (they are already importing when it runs).
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        deps |= {".".join(d.split(".")[:i]) for d in deps for i in range(2, d.count(".") + 1)}
        graph[name] = {d for d in deps if d not in own and d in modules}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = _graph()


def test_every_module_belongs_to_a_layer():
    assert {m for m in GRAPH if _layer(m) is None} == {"breastai"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_or_across_only(module):
    here = _layer(module)
    if here is None:
        return
    for dep in GRAPH[module]:
        there = _layer(dep)
        if there is None:
            continue  # the package root (its version)
        assert LAYERS[there] <= LAYERS[here], f"{module} imports {dep}: {there} sits above {here}"
        if {here, there} == {"engine", "inference"}:
            pytest.fail(f"{module} imports {dep}: the engine (training) and inference are siblings")


def test_no_import_cycles():
    """Between modules, counting the package ``__init__`` of every import too."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH:
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_in_package_import_is_swallowed():
    """A broken import inside breastai must fail loudly, not make a command or a format vanish."""
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            caught = {getattr(h.type, "id", None) for h in node.handlers} | {
                getattr(e, "id", None) for h in node.handlers if isinstance(h.type, ast.Tuple) for e in h.type.elts}
            reraised = all(any(isinstance(s, ast.Raise) for s in ast.walk(h)) for h in node.handlers)
            if caught & {"ImportError", "ModuleNotFoundError"} and not reraised:
                for inner in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                    named = ""
                    if isinstance(inner, ast.ImportFrom):
                        named = "." if inner.level else inner.module or ""
                    elif isinstance(inner, ast.Import):
                        named = ",".join(a.name for a in inner.names)
                    elif isinstance(inner, ast.Call) and getattr(inner.func, "attr", "") == "import_module" and inner.args:
                        named = str(getattr(inner.args[0], "value", ""))
                    if named.startswith((".", "breastai")) or ",breastai" in named:
                        pytest.fail(f"{path.relative_to(PKG.parent)}:{inner.lineno} swallows an in-package ImportError")
