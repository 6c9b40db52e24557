"""Optional fused CPU kernel for FIRE's table-mode bias (``csrc/fire_table.c``).

The table-mode bias (:class:`firepe.positions.fire.FIRE`, ``bias_mode="table"``) is a gather with
linear interpolation per (query, key, head). Written with PyTorch ops it needs several passes over
``H x Q x K`` tensors forward and scatter-adds backward; this kernel does the forward in one pass
and the backward (gradients to the table, to ``psi(d)`` and to ``1 / psi(max(L, i))``) in one more,
with per-thread accumulators instead of atomics. The interpolation coordinates of a (query, key) pair
do not depend on the head, so with SSE2 (every x86-64 CPU) heads go four at a time through one lookup
into a head-minor copy of the tables, with 4 x 4 register transposes to and from the ``[H, Q, K]``
layout; other CPUs, key layouts that are not consecutive, and leftover heads use scalar loops.

It is plain C (OpenMP when available), compiled with the system C compiler on first use (well
under a second) into ``$FIREPE_CACHE`` (default ``~/.cache/firepe``) and loaded with ``ctypes``.
Without a compiler, or with ``FIREPE_KERNEL=0`` in the environment, FIRE uses the PyTorch
implementation instead (same values within float rounding, same gradients); :func:`available`
tells which is in use. Only float32 CPU tensors take the kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["available", "table_lookup"]

_SOURCE = Path(__file__).with_name("csrc") / "fire_table.c"
_LIB: list = []  # [ctypes.CDLL or None] once loading was attempted
_CFLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC")  # part of the cache key


def _cache_dir() -> Path:
    return Path(os.environ.get("FIREPE_CACHE") or Path.home() / ".cache" / "firepe")


def _compile(compiler: str, source: Path, target: Path, defines: tuple[str, ...] = ()) -> bool:
    """Compile ``source`` into the shared library ``target`` (atomically); OpenMP if it builds.

    ``-ffp-contract=off`` keeps ``a * b + c`` two roundings on every compiler and CPU (no fused
    multiply-add), so results do not depend on the build. ``defines``: extra ``-D`` macros
    (``FIREPE_NO_SIMD`` builds the scalar loops only).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for flags in (["-fopenmp"], []):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *_CFLAGS, *flags, *(f"-D{d}" for d in defines), str(source), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0:
            os.replace(tmp, target)
            return True
        os.unlink(tmp)
    return False


def build(defines: tuple[str, ...] = ()):
    """Compile (or find in the cache) and load the kernel; ``None`` without a working compiler.

    ``defines`` are extra preprocessor macros, part of the cache key (the tests build the scalar
    variant with ``("FIREPE_NO_SIMD",)``).
    """
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler or not _SOURCE.exists():
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_CFLAGS, *defines]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"fire_table_{key}.so"
    try:
        if target.exists() or _compile(compiler, _SOURCE, target, defines):
            lib = ctypes.CDLL(str(target))
            _declare(lib)
            return lib
    except OSError as err:
        warnings.warn(f"firepe: could not load the fused FIRE kernel ({err}); using PyTorch ops.", stacklevel=3)
    return None


def _load():
    if _LIB:
        return _LIB[0]
    _LIB.append(build() if os.environ.get("FIREPE_KERNEL", "1") != "0" else None)
    return _LIB[0]


def _declare(lib) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.fire_table_forward.argtypes = [p, i64, i64, p, p, p, i64, p, i64, p, i64, i64, p, i32]
    lib.fire_table_forward.restype = None
    lib.fire_table_backward.argtypes = [p, p, i64, i64, p, i64, p, p, i64, p, i64, p, i64, i64, p, p, p, i32]
    lib.fire_table_backward.restype = None


def available() -> bool:
    """True when the compiled kernel is loaded (compiling it now if needed)."""
    return _load() is not None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _TableLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid):
        lib = _load()
        table, psi_d, inv_norm = table.contiguous(), psi_d.contiguous(), inv_norm.contiguous()
        q_pos, k_pos = q_pos.to(torch.int64).contiguous(), k_pos.to(torch.int64).contiguous()
        long_row = long_row.to(torch.uint8).contiguous()
        heads, width = table.shape
        out = torch.empty(heads, len(q_pos), len(k_pos), dtype=table.dtype)
        lib.fire_table_forward(_ptr(table), heads, width, _ptr(psi_d), _ptr(inv_norm), _ptr(q_pos), len(q_pos),
                               _ptr(k_pos), len(k_pos), _ptr(long_row), base, grid, _ptr(out),
                               torch.get_num_threads())
        ctx.save_for_backward(table, psi_d, inv_norm, q_pos, k_pos, long_row)
        ctx.base, ctx.grid = base, grid
        return out

    @staticmethod
    def backward(ctx, grad):
        lib = _load()
        table, psi_d, inv_norm, q_pos, k_pos, long_row = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        heads, width = table.shape
        g_table, g_psi, g_inv = torch.zeros_like(table), torch.zeros_like(psi_d), torch.zeros_like(inv_norm)
        lib.fire_table_backward(_ptr(grad), _ptr(table), heads, width, _ptr(psi_d), len(psi_d), _ptr(inv_norm),
                                _ptr(q_pos), len(q_pos), _ptr(k_pos), len(k_pos), _ptr(long_row), ctx.base,
                                ctx.grid, _ptr(g_table), _ptr(g_psi), _ptr(g_inv), torch.get_num_threads())
        return g_table, g_psi, g_inv, None, None, None, None, None


def table_lookup(table: torch.Tensor, psi_d: torch.Tensor, inv_norm: torch.Tensor, q_pos: torch.Tensor,
                 k_pos: torch.Tensor, long_row: torch.Tensor, base: int, grid: int) -> torch.Tensor:
    """Fused FIRE table lookup, ``[H, Q, K]`` (0 where ``k_pos > q_pos``).

    Args:
        table: ``[H, M]`` float32, columns ``0..base-1`` indexed by distance (rows ``i <= L``),
            columns ``base..base+grid-1`` the interpolation table of ``f`` on [0, 1].
        psi_d: ``[D]`` ``psi(d)`` for distances ``d = 0..D-1`` (``D > max(q_pos) - min(k_pos)``).
        inv_norm: ``[Q]`` ``1 / (psi(max(L, i)) + eps)``.
        q_pos, k_pos: ``[Q]``, ``[K]`` integer positions. long_row: ``[Q]`` bool, rows that interpolate.
    Gradients flow to ``table``, ``psi_d`` and ``inv_norm``.
    """
    if not available():
        raise RuntimeError("the fused FIRE kernel is not available (no C compiler or FIREPE_KERNEL=0).")
    return _TableLookup.apply(table, psi_d, inv_norm, q_pos, k_pos, long_row, int(base), int(grid))
