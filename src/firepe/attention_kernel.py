"""Fused CPU attention with an additive per-head bias (``csrc/bias_attention.c``): the ``blocked``
backend's implementation for float32 CPU tensors.

Forward (per batch row and head): ``P = softmax(q k^T / sqrt(D) + bias)`` over each query's visible keys,
``out = P v``. Backward: ``dS = P * (dO v^T - rowsum(dO * out))``, ``dq = dS k / sqrt(D)``,
``dk = dS^T q / sqrt(D)``, ``dv = P^T dO``, and the bias gradient ``sum_batch dS`` -- all in one pass per
(batch row, head) whose scores stay in the core's cache, instead of a dozen PyTorch ops over the whole
``[B, H, Q, K]`` score tensor. The visible keys of query ``i`` are the prefix ``k_pos <= q_pos[i]`` (keys
sorted ascending, as everywhere in :mod:`firepe.attention`), so the masked half of the causal square is
never computed.

Compiled on first use by :mod:`firepe.cbuild` (the same cache and the
same safety checks); with GCC on x86-64 it holds AVX-512, AVX2 and baseline variants of the same code,
chosen for the CPU at load time (``FIREPE_SIMD=3`` or ``0`` caps the choice). The variants and thread
counts give bit-identical results (fixed summation order, no fused multiply-adds); against the PyTorch
path the difference is float rounding (~1e-6 relative, tested). ``FIREPE_KERNEL=0`` disables it (and
FIRE's kernel): the ``blocked`` backend then runs its PyTorch implementation.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import torch

from .cbuild import enabled, load_library

__all__ = ["available", "simd_level", "simd_cap", "supports", "fused_bias_attention", "visible_keys"]

_LIB: list = []  # [ctypes.CDLL or None, simd level] once loading was attempted


def _declare(lib) -> None:
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.bias_attention_forward.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, f32, p, p, i32, i32]
    lib.bias_attention_forward.restype = ctypes.c_int
    lib.bias_attention_backward.argtypes = [p, p, p, p, p, p, p, i64, i64, i64, i64, i64, f32, p, p, p, p, i32]
    lib.bias_attention_backward.restype = ctypes.c_int
    lib.bias_attention_select.argtypes = [i32]
    lib.bias_attention_select.restype = ctypes.c_int


def _load():
    if not _LIB:
        lib = None
        if enabled():
            lib = load_library("bias_attention.c", _declare, what="the fused attention kernel")
        level = lib.bias_attention_select(simd_cap()) if lib is not None else None
        _LIB.extend([lib, level])
    return _LIB[0]


def simd_cap() -> int:
    """``FIREPE_SIMD`` as a cap in 0..4 (4: no cap); a value that is not a non-negative integer warns and
    is ignored, and a larger one is 4 (not wrapped around a C int)."""
    cap = os.environ.get("FIREPE_SIMD", "4").strip()
    if not cap.isdecimal():
        warnings.warn(f"firepe: FIREPE_SIMD must be an integer 0-4, got {cap!r}; ignoring it.", stacklevel=4)
        return 4
    return min(int(cap), 4)


def available() -> bool:
    """True when the compiled kernel is loaded (compiling it now if needed)."""
    return _load() is not None


def simd_level() -> int | None:
    """The instruction-set variant in use: 4 (x86-64-v4), 3 (x86-64-v3), 0 (baseline); None without the kernel."""
    _load()
    return _LIB[1]


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
             k_pos: torch.Tensor | None = None) -> bool:
    """Whether :func:`fused_bias_attention` takes these inputs: float32 CPU tensors, ``bias`` ``[H, Q, K]``
    shared by the batch, keys sorted by position (when ``k_pos`` is given), and the kernel available."""
    tensors = (q, k, v, bias)
    if k_pos is not None and len(k_pos) > 1 and not bool((k_pos[1:] >= k_pos[:-1]).all()):
        return False
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and bias.dim() == 3
            and q.dim() == 4 and tuple(bias.shape) == (q.shape[1], q.shape[2], k.shape[2])
            and k.shape == v.shape and q.shape[-1] == k.shape[-1] and available())


def visible_keys(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``[Q]`` int64: how many keys each query sees (``k_pos <= q_pos``, keys sorted ascending)."""
    return torch.searchsorted(k_pos.contiguous(), q_pos.contiguous(), right=True).to(torch.int64)


def _check(status: int, what: str) -> None:
    if status:
        raise MemoryError(f"the fused attention kernel could not allocate its per-thread buffers ({what}).")


class _FusedBiasAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, nvis):
        lib = _load()
        q, k, v, bias = q.contiguous(), k.contiguous(), v.contiguous(), bias.contiguous()
        B, H, Q, D = q.shape
        K = k.shape[2]
        keep = any(ctx.needs_input_grad[:4])
        out = q.new_empty(B, H, Q, D)
        probs = q.new_empty(B, H, Q, K) if keep else q.new_empty(0)
        _check(lib.bias_attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), bias.data_ptr(), nvis.data_ptr(),
                                          B, H, Q, K, D, D ** -0.5, out.data_ptr(), probs.data_ptr(), int(keep),
                                          torch.get_num_threads()), "forward")
        if keep:
            ctx.save_for_backward(q, k, v, out, probs, nvis)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        lib = _load()
        q, k, v, out, probs, nvis = ctx.saved_tensors
        grad_out = grad_out.to(torch.float32).contiguous()
        B, H, Q, D = q.shape
        K = k.shape[2]
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbias = q.new_empty(H, Q, K) if ctx.needs_input_grad[3] else None
        _check(lib.bias_attention_backward(grad_out.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                           out.data_ptr(), probs.data_ptr(), nvis.data_ptr(), B, H, Q, K, D,
                                           D ** -0.5, dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                           dbias.data_ptr() if dbias is not None else None,
                                           torch.get_num_threads()), "backward")
        return dq, dk, dv, dbias, None


def fused_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                         q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Causal attention ``[B, H, Q, D]`` of ``q`` over ``k, v`` (``[B, H, K, D]``) with ``bias`` ``[H, Q, K]``
    added to the scaled logits; query ``i`` sees the keys with ``k_pos <= q_pos[i]`` (``k_pos`` sorted
    ascending; what the bias holds elsewhere is never read). A query that sees no key gets zeros.
    Gradients flow to ``q``, ``k``, ``v`` and ``bias``. Inputs must pass :func:`supports`."""
    if not supports(q, k, v, bias):
        raise ValueError("fused_bias_attention needs float32 CPU tensors q [B, H, Q, D], k and v [B, H, K, D], "
                         "bias [H, Q, K], and the compiled kernel.")
    if len(q_pos) != q.shape[2] or len(k_pos) != k.shape[2]:
        raise ValueError(f"q_pos ({len(q_pos)}) and k_pos ({len(k_pos)}) must have one entry per query and key.")
    if len(k_pos) > 1 and not bool((k_pos[1:] >= k_pos[:-1]).all()):
        raise ValueError("fused_bias_attention needs keys sorted by position (k_pos ascending).")
    return _FusedBiasAttention.apply(q, k, v, bias, visible_keys(q_pos, k_pos))
