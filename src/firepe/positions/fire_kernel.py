"""Optional fused CPU kernel for FIRE's table-mode bias (``fire_table.c``).

The table-mode bias (:class:`firepe.positions.FIRE`, ``bias_mode="table"``) is a gather with
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

Building, caching and the checks before loading are :mod:`firepe.cbuild`'s (every kernel shares them).
"""

from __future__ import annotations

import ctypes

import torch

from ..cbuild import enabled, load_library

__all__ = ["available", "build", "table_lookup", "check_lookup_args"]

_LIB: list = []  # [ctypes.CDLL or None] once loading was attempted


def build(defines: tuple[str, ...] = ()):
    """Compile (or find in the cache) and load the kernel; ``None`` (PyTorch path) without a working
    compiler, or with a warning when the cache is not safe to load from or holds a broken library
    (:mod:`firepe.cbuild`).

    ``defines`` are extra preprocessor macros, part of the cache key (the tests build the scalar
    variant with ``("FIREPE_NO_SIMD",)``).
    """
    return load_library("fire_table.c", _declare, defines, "the fused FIRE kernel")


def _load():
    if _LIB:
        return _LIB[0]
    _LIB.append(build() if enabled() else None)
    return _LIB[0]


def _declare(lib) -> None:
    """Argument types of the two entry points (AttributeError when the library lacks them)."""
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
        table, psi_d, inv_norm, q_pos, k_pos, long_row = ctx.saved_tensors
        g_table, g_psi, g_inv = torch.zeros_like(table), torch.zeros_like(psi_d), torch.zeros_like(inv_norm)
        grad = grad.to(table.dtype).contiguous()  # kept alive through the call (the kernel reads its pointer)
        _load().fire_table_backward(_ptr(grad), _ptr(table), table.shape[0],
                                    table.shape[1], _ptr(psi_d), len(psi_d), _ptr(inv_norm), _ptr(q_pos), len(q_pos),
                                    _ptr(k_pos), len(k_pos), _ptr(long_row), ctx.base, ctx.grid, _ptr(g_table),
                                    _ptr(g_psi), _ptr(g_inv), torch.get_num_threads())
        return g_table, g_psi, g_inv, None, None, None, None, None


def _check_float(name: str, t, dim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != dim or t.dtype != torch.float32 or t.device.type != "cpu":
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a {dim}-D float32 CPU tensor, got {got}.")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return value


def check_lookup_args(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid) -> None:
    """Raise ``ValueError`` unless every read :func:`table_lookup` makes stays inside its tensors
    (shapes, dtypes, device, and the distances the positions reach); see its docstring."""
    _check_float("table", table, 2)
    _check_float("psi_d", psi_d, 1)
    _check_float("inv_norm", inv_norm, 1)
    for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
        if (not isinstance(pos, torch.Tensor) or pos.dim() != 1 or pos.device.type != "cpu"
                or pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool):
            got = f"{pos.dtype} {tuple(pos.shape)} on {pos.device}" if isinstance(pos, torch.Tensor) else type(pos)
            raise ValueError(f"{name} must be a 1-D integer CPU tensor, got {got}.")
        if pos.numel() and int(pos.min()) < 0:
            raise ValueError(f"{name} must be non-negative, got minimum {int(pos.min())}.")
    if (not isinstance(long_row, torch.Tensor) or long_row.dtype != torch.bool or long_row.dim() != 1
            or long_row.device.type != "cpu"):
        raise ValueError(f"long_row must be a 1-D bool CPU tensor, got {getattr(long_row, 'dtype', long_row)!r}.")
    heads, width = table.shape
    if heads < 1 or width >= 2**31:
        raise ValueError(f"table must have at least one head and fewer than 2^31 columns, got {tuple(table.shape)}.")
    if len(inv_norm) != len(q_pos) or len(long_row) != len(q_pos):
        raise ValueError(f"inv_norm ({len(inv_norm)}) and long_row ({len(long_row)}) need one entry per query "
                         f"({len(q_pos)}).")
    grid, base = _check_int("grid", grid, 2), _check_int("base", base, 0)
    if base + grid > width:
        raise ValueError(f"base + grid = {base + grid} exceeds the table's {width} columns.")
    if not len(q_pos) or not len(k_pos):
        return
    k_min = int(k_pos.min())
    if bool(long_row.any()):
        reach = int(q_pos[long_row].max()) - k_min
        if reach >= len(psi_d):
            raise ValueError(f"psi_d has {len(psi_d)} entries but interpolating rows reach distance {reach}.")
    if not bool(long_row.all()):
        reach = int(q_pos[~long_row].max()) - k_min
        if reach >= base:
            raise ValueError(f"rows that read the distance table reach distance {reach}, past its {base} "
                             f"columns (base).")


def table_lookup(table: torch.Tensor, psi_d: torch.Tensor, inv_norm: torch.Tensor, q_pos: torch.Tensor,
                 k_pos: torch.Tensor, long_row: torch.Tensor, base: int, grid: int) -> torch.Tensor:
    """Fused FIRE table lookup, ``[H, Q, K]`` (0 where ``k_pos > q_pos``).

    Args:
        table: ``[H, M]`` float32, columns ``0..base-1`` indexed by distance (rows that do not
            interpolate), columns ``base..base+grid-1`` the interpolation table of ``f`` on [0, 1].
        psi_d: ``[D]`` float32 ``psi(d)`` for distances ``d = 0..D-1`` (``D`` past every distance an
            interpolating row reaches, ``max(q_pos[long_row]) - min(k_pos)``).
        inv_norm: ``[Q]`` float32 ``1 / (psi(max(L, i)) + eps)``.
        q_pos, k_pos: ``[Q]``, ``[K]`` non-negative integer positions. long_row: ``[Q]`` bool, rows
            that interpolate; the others read column ``q_pos - k_pos`` (which must be ``< base``).
        base, grid: ints, ``grid >= 2``, ``base + grid <= M``.
    Every tensor on the CPU. Gradients flow to ``table``, ``psi_d`` and ``inv_norm``. Arguments that
    would make the kernel read out of bounds raise ``ValueError``.
    """
    check_lookup_args(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid)
    if not available():
        raise RuntimeError("the fused FIRE kernel is not available (no C compiler or FIREPE_KERNEL=0).")
    return _TableLookup.apply(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid)
