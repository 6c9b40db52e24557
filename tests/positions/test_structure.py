"""``positions`` is a leaf package, and ``kind`` is the one attribute telling what an encoding does."""

import ast
from pathlib import Path

import pytest
import torch

from firepe import cbuild
from firepe import positions as P

PACKAGE = Path(P.__file__).parent


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield 0, alias.name


#: modules of firepe outside ``positions`` that it may import: leaves that import nothing from firepe
LEAVES = ("hints", "cbuild")


def test_positions_imports_nothing_from_firepe_outside_it():
    """Besides itself, ``positions`` imports only the leaf modules :data:`LEAVES` (type hints, the C build),
    which import nothing from firepe: the package can be lifted into another project with those two files."""
    files = sorted(PACKAGE.glob("*.py"))
    assert {"fire_kernel.py", "fire_table.py", "registry.py"} <= {f.name for f in files}
    for path in files:
        for level, module in _imports(path):
            assert level <= 1 or (level == 2 and module in LEAVES), \
                f"{path.name} imports from the parent package ({'.' * level}{module})"
            if level == 0:
                assert not module.startswith("firepe") or module.startswith("firepe.positions"), (path.name, module)
    for leaf in LEAVES:
        for level, module in _imports(PACKAGE.parent / f"{leaf}.py"):
            assert level == 0 and not module.startswith("firepe"), (leaf, module)


def test_old_import_paths_keep_working():
    from firepe import kernels
    from firepe.attention import causal_row_blocks

    assert causal_row_blocks is P.causal_row_blocks
    assert kernels.available is P.fire_kernel.available and kernels.table_lookup is P.fire_kernel.table_lookup
    assert cbuild.source("fire_table.c") is not None  # the C source is found from positions/


def test_causal_row_blocks():
    q = torch.arange(5)
    assert P.causal_row_blocks(q, q, 2) == [(0, 2, 2), (2, 4, 4), (4, 5, 5)]
    assert P.causal_row_blocks(q, q.flip(0), 2) == [(0, 2, 5), (2, 4, 5), (4, 5, 5)]  # unsorted keys: all


@pytest.mark.parametrize("name", P.available())
def test_kind_tells_what_an_encoding_contributes(name):
    enc = P.build(name, num_heads=2, head_dim=8, **({"factor": 2.0} if name in ("rope_pi", "yarn", "longrope") else {}))
    rotary = ("rope", "rope_pi", "yarn", "p_rope", "longrope")
    want = {"nope": "none", "fox": "data", "cope": "context"}.get(name, "rotary" if name in rotary else "bias")
    assert enc.kind == want
    assert enc.adds_bias == (want == "bias")
    with pytest.raises(AttributeError):
        enc.adds_bias = True  # read-only: derived from kind
