"""FIRE's table mode (``bias_mode="table"``, the default): one lookup per (i, j) into a per-head table.

The table ``[H, M]`` is ``[distance table | interpolation table]``:

* columns ``0..D`` hold ``f(psi(d) / (psi(L) + eps))`` for distances ``d = 0..D`` -- the exact bias
  of rows ``i < L``, which depends on ``i - j`` only (Eq. 4 with ``max(L, i) = L``);
* the last ``G = table_size`` columns hold ``f`` on ``G`` uniform points of [0, 1]; rows
  ``i >= L`` (every row without a threshold) read it with linear interpolation at
  ``x = psi(i - j) / (psi(max(L, i)) + eps)``, ``out = T[k] + (T[k + 1] - T[k]) w`` with
  ``k = floor(x (G - 1))``, ``w = x (G - 1) - k``.

Gradients flow to the MLP (through both tables), to ``c`` (``psi``) and to ``L`` (the distance
table's normalizer, and ``psi(max(L, i))`` of interpolating rows). The row ``i = L`` interpolates
so that, as with ``torch.maximum`` in the reference, the subgradient of ``max(L, i)`` there is split
half-half between ``L`` and ``i``.

float32 on CPU runs the fused kernel of :mod:`.fire_kernel` when it is available (:func:`use_kernel`);
otherwise PyTorch gathers (forward) and scatter-adds (backward) in blocks of query rows
(:class:`_LerpLookup`). Tensors in, tensors out: :class:`~.fire.FIRE` computes ``psi``, the normalizers
and the tables and calls these functions; nothing here knows FIRE.
"""


from __future__ import annotations

import torch

from . import fire_kernel

__all__ = ["use_kernel", "kernel_bias", "lerp_bias", "lerp_score_mod", "slopes", "TableCache"]


def use_kernel(dtype: torch.dtype, device: torch.device) -> bool:
    """True when the fused CPU kernel computes the table bias (float32 on the CPU, kernel available)."""
    return dtype == torch.float32 and device.type == "cpu" and fire_kernel.available()


def kernel_bias(table: torch.Tensor, base: int, grid: int, psi_d: torch.Tensor, inv_norm: torch.Tensor,
                q_pos: torch.Tensor, k_pos: torch.Tensor, long_row: torch.Tensor) -> torch.Tensor:
    """``[H, Q, K]`` through the fused kernel (:func:`.fire_kernel.table_lookup`)."""
    return fire_kernel.table_lookup(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid)


def lerp_bias(table: torch.Tensor, base: int, grid: int, x: torch.Tensor, dist: torch.Tensor,
              long_rows: torch.Tensor | None, blocks) -> torch.Tensor:
    """``[H, Q, K]`` with PyTorch ops: rows in ``long_rows`` (``[Q, 1]`` bool; None: every row) interpolate the
    last ``grid`` columns at ``x`` ``[Q, K]`` (the normalized distance), the others read column ``dist``."""
    dtype = x.dtype
    pos = x.clamp(0, 1) * (grid - 1)
    i0 = pos.detach().floor().clamp(max=grid - 2).long()
    w = pos - i0.to(dtype)
    if long_rows is not None:
        idx = torch.where(long_rows, i0 + base, dist)
        w = torch.where(long_rows, w, torch.zeros((), dtype=dtype, device=w.device))
    else:
        idx = i0
    return _LerpLookup.apply(table, idx, w, blocks)


def lerp_score_mod(table: torch.Tensor, base: int, grid: int, psi_d: torch.Tensor, inv_norm: torch.Tensor,
                   q_pos: torch.Tensor, k_pos: torch.Tensor, long_row: torch.Tensor | None):
    """FlexAttention ``score_mod`` with the table-mode values: the same lookups as :func:`lerp_bias`.

    Built for FlexAttention's backward, which before torch 2.14 fails on a captured grad-requiring 0-D
    tensor and on one grad-requiring tensor read twice: everything that depends on ``c`` and ``L`` arrives
    as 1-D inputs read once each -- ``psi(d)`` per distance ``[D]``, ``1 / (psi(max(L, i)) + eps)`` per query
    ``[Q]`` -- and the linear interpolation reads two tables, the values ``T`` and the slopes
    ``T[k + 1] - T[k]`` (as the fused CPU kernel does). Positions are read from ``q_pos``/``k_pos``
    (tensors: no recompilation for a new offset)."""
    slope = slopes(table)

    def mod(score, b, h, q_idx, kv_idx):
        d = (q_pos[q_idx] - k_pos[kv_idx]).clamp(min=0)
        pos = (psi_d[d] * inv_norm[q_idx]).clamp(0, 1) * (grid - 1)
        i0 = pos.floor().clamp(max=grid - 2)
        w = pos - i0
        idx = i0.to(torch.int64)
        if long_row is not None:
            row = long_row[q_idx]
            idx = torch.where(row, idx + base, d)
            w = torch.where(row, w, torch.zeros_like(w))
        return score + table[h, idx] + slope[h, idx] * w

    return mod


