"""The package's import graph has no cycle: every module can be read top-down from the leaves.

The graph is built from the source with ``ast``: every ``import`` and ``from ... import`` of a firepe
module, inside functions and under ``if TYPE_CHECKING:`` included (a lazy import, or one made only for
type annotations, still makes the two modules depend on each other). Importing ``a.b.c`` also imports the
packages ``a.b`` and ``a`` unless the importing module is inside them (a package's own modules load while
its ``__init__`` runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import firepe

ROOT = Path(firepe.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in mods else source)
        deps = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and every package above it
                dep = ".".join(parts[:i])
                inside = name == dep or name.startswith(dep + ".")
                if dep in mods and not inside:
                    deps.add(dep)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"firepe.config", "firepe.loading", "firepe.train", "firepe.positions.fire"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_imports_and_finds_cycles():
    graph = import_graph()
    assert "firepe.loading" in graph["firepe.score"]  # `from .loading import resolve_device` inside a function
    assert "firepe.positions" in graph["firepe.kinds"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_is_a_leaf():
    """config.py imports nothing of firepe but the limits and the type hints (both import nothing of firepe); the
    encoding checks reach it through MODEL_CHECKS, registered by firepe.kinds."""
    graph = import_graph()
    assert graph["firepe.config"] <= {"firepe.limits", "firepe.hints"}
    assert graph["firepe.limits"] == set() and graph["firepe.hints"] == set() and graph["firepe.cbuild"] == set()
    from firepe import config, kinds

    assert kinds.check_model in config.MODEL_CHECKS
    assert graph["firepe.attention"] <= {"firepe.config", "firepe.positions", "firepe.positions.base",
                                         "firepe.attention_kernel", "firepe.attention_flash"}
    assert graph["firepe.attention_flash"] <= {"firepe.attention_kernel", "firepe.cbuild", "firepe.positions",
                                               "firepe.positions.base"}


#: names a module defines at its top level, and the private ones anywhere in it (methods, attributes)
def _private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_module_reaches_for_another_modules_private_names():
    """``from .x import _name`` and ``obj._name`` where ``_name`` is private to another firepe module (defined
    there, not here) are refused: a private name is the defining module's to change."""
    mods = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in mods.items()}
    private = {name: _private_names(tree) for name, tree in trees.items()}
    everyone = set().union(*private.values())
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("firepe")):
                found += [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr in everyone and node.attr not in private[name]:
                base = node.value
                if not (isinstance(base, ast.Name) and base.id in ("self", "cls")):
                    found.append(f"{name}: {ast.unparse(node)}")
    assert not found, "private names used across modules: " + "; ".join(found)


def test_configs_come_from_config_only():
    """No module re-exports the config types: they are imported from firepe.config (one source, no chains)."""
    from firepe import config, data, model, runs, tracking, train

    names = {"GPTConfig", "preset", "PRESETS", "TrainConfig", "DataConfig", "PrepareConfig", "RESUMABLE",
             "dataclass_from_dict", "check_fields", "parse_log_to"}
    for module in (data, model, runs, tracking, train):
        assert not names & set(getattr(module, "__all__", ())), module.__name__
    assert config.GPTConfig.__module__ == "firepe.config"
