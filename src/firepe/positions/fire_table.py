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

float32 on CPU runs the fused kernel of :mod:`.fire_kernel` when it is available; otherwise PyTorch
gathers (forward) and scatter-adds (backward) in blocks of query rows (:class:`_LerpLookup`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import fire_kernel
from .base import causal_row_blocks, position_span
from .fire_mlp import grid_values

if TYPE_CHECKING:
    from .fire import FIRE

__all__ = ["interpolation_table", "lookup_table", "table_bias", "table_bias_rows", "table_score_mod"]


def _snapshot_key(tensors: list[torch.Tensor]) -> tuple:
    return tuple((id(t), t.shape, t.dtype, t.device) for t in tensors)


def interpolation_table(fire: FIRE) -> torch.Tensor:
    """``[H, table_size]``: ``f`` on ``table_size`` uniform points of [0, 1].

    Without autograd (evaluation, KV-cache decoding) the table is cached and rebuilt only when a
    parameter or buffer of the MLP changed: the cache keeps a copy of them (a few thousand numbers)
    and compares values, so in-place updates, ``p.data = ...`` and ``vector_to_parameters`` all count.
    """
    device, dtype = fire.init_L.device, fire.init_L.dtype
    tensors = [*fire.mlp.parameters(), *fire.mlp.buffers()]
    if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
        return grid_values(fire, torch.linspace(0, 1, fire.table_size, device=device, dtype=dtype))
    key = (fire.table_size, device, dtype, _snapshot_key(tensors))
    cached = fire.__dict__.get("_table_cache")
    if cached is not None and cached[0] == key and all(torch.equal(a, b) for a, b in zip(cached[1], tensors)):
        return cached[2]
    table = grid_values(fire, torch.linspace(0, 1, fire.table_size, device=device, dtype=dtype))
    fire.__dict__["_table_cache"] = (key, [t.detach().clone() for t in tensors], table)
    return table


def lookup_table(fire: FIRE, max_distance: int) -> tuple[torch.Tensor, int]:
    """``([distance table | interpolation table], base)``: the ``[H, M]`` table one lookup per (i, j)
    reads, and the column where the interpolation table starts (no distance table, base 0, without
    a threshold)."""
    if not fire.threshold:
        return interpolation_table(fire), 0
    return torch.cat([fire.distance_table(max_distance), interpolation_table(fire)], dim=1), max_distance + 1


def table_bias(fire: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``[H, Q, K]`` table-mode bias for int64 positions (0 or any value where ``k_pos > q_pos``)."""
    dtype = fire.init_L.dtype
    g = fire.table_size
    if dtype == torch.float32 and fire.init_L.device.type == "cpu" and fire_kernel.available():
        max_d = position_span(q_pos, k_pos)
        psi_d = fire.psi(torch.arange(max_d + 1, dtype=dtype))
        inv_norm = 1 / fire.normalizer(q_pos)
        table, base = lookup_table(fire, max_d)  # after psi_d, inv_norm: keeps autograd's summation order
        return fire_kernel.table_lookup(table, psi_d, inv_norm, q_pos, k_pos, fire.interpolating_rows(q_pos),
                                        base, g)
    # coordinates in float32 at least: in bf16, g - 2 = 16382 rounds to 16384 (an index past the table)
    dtype = torch.promote_types(dtype, torch.float32)
    dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)
    x = fire.psi(dist.to(dtype)) / fire.normalizer(q_pos)[:, None]
    pos = x.clamp(0, 1) * (g - 1)
    i0 = pos.detach().floor().clamp(max=g - 2).long()
    w = pos - i0.to(dtype)
    table, base = lookup_table(fire, int(dist.max()) if dist.numel() else 0)
    if fire.threshold:
        long_rows = fire.interpolating_rows(q_pos)[:, None]
        idx = torch.where(long_rows, i0 + base, dist)
        w = torch.where(long_rows, w, torch.zeros((), dtype=dtype, device=w.device))
    else:
        idx = i0
    return _LerpLookup.apply(table, idx, w, causal_row_blocks(q_pos, k_pos, 256))


def table_bias_rows(fire: FIRE, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
    """``[B, H, Q, K]``: :func:`table_bias` of every row's positions, the lookup table (an MLP pass over
    ``table_size`` points) built once for all rows on the fused-kernel path, not once per row."""
    dtype = fire.init_L.dtype
    if not (dtype == torch.float32 and fire.init_L.device.type == "cpu" and fire_kernel.available()):
        return torch.stack([table_bias(fire, q, k) for q, k in zip(q_rows, k_rows)])
    max_d = max((position_span(q, k) for q, k in zip(q_rows, k_rows)), default=0)
    psi_d = fire.psi(torch.arange(max_d + 1, dtype=dtype))
    table, base = lookup_table(fire, max_d)
    g = fire.table_size
    return torch.stack([fire_kernel.table_lookup(table, psi_d, 1 / fire.normalizer(q), q, k, fire.interpolating_rows(q),
                                                 base, g) for q, k in zip(q_rows, k_rows)])


def table_score_mod(fire: FIRE, q_pos: torch.Tensor, k_pos: torch.Tensor):
    """FlexAttention ``score_mod`` with the table-mode values (the same lookups as :func:`table_bias`).

    Built for FlexAttention's backward, which before torch 2.14 fails on a captured grad-requiring 0-D
    tensor and on one grad-requiring tensor read twice: everything that depends on ``c`` and ``L`` is
    precomputed as 1-D inputs read once each -- ``psi(d)`` per distance ``[D]``, ``1 / (psi(max(L, i)) +
    eps)`` per query ``[Q]`` -- and the linear interpolation reads two tables, the values ``T`` and the
    slopes ``T[k + 1] - T[k]`` (as the fused CPU kernel does). Positions are read from ``q_pos``/``k_pos``
    (tensors: no recompilation for a new offset)."""
    span = position_span(q_pos, k_pos)
    dtype = torch.promote_types(fire.init_L.dtype, torch.float32)
    psi_d = fire.psi(torch.arange(span + 1, device=q_pos.device, dtype=dtype))
    inv_norm = 1 / fire.normalizer(q_pos)
    table, base = lookup_table(fire, span)
    slope = _slopes(table)
    long_row = fire.interpolating_rows(q_pos).detach() if fire.threshold else None
    g = fire.table_size

    def mod(score, b, h, q_idx, kv_idx):
        d = (q_pos[q_idx] - k_pos[kv_idx]).clamp(min=0)
        pos = (psi_d[d] * inv_norm[q_idx]).clamp(0, 1) * (g - 1)
        i0 = pos.floor().clamp(max=g - 2)
        w = pos - i0
        idx = i0.to(torch.int64)
        if long_row is not None:
            row = long_row[q_idx]
            idx = torch.where(row, idx + base, d)
            w = torch.where(row, w, torch.zeros_like(w))
        return score + table[h, idx] + slope[h, idx] * w

    return mod


def _slopes(table: torch.Tensor) -> torch.Tensor:
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
        slope = _slopes(table)
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
