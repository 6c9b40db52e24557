"""Flash-style CPU attention whose position bias is computed inside the kernel from small inputs
(``csrc/flash_attention.c``): no ``[H, Q, K]`` bias, probabilities or bias gradient is ever stored.

The encoding describes its bias with a :class:`FlashBias` (``BiasEncoding.flash_bias``):

* a per-distance table ``T [H, M]`` -- ALiBi, Kerple, T5, Sandwich (``bias[h, i, j] = T[h, i - j]``);
* FIRE's table mode: the same distance columns ``0..base-1`` for rows ``i < L`` and, for the rows that
  interpolate (``long_row``), the grid ``Tg = T[:, base:base + grid]`` read at
  ``x = psi[i - j] * inv_norm[i]``: ``p = clamp(x, 0, 1) (grid - 1)``, ``k = min(floor p, grid - 2)``,
  ``bias = Tg[k] + (Tg[k + 1] - Tg[k]) (p - k)``;
* FoX's data bias ``cq[b, h, i] - ck[b, h, j]`` (:func:`flash_data_attention`).

Per (batch row, head) the kernel walks blocks of 64 queries x 64 keys with an online softmax, keeps the
log-sum-exp per query for the backward, and the backward recomputes each block's scores and accumulates
the gradients of ``q, k, v`` and of the small inputs (table columns, ``psi``, ``inv_norm``, ``cq``, ``ck``)
directly; autograd carries them on to the encoding's parameters (slopes, MLP, ``c``, ``L``). Memory is
linear in the sequence length.

Positions must be contiguous ranges (``q_pos = q0 + arange(Q)``, ``k_pos = k0 + arange(K)``; query ``i``
sees keys ``j`` with ``k_pos[j] <= q_pos[i]``: causal, and the KV-cache rule when ``Q < K``), float32 CPU
tensors, and an x86-64 CPU with FMA (x86-64-v3 or v4) or a CPU of another architecture; :func:`supports`
says whether a call qualifies, and the callers in :mod:`firepe.attention` use the materializing kernel
otherwise. Results do not depend on the thread count, and the AVX-512 and AVX2 variants agree bit for bit
(``FIREPE_SIMD=3`` selects AVX2; tested). ``FIREPE_FLASH=0`` switches this kernel off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import torch

from .attention_kernel import simd_cap
from .cbuild import enabled, load_library
from .positions.base import FlashBias

__all__ = ["FlashBias", "available", "variant", "use_variant", "switched_off", "supports", "flash_attention",
           "flash_data_attention", "contiguous_start", "PAD"]

PAD = 128  # zero floats after a reversed table (csrc/flash_attention.c)
BATCH_CHUNK = 8  # batch rows per work item of the backward (csrc/flash_attention.c)
_LIB: list = []  # [ctypes.CDLL or None, variant] once loading was attempted
_OFF: list = []  # non-empty inside switched_off()


def _declare(lib) -> None:
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.flash_attention_select.argtypes = [i32]
    lib.flash_attention_select.restype = ctypes.c_int
    lib.flash_attention_forward.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i64, f32, p, i64, i64, i64, p,
                                            i64, p, p, p, p, p, p, p, i32]
    lib.flash_attention_forward.restype = ctypes.c_int
    lib.flash_attention_backward.argtypes = [p, p, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, f32, p, i64, i64,
                                             i64, p, i64, p, p, p, p, p, p, p, p, p, p, p, p, p, p, i32]
    lib.flash_attention_backward.restype = ctypes.c_int


def _load():
    if not _LIB:
        lib = None
        if enabled() and os.environ.get("FIREPE_FLASH", "1").strip() != "0":
            lib = load_library("flash_attention.c", _declare, what="the flash attention kernel")
        level = lib.flash_attention_select(simd_cap()) if lib is not None else -1
        _LIB.extend([lib if level >= 0 else None, level])
    return _LIB[0]


def available() -> bool:
    """True when the kernel is loaded and this CPU runs one of its variants."""
    return _load() is not None


def variant() -> int | None:
    """4 (x86-64-v4, AVX-512), 3 (x86-64-v3, AVX2 + FMA), 1 (portable code, not x86-64); None: unavailable."""
    return _LIB[1] if _load() is not None else None


def use_variant(cap: int) -> int | None:
    """Select the variant again with ``cap`` as ``FIREPE_SIMD`` would (4: the best this CPU runs, 3: at most
    AVX2); returns what runs now (None: none). For tests and benchmarks comparing the variants, between calls
    (not while another thread runs the kernel)."""
    lib = _load()
    if lib is None:
        return None
    level = lib.flash_attention_select(int(cap))
    if level < 0:  # keep a working variant loaded
        lib.flash_attention_select(_LIB[1])
        return None
    _LIB[1] = level
    return level


def contiguous_start(pos: torch.Tensor) -> int | None:
    """``pos[0]`` when ``pos`` is ``pos[0] + arange(len(pos))`` (a contiguous range), else None."""
    if pos.dim() != 1 or not len(pos) or pos.dtype.is_floating_point:
        return None
    start = int(pos[0])
    if len(pos) > 1 and (int(pos[-1]) - start != len(pos) - 1
                         or not torch.equal(pos, torch.arange(start, start + len(pos), dtype=pos.dtype))):
        return None
    return start


@contextlib.contextmanager
def switched_off():
    """Inside the block :func:`supports` is False, so the callers take the materializing kernel (comparisons
    in benchmarks and tests)."""
    _OFF.append(True)
    try:
        yield
    finally:
        _OFF.pop()


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> bool:
    """Whether the flash kernel takes these inputs: float32 CPU ``q [B, H, Q, D]``, ``k, v [B, H, K, D]``,
    contiguous position ranges, and the kernel available."""
    tensors = (q, k, v)
    return (not _OFF and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 for t in tensors)
            and k.shape == v.shape and q.shape[:2] == k.shape[:2] and q.shape[-1] == k.shape[-1]
            and q.shape[2] > 0 and k.shape[2] > 0 and q.shape[3] > 0
            and len(q_pos) == q.shape[2] and len(k_pos) == k.shape[2]
            and contiguous_start(q_pos) is not None and contiguous_start(k_pos) is not None and available())


def _check_bias(bias: FlashBias, H: int, q0: int, Q: int, k0: int) -> None:
    """ValueError unless every read the kernel makes stays inside the bias tensors."""
    t = bias.table
    if t.dim() != 2 or t.shape[0] != H or not t.dtype.is_floating_point or t.device.type != "cpu":
        raise ValueError(f"the flash bias table must be a float [H={H}, M] CPU tensor, got {t.dtype} "
                         f"{tuple(t.shape)}.")
    M = t.shape[1]
    for name, x in (("long_row", bias.long_row), ("inv_norm", bias.inv_norm)):
        if x is not None and (x.dim() != 1 or len(x) != Q):
            raise ValueError(f"the flash bias {name} must be 1-D with one entry per query ({Q}), got "
                             f"{tuple(x.shape)}.")
    if bias.long_row is not None and bias.long_row.dtype != torch.bool:
        raise ValueError(f"the flash bias long_row must be bool, got {bias.long_row.dtype}.")
    if bias.psi is not None and bias.psi.dim() != 1:
        raise ValueError(f"the flash bias psi must be 1-D, got {tuple(bias.psi.shape)}.")
    if not 0 <= bias.base <= M or bias.grid < 0 or bias.base + bias.grid > M or (bias.grid and bias.grid < 2):
        raise ValueError(f"flash bias base {bias.base} and grid {bias.grid} do not fit a table of {M} columns.")
    long_row = bias.long_row
    if long_row is not None and bool(long_row.any()):
        if bias.grid < 2 or bias.psi is None or bias.inv_norm is None:
            raise ValueError("interpolating rows need grid >= 2, psi and inv_norm.")
        if q0 + Q - 1 - k0 >= len(bias.psi):
            raise ValueError(f"psi has {len(bias.psi)} entries but rows reach distance {q0 + Q - 1 - k0}.")
    if long_row is None or not bool(long_row.all()):  # rows that read the distance columns: the last of them
        last = q0 + Q - 1 if long_row is None else q0 + int(torch.nonzero(~long_row).max())
        if last - k0 >= bias.base:
            raise ValueError(f"rows reach distance {last - k0}, past the {bias.base} distance columns.")


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[B, H, T, D]`` as the kernel reads it: any batch, head and row strides, the last dimension contiguous
    (the model's transposed views of ``[B, T, H, D]`` are read in place, not copied)."""
    return t if t.stride(3) == 1 else t.contiguous()


