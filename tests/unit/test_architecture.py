"""The package layout keeps its rules: no import circle, light core, one home per concept.

See docs/architecture.rst for what may import what.
"""

from __future__ import annotations

import ast
import pkgutil
import sys
from pathlib import Path

import pytest

import bmcd

SRC = Path(bmcd.__file__).parent


def _modules() -> dict[str, Path]:
    out = {"bmcd": SRC / "__init__.py"}
    for info in pkgutil.walk_packages([str(SRC)], prefix="bmcd."):
        rel = info.name.split(".")[1:]
        path = SRC.joinpath(*rel)
        out[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, *, lazy: bool = True) -> set[str]:
    """bmcd modules that ``name`` imports: at module level, and inside functions too when
    ``lazy``; never those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        base = package.split(".")
        base = base[: len(base) - (level - 1)]
        return ".".join(base + ([module] if module else []))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not lazy and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("bmcd"):
                        found.add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = resolve(child.module, child.level)
                if not base.startswith("bmcd"):
                    continue
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in MODULES else base)
            visit(child)

    visit(tree)
    # the lazy public-name table of bmcd/__init__ is an import too
    found.discard(name)
    return {m for m in found if m in MODULES}


#: every import, lazy ones inside functions included
GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}
#: what runs when a module is imported
IMPORT_TIME = {name: _imports(name, path, lazy=False) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_every_module_is_found():
    for expected in ("bmcd.errors", "bmcd.preprocessing", "bmcd.classifier", "bmcd.cli"):
        assert expected in MODULES


def test_no_import_circle_between_modules():
    # The package root only re-exports (lazily). Lazy imports inside functions are the
    # documented way down-layer code reaches an optional upper layer (docs/architecture.rst:
    # metrics -> report for rendering), so
    # the import-time graph must be a DAG, and the lazy edges are listed below.
    graph = {k: {m for m in v if m != "bmcd"} for k, v in IMPORT_TIME.items() if k != "bmcd"}
    assert _cycles(graph) == []


def test_lazy_upward_imports_are_only_the_documented_ones():
    graph = {k: {m for m in v if m != "bmcd"} for k, v in GRAPH.items() if k != "bmcd"}
    members = {m for cycle in _cycles(graph) for m in cycle}
    allowed = {"bmcd.artifact", "bmcd.metrics",
               "bmcd.metrics._evaluation", "bmcd.report"}
    allowed |= {m for m in MODULES if m.startswith("bmcd.data")}
    assert members <= allowed, sorted(members - allowed)


def test_the_cycle_finder_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "low",
    ["bmcd.errors", "bmcd.imageio", "bmcd.preprocessing", "bmcd.artifact", "bmcd.data",
     "bmcd.synthetic"],
)
def test_base_modules_import_no_higher_layer(low):
    higher = ("bmcd.classifier", "bmcd.training", "bmcd.runtimes", "bmcd.exporters",
              "bmcd.scoring", "bmcd.cli", "bmcd.bench", "bmcd.report", "bmcd.serving")
    bad = sorted(m for m in GRAPH[low] if m.startswith(higher))
    assert bad == [], f"{low} imports {bad}"


def test_scoring_engines_never_import_each_other():
    assert "bmcd.scoring.dask" not in GRAPH.get("bmcd.scoring.local", set())
    assert "bmcd.scoring.local" not in GRAPH.get("bmcd.scoring.dask", set())


def test_every_deliberate_error_is_a_bmcd_error():
    """No bare ``raise ValueError(...)`` & co. in the library: errors.py has the classes."""
    builtins = {"ValueError", "TypeError", "RuntimeError", "KeyError", "FileNotFoundError",
                "FileExistsError", "OSError", "IOError", "Exception"}
    offenders = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                f = node.exc.func
                if isinstance(f, ast.Name) and f.id in builtins:
                    offenders.append(f"{name}:{node.lineno} {f.id}")
    assert offenders == []


def test_exceptions_are_defined_only_in_errors_py():
    offenders = []
    for name, path in MODULES.items():
        if name == "bmcd.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for b in node.bases:
                    base = b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                    if base.endswith(("Error", "Exception")):
                        offenders.append(f"{name}.{node.name}")
    assert offenders == []