class TableCache:
    """The interpolation table of an MLP without autograd (evaluation, KV-cache decoding), rebuilt only when a
    parameter or buffer changed: it keeps a copy of them (a few thousand numbers) and compares values, so
    in-place updates, ``p.data = ...`` and ``vector_to_parameters`` all count."""

    def __init__(self):
        self.entry = None

    def get(self, tensors: list[torch.Tensor], key: tuple, build) -> torch.Tensor:
        """``build()``'s table for these ``tensors`` and ``key``: cached, except under autograd."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
            return build()
        key = (key, tuple((id(t), t.shape, t.dtype, t.device) for t in tensors))
        entry = self.entry
        if entry is not None and entry[0] == key and all(torch.equal(a, b) for a, b in zip(entry[1], tensors)):
            return entry[2]
        table = build()
        self.entry = (key, [t.detach().clone() for t in tensors], table)
        return table


def slopes(table: torch.Tensor) -> torch.Tensor:
    """``T[:, k + 1] - T[:, k]`` per column of ``table`` ``[H, M]`` (0 in the last column)."""
    return torch.cat([table[:, 1:] - table[:, :-1], torch.zeros_like(table[:, :1])], dim=1)


class _LerpLookup(torch.autograd.Function):
    """``out[h, q, k] = T[h, idx] + (T[h, idx + 1] - T[h, idx]) * w[q, k]`` for a table ``T`` ``[H, M]``.

    Gathers forward, scatter-adds backward, no ``[Q, K, H]`` intermediate; row blocks skip the
    keys their queries cannot see (those entries are 0: they are masked by every caller).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, blocks) -> torch.Tensor:
        heads = table.shape[0]
        slope = slopes(table)
        out = torch.empty(heads, *idx.shape, dtype=table.dtype, device=table.device)
        for s, e, kk in blocks:
            flat = idx[s:e, :kk].reshape(1, -1).expand(heads, -1)
            part = torch.gather(table, 1, flat)
            part.addcmul_(torch.gather(slope, 1, flat), w[s:e, :kk].reshape(1, -1).to(table.dtype))
            out[:, s:e, :kk] = part.view(heads, e - s, kk)
            out[:, s:e, kk:] = 0
        ctx.save_for_backward(slope, idx, w)
        ctx.blocks = blocks
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        slope, idx, w = ctx.saved_tensors
        heads, rows = slope.shape
        need_table, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        at_idx = torch.zeros(heads, rows, dtype=grad.dtype, device=grad.device) if need_table else None
        at_next = torch.zeros_like(at_idx) if need_table else None
        grad_w = torch.zeros_like(w) if need_w else None
        for s, e, kk in ctx.blocks:
            flat = idx[s:e, :kk].reshape(1, -1).expand(heads, -1)
            g = grad[:, s:e, :kk].reshape(heads, -1)
            if need_table:
                # d out / d T[idx] = 1 - w and d out / d T[idx + 1] = w: scatter both at idx, shift later.
                at_idx.scatter_add_(1, flat, g)
                at_next.scatter_add_(1, flat, g * w[s:e, :kk].reshape(1, -1).to(g.dtype))
            if need_w:
                grad_w[s:e, :kk] = (torch.gather(slope, 1, flat) * g).sum(0).view(e - s, kk).to(w.dtype)
        grad_table = None
        if need_table:
            grad_table = at_idx - at_next
            grad_table[:, 1:] += at_next[:, :-1]
        return grad_table, None, grad_w, None