def _empty_like_rows(t: torch.Tensor) -> torch.Tensor:
    """A new ``[B, H, T, D]`` tensor laid out as ``t``'s rows are: token-major (``[B, T, H, D]`` storage, whose
    transpose back is free) when ``t`` is, else contiguous."""
    B, H, T, D = t.shape
    if t.stride(1) < t.stride(2):
        return t.new_empty(B, T, H, D).transpose(1, 2)
    return t.new_empty(B, H, T, D)


def _strides(*ts: torch.Tensor) -> torch.Tensor:
    """int64 ``[len(ts) * 3]``: the batch, head and row strides of each (in floats)."""
    return torch.tensor([x for t in ts for x in t.stride()[:3]], dtype=torch.int64)


_KEPT = threading.local()


def _partials(n: int) -> torch.Tensor:
    """A float32 buffer of ``n`` floats for the per-(batch row, head) bias-gradient partials, kept per thread
    between calls (the kernel writes every entry before reading it): a fresh one would fault its pages in on
    every backward (measured: a third of FIRE's overhead over ALiBi at the compare shapes)."""
    buf = getattr(_KEPT, "part", None)
    if buf is None or buf.numel() < n:
        buf = _KEPT.part = torch.empty(n, dtype=torch.float32)
    return buf[:n]


