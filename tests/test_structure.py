"""The package's import graph has no cycle: every module can be read top-down from the leaves.

The graph is built from the source with ``ast``: every ``import`` and ``from ... import`` of a firepe
module, inside functions included (a lazy import still makes the two modules depend on each other).
Two rules follow Python's own semantics rather than exceptions: imports under ``if TYPE_CHECKING:``
never run and are left out; importing ``a.b.c`` also imports the packages ``a.b`` and ``a`` unless
the importing module is inside them (a package's own modules load while its ``__init__`` runs).
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


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
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
    assert "firepe.positions" in graph["firepe.config"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_config_is_a_leaf_above_positions():
    """config.py imports only positions, the attention backend names (attention.py: positions and its C
    kernel's loader) and the limits."""
    allowed = {"firepe", "firepe.positions", "firepe.attention", "firepe.limits"}
    graph = import_graph()
    assert {d for d in graph["firepe.config"] if not d.startswith("firepe.positions.")} <= allowed
    assert graph["firepe.attention"] <= {"firepe.positions", "firepe.positions.base", "firepe.attention_kernel"}
    assert graph["firepe.attention_kernel"] <= {"firepe.positions", "firepe.positions.fire_kernel"}


def test_old_config_import_paths_keep_working():
    from firepe import config, data, model, runs, tracking, train

    assert model.GPTConfig is config.GPTConfig and model.preset is config.preset and model.PRESETS is config.PRESETS
    assert train.TrainConfig is config.TrainConfig and train.RESUMABLE is config.RESUMABLE
    assert data.DataConfig is config.DataConfig
    assert runs.dataclass_from_dict is config.dataclass_from_dict and runs.check_fields is config.check_fields
    assert tracking.parse_log_to is config.parse_log_to and tuple(tracking.BACKENDS) == config.TRACKERS
    from firepe import loading

    assert train.load_run is loading.load_run and train.resolve_device is loading.resolve_device
    from firepe import exported

    assert exported.load_export is loading.load_export
