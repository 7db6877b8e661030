"""The house's plan, checked from the code itself: every import between the project's modules
(module-level, inside functions and under TYPE_CHECKING alike: a lazy import is still a dependency)
is read with ``ast``; the graph must have no circle of any length, and no arrow may point from a
lower layer to a higher one. A ``__main__`` module is a program entry that composes the floors
(``python -m patchcore`` runs the export floor's commands) and may import any layer.

Layers, bottom to top (docs/architecture.md draws them):

* ``runtime`` core (``runtime/*.py``, ``runtime/engines``, ``runtime/search``): bundle format,
  preprocessing, engines, search, post-processing, the predictor;
* ``runtime.line``: the line layer that the commands and ``serve`` share (records, outputs, journal,
  reload, watch, camera, sinks, sources, triggers);
* ``runtime.serve``: the HTTP service;
* ``runtime.cli``: the ``patchcore-rt`` command line;
* ``patchcore``: fitting (PyTorch), built on the runtime;
* ``export``: ONNX/TensorRT export and parity, built on both.
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "patchcore", "export")
# bottom to top; a module belongs to the longest prefix that names it
LAYERS = ("runtime", "runtime.line", "runtime.serve", "runtime.cli", "patchcore", "export")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The project module an imported dotted name lives in (``a.b.c`` -> ``a.b`` when c is a name in a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports, wherever in the file the import stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        for name in names:
            owner = _owner(name)
            if owner and owner != module:
                found.add(owner)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_circle_and_an_arrow_up():
    """The checks themselves can fail: a made-up graph with a three-module circle is caught."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert layer_of("runtime.cli.app") > layer_of("runtime.serve.app") > layer_of("runtime.line.records") \
        > layer_of("runtime.search")
    assert layer_of("export.cli") > layer_of("patchcore.model") > layer_of("runtime.cli")


def test_the_imports_are_read():
    """A sanity floor for the reader: known edges are found (a relative, an absolute, a lazy import)."""
    assert "runtime.bundle" in GRAPH["runtime.predictor"]
    assert any(m.startswith("runtime") for m in GRAPH["patchcore.model"])
    assert any(m.startswith("patchcore") for m in GRAPH["export.cli"])


def test_no_import_circle():
    assert circles(GRAPH) == []


def test_no_arrow_up():
    up = [f"{m} ({LAYERS[layer_of(m)]}) -> {t} ({LAYERS[layer_of(t)]})" for m in sorted(GRAPH)
          if not m.endswith("__main__") for t in sorted(GRAPH[m]) if layer_of(t) > layer_of(m)]
    assert up == []


def test_runtime_layers_exist():
    """The layers the plan names are there (a renamed package must rename the plan too)."""
    for layer in LAYERS:
        assert layer in MODULES, layer


def test_small_files():
    sizes = {str(p.relative_to(ROOT)): p.read_text().count("\n") for p in MODULES.values()}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}