def _check(status: int, what: str) -> None:
    if status:
        raise MemoryError(f"the flash attention kernel could not allocate its per-thread buffers ({what}).")


class _Flash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table, psi, inv_norm, cq, ck, meta):
        lib = _load()
        q0, k0, base, grid, long_row = meta
        q, k, v = _rows(q), _rows(k), _rows(v)
        B, H, Q, D = q.shape
        K = k.shape[2]
        table = table.contiguous() if table is not None else None
        M = table.shape[1] if table is not None else 0
        psi_rev = None
        if psi is not None:
            psi_rev = torch.cat([psi.detach().flip(0), psi.new_zeros(PAD)])
        inv_norm = inv_norm.contiguous() if inv_norm is not None else None
        long_u8 = long_row.to(torch.uint8).contiguous() if long_row is not None else None
        cq = cq.contiguous() if cq is not None else None
        ck = ck.contiguous() if ck is not None else None
        out = _empty_like_rows(q)
        lse = q.new_empty(B, H, Q)
        n_psi = len(psi) if psi is not None else 0
        args = (B, H, Q, K, D, q0, k0, D ** -0.5, _ptr(table), M, base, grid, _ptr(psi_rev), n_psi, _ptr(inv_norm),
                _ptr(long_u8), _ptr(cq), _ptr(ck))
        strides = _strides(q, k, v, out)
        _check(lib.flash_attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), *args, strides.data_ptr(),
                                           out.data_ptr(), lse.data_ptr(), torch.get_num_threads()), "forward")
        ctx.save_for_backward(q, k, v, out, lse, table, psi_rev, inv_norm, long_u8, cq, ck)
        ctx.args = args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph: the gradients below come from C and carry no graph
            raise RuntimeError("the flash attention kernel has no second derivative (backward with create_graph); "
                               "run that model with attention='dense'.")
        lib = _load()
        q, k, v, out, lse, table, psi_rev, inv_norm, long_u8, cq, ck = ctx.saved_tensors
        B, H, Q, K, D, q0, k0, scale, _, M, base, grid, _, n_psi, _, _, _, _ = ctx.args
        grad_out = _rows(grad_out.to(torch.float32))
        dq, dk, dv = _empty_like_rows(q), _empty_like_rows(k), _empty_like_rows(v)
        strides = _strides(q, k, v, out, grad_out, dq, dk, dv)
        need = ctx.needs_input_grad
        d_table = q.new_empty(H, M) if table is not None and need[3] else None
        d_psi = q.new_empty(n_psi) if psi_rev is not None and need[4] else None
        d_inv = q.new_empty(Q) if inv_norm is not None and need[5] else None
        dcq = torch.empty_like(cq) if cq is not None else None
        dck = torch.empty_like(ck) if ck is not None else None
        items = H * ((B + BATCH_CHUNK - 1) // BATCH_CHUNK)  # the backward's work items (csrc: BATCH_CHUNK)
        part = _partials(items * (M + n_psi + Q)) if table is not None else None
        _check(lib.flash_attention_backward(
            grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(),
            B, H, Q, K, D, q0, k0, scale, _ptr(table), M, base, grid, _ptr(psi_rev), n_psi, _ptr(inv_norm),
            _ptr(long_u8), _ptr(cq), _ptr(ck), strides.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
            _ptr(d_table),
            _ptr(d_psi), _ptr(d_inv), _ptr(dcq), _ptr(dck), _ptr(part), torch.get_num_threads()), "backward")
        return dq, dk, dv, d_table, d_psi, d_inv, dcq, dck, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: FlashBias | None,
                    q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Causal attention ``[B, H, Q, D]`` of ``q`` over ``k, v`` (``[B, H, K, D]``) with the position bias
    ``bias`` (None: none) added to the scaled logits; query ``i`` sees the keys with ``k_pos <= q_pos[i]``,
    a query that sees no key gets zeros. Inputs must pass :func:`supports`; a bias whose tables do not cover
    the distances raises ``ValueError``."""
    return _call(q, k, v, bias, None, None, q_pos, k_pos)


def flash_data_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cq: torch.Tensor, ck: torch.Tensor,
                         q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """:func:`flash_attention` with FoX's data bias ``cq[b, h, i] - ck[b, h, j]`` (``cq [B, H, Q]``,
    ``ck [B, H, K]``, float32); gradients flow to both."""
    B, H, Q, _ = q.shape
    for name, t, n in (("cq", cq, Q), ("ck", ck, k.shape[2])):
        if tuple(t.shape) != (B, H, n):
            raise ValueError(f"{name} must be [B, H, {n}] = {[B, H, n]}, got {list(t.shape)}.")
    return _call(q, k, v, None, cq.to(torch.float32), ck.to(torch.float32), q_pos, k_pos)


def _call(q, k, v, bias, cq, ck, q_pos, k_pos):
    if not supports(q, k, v, q_pos, k_pos):
        raise ValueError("flash_attention needs float32 CPU tensors q [B, H, Q, D], k and v [B, H, K, D], "
                         "contiguous position ranges, and the compiled kernel on a CPU with FMA.")
    q0, k0 = contiguous_start(q_pos), contiguous_start(k_pos)
    if bias is None:
        return _Flash.apply(q, k, v, None, None, None, cq, ck, (q0, k0, 0, 0, None))
    _check_bias(bias, q.shape[1], q0, q.shape[2], k0)
    long_row = bias.long_row if bias.long_row is not None and bool(bias.long_row.any()) else None
    psi = bias.psi.to(torch.float32) if long_row is not None else None
    inv = bias.inv_norm.to(torch.float32) if long_row is not None else None
    return _Flash.apply(q, k, v, bias.table.to(torch.float32), psi, inv, cq, ck,
                        (q0, k0, bias.base, bias.grid, long_row))
