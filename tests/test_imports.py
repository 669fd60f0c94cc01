"""No import cycle inside the i2i_fast package.

Only module-level imports count (also those under a module-level ``if`` or ``try``, which run at
import time, except ``if TYPE_CHECKING:`` blocks, which never run). An import inside a function
or method runs when it is called, after every module has loaded: that is the accepted way to
reach a module that would otherwise close a cycle, so it is left out of the graph.
"""

from __future__ import annotations

import ast
import os

import pytest

PKG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "i2i_fast")


def modules(pkg_dir: str = PKG_DIR, pkg: str = "i2i_fast") -> dict:
    """{dotted module name: source path} of every .py file under the package."""
    out = {}
    for root, dirs, files in os.walk(pkg_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(root, pkg_dir)
        prefix = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
        for f in sorted(files):
            if f.endswith(".py"):
                out[prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"] = os.path.join(root, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module):
    """Import nodes that run when the module is imported: the body, descending into if/try/with
    blocks but not into functions, classes' methods, or ``if TYPE_CHECKING:``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            todo += node.orelse if _is_type_checking(node.test) else node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo += node.body  # a class body runs at import time; its methods do not


def _bound_names(tree: ast.Module) -> set:
    """Names a module binds (defs, classes, assignments, imports; function bodies included, so a
    superset of its top level: an unsure name counts as the package's own, the stricter reading)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def import_graph(mods: dict) -> dict:
    """{module: set of package modules it imports at module level}. ``from X import Y`` is an
    edge to X.Y when that is a module of the package; when X is a package whose __init__ does not
    bind Y, Y is a submodule with no source here (the compiled extension ``_C``): no edge; else
    the edge is to X. The parent packages Python initializes first are not edges."""
    trees = {}
    for name, path in mods.items():
        with open(path) as f:
            trees[name] = ast.parse(f.read(), path)
    packages = {n for n, p in mods.items() if os.path.basename(p) == "__init__.py"}
    graph = {}
    for name, tree in trees.items():
        is_pkg = name in packages
        deps = set()
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = []
                for a in node.names:
                    if f"{base}.{a.name}" in mods:
                        targets.append(f"{base}.{a.name}")
                    elif not (base in packages and a.name != "*" and a.name not in _bound_names(trees[base])):
                        targets.append(base)
            for t in targets:
                # `import a.b.c` also imports a and a.b; the nearest package module is the edge
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _describe(comp: list, graph: dict) -> str:
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
    return "{" + ", ".join(comp) + "}: " + "; ".join(edges)


def test_no_import_cycle_in_package():
    graph = import_graph(modules())
    assert "i2i_fast.bench.cli" in graph  # the walk reaches subpackages
    found = cycles(graph)
    assert not found, "module-level import cycles in i2i_fast:\n" + "\n".join(_describe(c, graph) for c in found)


@pytest.mark.parametrize(
    "files, expect",
    [
        # a <-> b through a relative from-import of a sibling module: a cycle
        ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import x\n"}, [["p.a", "p.b"]]),
        # the same import inside a function is left out: no cycle
        ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"}, []),
        # TYPE_CHECKING imports never run; a try block's do
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",
            },
            [],
        ),
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": "try:\n    import p.a\nexcept ImportError:\n    pass\n",
            },
            [["p.a", "p.b"]],
        ),
        # a compiled submodule (no source: not bound by the package's __init__) is not the package
        ({"__init__.py": "from . import a\n", "a.py": "from . import _ext\n"}, []),
        ({"__init__.py": "from . import a\nX = 1\n", "a.py": "from . import X\n"}, [["p", "p.a"]]),
        # a subpackage's module importing its parent package's module, and back
        (
            {"__init__.py": "", "c.py": "from .s import d\n", "s/__init__.py": "", "s/d.py": "from .. import c\n"},
            [["p.c", "p.s.d"]],
        ),
    ],
)
def test_cycle_detection(tmp_path, files, expect):
    """The checker itself: it finds cycles through each import form and skips function-level ones."""
    for rel, text in files.items():
        path = tmp_path / "p" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert cycles(import_graph(modules(str(tmp_path / "p"), "p"))) == expect
