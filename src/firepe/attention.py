"""Attention with a position encoding, and the KV cache.

Backends (``GPTConfig.attention``), all causal, all taking explicit positions:

* ``dense`` (reference) -- :func:`attend`: SDPA; NoPE/rotary use ``is_causal`` when queries and keys
  are the same positions; bias encodings fold the causal mask into the bias (``-inf`` where
  ``k_pos > q_pos``) and pass a materialized ``[1, H, Q, K]`` float mask.
* ``blocked`` -- :func:`attend_blocked`: the same materialized bias as ``dense``, attention in
  blocks of query rows that skip the keys a block cannot see (about half of the causal square),
  with a hand-written backward that also returns the bias gradient. On CPU this is about twice as
  fast as SDPA with a trainable float mask (which falls back to its unfused math path).
* ``auto`` (the default) -- ``chunked`` for bias encodings when the ``[H, Q, K]`` bias would exceed
  ``AUTO_CHUNK_ELEMENTS`` (256 MiB in fp32: 12 heads past 2,364 tokens), else ``blocked`` for bias
  encodings on CPU, ``dense`` otherwise.
* ``chunked`` -- :func:`attend_chunked`: query blocks of ``block`` rows; each block computes only
  its bias rows against the keys it can see, so no ``n x n`` bias ever exists (evaluation at 32k+).
  Under autograd each block is checkpointed (recomputed in backward), so training memory is
  ``O(block * n * H)`` as well. Keys must be sorted ascending (as the model produces them).
* ``flex`` -- :func:`attend_flex`: ``torch.nn.attention.flex_attention`` compiled, with a causal
  block mask and the encoding's ``score_mod`` (FIRE reads its lookup tables; ALiBi its slopes;
  other biases a materialized table). PyTorch has no FlexAttention backward on CPU: a CPU call
  that needs gradients falls back to ``chunked`` (warned once).

Shapes: ``q`` ``[B, H, Q, D]``, ``k, v`` ``[B, H, K, D]``, ``q_pos`` ``[Q]``, ``k_pos`` ``[K]``.

What an encoding contributes to attention (an additive bias, a rotation of ``q, k``, a bias from the
input, or nothing) is decided by its kind object (:mod:`firepe.kinds`), which calls the functions here;
the model passes the per-forward inputs of every layer as one :class:`AttentionInputs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import attention_flash, attention_kernel
from .config import BACKENDS
from .positions.base import causal_row_blocks

__all__ = ["BACKENDS", "resolve_backend", "causal_mask", "causal_row_blocks", "bias_mask", "attend", "attend_blocked",
           "attend_chunked", "attend_flex", "attend_backend", "attend_rows", "attend_data", "data_bias",
           "data_score_mod", "masked_logits", "attend_context", "rows_allowed",
           "AttentionInputs", "RowPositions", "KVCache"]

AUTO_CHUNK_ELEMENTS = 2**26  # a materialized bias above this many entries (256 MiB fp32) -> chunked


def resolve_backend(backend: str, device: torch.device, has_bias: bool, bias_elements: int = 0) -> str:
    """``auto`` -> ``chunked`` for a bias encoding whose ``[H, Q, K]`` bias would exceed
    :data:`AUTO_CHUNK_ELEMENTS` entries (long evaluation), else ``blocked`` for a bias encoding on
    CPU, else ``dense``. Other names are returned unchanged."""
    if backend != "auto":
        return backend
    if has_bias and bias_elements > AUTO_CHUNK_ELEMENTS:
        return "chunked"
    return "blocked" if has_bias and device.type == "cpu" else "dense"


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Boolean ``[Q, K]``, true where key ``k`` may be attended by query ``q`` (``k_pos <= q_pos``)."""
    return k_pos[None, :] <= q_pos[:, None]


def bias_mask(bias: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[1, H, Q, K]`` float mask: ``bias`` where causal, ``-inf`` elsewhere."""
    allowed = causal_mask(q_pos, k_pos)
    return torch.where(allowed, bias.to(dtype), torch.tensor(float("-inf"), dtype=dtype,
                                                              device=bias.device)).unsqueeze(0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           q_pos: torch.Tensor, k_pos: torch.Tensor, same_positions: bool) -> torch.Tensor:
    """Causal attention of ``q`` over ``k, v`` with an optional additive ``bias`` ``[H, Q, K]``.

    ``same_positions`` tells that ``q_pos == k_pos`` (a full causal window), where SDPA's
    ``is_causal`` flag replaces an explicit mask.
    """
    if bias is None:
        if same_positions:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = causal_mask(q_pos, k_pos)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias_mask(bias, q_pos, k_pos, q.dtype))


#: query rows per block of the ``blocked`` backend
BLOCKED_ROWS = 256


class _BlockedAttention(torch.autograd.Function):
    """Causal softmax attention with an additive bias, in blocks of query rows.

    Forward per block ``[s, e)`` with visible keys ``[0, kk)``:
    ``P = softmax(q k^T / sqrt(D) + bias, masked)``, ``out = P v``; ``P`` is kept for backward.
    Backward: ``dV += P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))``, ``dq = dS k / sqrt(D)``,
    ``dk += dS^T q / sqrt(D)``, ``d bias = sum_batch dS``. Keys past ``kk`` are never touched.
    A data bias (``bias`` None, per-token ``cq`` ``[B, H, Q]`` and ``ck`` ``[B, H, K]``) adds
    ``cq[..., :, None] - ck[..., None, :]`` per block instead: ``d cq = rowsum dS``, ``d ck = -colsum dS``.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, cq, ck, q_pos, k_pos, block):
        scale = q.shape[-1] ** -0.5
        blocks = causal_row_blocks(q_pos, k_pos, block)
        out = v.new_empty(q.shape[:-1] + (v.shape[-1],))
        keep = any(ctx.needs_input_grad[:6])
        probs = []
        for s, e, kk in blocks:
            scores = torch.matmul(q[:, :, s:e], k[:, :, :kk].transpose(-1, -2)).mul_(scale)
            if bias is not None:
                scores.add_(bias[:, s:e, :kk].to(scores.dtype))
            else:  # a data bias: c_q - c_k of this block, [B, H, e - s, kk]
                scores.add_((cq[:, :, s:e, None] - ck[:, :, None, :kk]).to(scores.dtype))
            hidden = ~causal_mask(q_pos[s:e], k_pos[:kk])
            if bool(hidden.any()):
                scores.masked_fill_(hidden, float("-inf"))
            # under CUDA autocast softmax returns fp32 and out= bypasses autocast: keep v's dtype
            p = torch.softmax(scores, dim=-1).to(v.dtype)
            torch.matmul(p, v[:, :, :kk], out=out[:, :, s:e])
            if keep:
                probs.append(p)
        if keep:
            ctx.save_for_backward(q, k, v, out, *probs)
            ctx.blocks = blocks
            ctx.bias_meta = (bias.shape, bias.dtype) if bias is not None else None
            ctx.c_meta = (cq.shape, ck.shape, cq.dtype) if bias is None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, *probs = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1, keepdim=True)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dbias = dcq = dck = None
        if ctx.bias_meta is not None and ctx.needs_input_grad[3]:
            dbias = q.new_zeros(ctx.bias_meta[0], dtype=ctx.bias_meta[1])
        if ctx.c_meta is not None and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5]):
            dcq, dck = q.new_zeros(ctx.c_meta[0], dtype=ctx.c_meta[2]), q.new_zeros(ctx.c_meta[1], dtype=ctx.c_meta[2])
        for (s, e, kk), p in zip(ctx.blocks, probs):
            go = grad_out[:, :, s:e]
            dv[:, :, :kk] += torch.matmul(p.transpose(-1, -2), go)
            ds = torch.matmul(go, v[:, :, :kk].transpose(-1, -2)).sub_(delta[:, :, s:e]).mul_(p)
            if dbias is not None:
                dbias[:, s:e, :kk] = ds.sum(0).to(dbias.dtype)
            if dcq is not None:  # d(c_q - c_k): rows sum into c_q, columns (negated) into c_k
                dcq[:, :, s:e] = ds.sum(-1).to(dcq.dtype)
                dck[:, :, :kk] -= ds.sum(-2).to(dck.dtype)
            torch.matmul(ds, k[:, :, :kk], out=dq[:, :, s:e])
            dk[:, :, :kk] += torch.matmul(ds.transpose(-1, -2), q[:, :, s:e])
        return dq.mul_(scale), dk.mul_(scale), dv, dbias, dcq, dck, None, None, None


def attend_blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                   q_pos: torch.Tensor, k_pos: torch.Tensor, same_positions: bool,
                   block: int = BLOCKED_ROWS) -> torch.Tensor:
    """Causal attention with an additive ``bias`` ``[H, Q, K]`` in blocks of ``block`` query rows
    (entries with ``k_pos > q_pos`` are masked whatever the bias holds there). Without a bias this
    is :func:`attend` (SDPA's fused causal kernel). float32 CPU tensors take the fused C kernel of
    :mod:`firepe.attention_kernel` when the keys are sorted (same function, one pass per batch row and
    head; ``block`` unused), everything else the PyTorch implementation below."""
    if block < 1:
        raise ValueError(f"attention block must be >= 1, got {block}.")
    if bias is None:
        return attend(q, k, v, None, q_pos, k_pos, same_positions)
    if attention_kernel.supports(q, k, v, bias, k_pos):
        return attention_kernel.fused_bias_attention(q, k, v, bias, q_pos, k_pos)
    return _BlockedAttention.apply(q, k, v, bias, None, None, q_pos, k_pos, block)


BiasFn = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def _block(q, k, v, bias_fn: BiasFn | None, q_pos, k_pos):
    bias = bias_fn(q_pos, k_pos) if bias_fn is not None else None
    return attend(q, k, v, bias, q_pos, k_pos, same_positions=False)


def attend_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_fn: BiasFn | None,
                   q_pos: torch.Tensor, k_pos: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Causal attention in query blocks; ``bias_fn(q_pos_block, k_pos_visible)`` gives ``[H, b, k]``.

    Block ``[s, e)`` attends to the keys with ``k_pos <= q_pos[e - 1]`` (a prefix, keys sorted).
    """
    if block < 1:
        raise ValueError(f"attention block must be >= 1, got {block}.")
    outs = []
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    for s, e, kk in causal_row_blocks(q_pos, k_pos, block):
        args = (q[:, :, s:e], k[:, :, :kk], v[:, :, :kk], bias_fn, q_pos[s:e], k_pos[:kk])
        outs.append(checkpoint(_block, *args, use_reentrant=False) if grad else _block(*args))
    return torch.cat(outs, dim=2)


_FLEX = {}
_WARNED = set()


def _warn_cpu_backward() -> None:
    """Once per process: a CPU training step on ``flex`` runs ``chunked`` instead."""
    if "cpu-backward" not in _WARNED:
        _WARNED.add("cpu-backward")
        warnings.warn("FlexAttention has no backward on CPU in PyTorch; using the chunked backend "
                      "for this training step.", stacklevel=3)


def _flex_fns():
    if not _FLEX:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        _FLEX["attn"] = torch.compile(flex_attention, dynamic=False)
        _FLEX["mask"] = create_block_mask
    return _FLEX["attn"], _FLEX["mask"]


def _causal_block_mask(q_len: int, kv_len: int, device: torch.device):
    """The causal block mask of ``q_len`` queries over ``kv_len`` keys (the queries are the newest keys),
    built once per shape and device (it depends on nothing else), not once per layer and call."""
    key = (q_len, kv_len, str(device))
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        _, create_block_mask = _flex_fns()
        offset = kv_len - q_len

        def causal(b, h, qi, ki):
            return ki <= qi + offset

        mask = create_block_mask(causal, B=None, H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)
        if len(_BLOCK_MASKS) >= 64:
            _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
        _BLOCK_MASKS[key] = mask
    return mask


_BLOCK_MASKS: dict = {}

#: queries below this take the dense path: one-token decoding steps never compile a flex kernel
FLEX_MIN_QUERIES = 16


def attend_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod, q_pos: torch.Tensor,
                k_pos: torch.Tensor, bias_fn: BiasFn | None = None, block: int = 1024) -> torch.Tensor:
    """FlexAttention with a causal block mask (cached per shape); ``score_mod`` from the encoding (or None).

    Positions must be contiguous ranges (``q_pos = k_pos[-Q:]``), as the model produces them. Fewer than
    :data:`FLEX_MIN_QUERIES` queries (KV-cache decoding) take :func:`attend` with the bias of ``bias_fn``
    instead, so a decoding loop compiles nothing per step.
    """
    # the encoding's own parameters may need gradients when q, k, v do not (a frozen backbone); flex has no CPU
    # backward, so either takes the chunked path on CPU
    owner = getattr(bias_fn, "__self__", None)
    trainable = isinstance(owner, torch.nn.Module) and any(p.requires_grad for p in owner.parameters())
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or trainable)
    if q.device.type == "cpu" and needs_grad:
        _warn_cpu_backward()
        return attend_chunked(q, k, v, bias_fn, q_pos, k_pos, block)
    if q.shape[2] < FLEX_MIN_QUERIES:
        bias = bias_fn(q_pos, k_pos) if bias_fn is not None else None
        return attend(q, k, v, bias, q_pos, k_pos, same_positions=False)
    flex, _ = _flex_fns()
    return flex(q, k, v, score_mod=score_mod, block_mask=_causal_block_mask(q.shape[2], k.shape[2], q.device))


def attend_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enc, q_pos: torch.Tensor,
                   k_pos: torch.Tensor, same_positions: bool, block: int = 1024,
                   bias_cache: dict | None = None) -> torch.Tensor:
    """Attention through ``backend`` (``auto`` resolved by :func:`resolve_backend`).

    ``enc`` is a bias encoding (``compute_bias``/``score_mod``) or None (NoPE, or rotary already
    applied to ``q, k``): the layer's kind object passes it (:meth:`firepe.kinds.Kind.bias_module`). ``block`` is the
    chunked backend's query block. ``bias_cache`` (keyed by ``id(enc)``) lets the layers of one
    forward pass share a materialized bias.
    """
    backend = resolve_backend(backend, q.device, enc is not None, q.shape[1] * len(q_pos) * len(k_pos))
    if backend in ("blocked", "chunked") and enc is not None:
        out = _attend_flash(q, k, v, enc, q_pos, k_pos, bias_cache)
        if out is not None:
            return out
    if backend in ("dense", "blocked"):
        bias = None
        if enc is not None:
            bias = bias_cache.get(id(enc)) if bias_cache is not None else None
            if bias is None:
                bias = enc.compute_bias(q_pos, k_pos)
                if bias_cache is not None:
                    bias_cache[id(enc)] = bias
        fn = attend if backend == "dense" else attend_blocked
        return fn(q, k, v, bias, q_pos, k_pos, same_positions)
    bias_fn = enc.compute_bias if enc is not None else None
    if backend == "chunked":
        return attend_chunked(q, k, v, bias_fn, q_pos, k_pos, block)
    mod = enc.score_mod(q_pos, k_pos) if enc is not None else None
    return attend_flex(q, k, v, mod, q_pos, k_pos, bias_fn, block)


def _attend_flash(q, k, v, enc, q_pos, k_pos, bias_cache: dict | None) -> torch.Tensor | None:
    """The flash kernel (:mod:`firepe.attention_flash`) with the encoding's small bias inputs (``enc.flash_bias``,
    shared by the layers of one forward through ``bias_cache``), or None where it does not apply (not float32
    on a CPU with the kernel, positions that are not contiguous ranges, a bias without that form)."""
    if not attention_flash.supports(q, k, v, q_pos, k_pos):
        return None
    key = ("flash", id(enc))
    spec = bias_cache.get(key) if bias_cache is not None else None
    if spec is None:
        spec = enc.flash_bias(q_pos, k_pos)
        if spec is None:
            return None
        if bias_cache is not None:
            bias_cache[key] = spec
    return attention_flash.flash_attention(q, k, v, spec, q_pos, k_pos)


def data_bias(cq: torch.Tensor, ck: torch.Tensor, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, H, Q, K]`` float mask of a data bias: ``cq[..., :, None] - ck[..., None, :]`` where ``allowed``
    (bool, broadcast), ``-inf`` elsewhere."""
    bias = (cq[..., :, None] - ck[..., None, :]).to(dtype)
    return bias.masked_fill(~allowed, float("-inf"))


def data_score_mod(cq: torch.Tensor, ck: torch.Tensor):
    """FlexAttention ``score_mod`` adding ``cq[b, h, q_idx] - ck[b, h, kv_idx]`` (per batch row and head)."""

    def mod(score, b, h, q_idx, kv_idx):
        return score + (cq[b, h, q_idx] - ck[b, h, kv_idx]).to(score.dtype)

    return mod


def _data_block(q, k, v, cq, ck, q_pos, k_pos):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=data_bias(cq, ck, causal_mask(q_pos, k_pos), q.dtype))


def attend_data(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cq: torch.Tensor,
                ck: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Causal attention with a data bias ``cq[b, h, i] - ck[b, h, j]`` (FoX: ``c = cumsum(log f)``).

    ``cq`` ``[B, H, Q]`` and ``ck`` ``[B, H, K]`` are the cumulative sums of the queries and keys (float32).
    float32 on the CPU with contiguous positions, ``blocked`` and ``chunked`` run the flash kernel
    (:func:`firepe.attention_flash.flash_data_attention`: the bias inside the kernel, memory linear in ``n``).
    Otherwise no ``n x n`` tensor outlives one block: ``blocked`` forms each block's bias inside its hand-written
    backward (``d cq`` = row sums of ``dS``, ``d ck`` = minus the column sums), ``chunked`` checkpoints
    each query block, ``flex`` gives FlexAttention a ``score_mod`` reading ``cq[b, h, q_idx]`` and
    ``ck[b, h, kv_idx]`` (on CPU with gradients it falls back to ``chunked``, as for other biases);
    ``dense`` materializes ``[B, H, Q, K]``. ``auto`` is ``blocked`` on CPU, ``dense`` elsewhere, and
    ``chunked`` when the ``[B, H, Q, K]`` bias would exceed ``AUTO_CHUNK_ELEMENTS``.
    """
    if block < 1:
        raise ValueError(f"attention block must be >= 1, got {block}.")
    elements = q.shape[0] * q.shape[1] * len(q_pos) * len(k_pos)
    backend = resolve_backend(backend, q.device, True, elements)
    if backend == "dense":
        return _data_block(q, k, v, cq, ck, q_pos, k_pos)
    if backend in ("blocked", "chunked") and cq.dtype == torch.float32 and attention_flash.supports(q, k, v, q_pos,
                                                                                                     k_pos):
        return attention_flash.flash_data_attention(q, k, v, cq, ck, q_pos, k_pos)
    if backend == "blocked":
        return _BlockedAttention.apply(q, k, v, None, cq, ck, q_pos, k_pos, BLOCKED_ROWS)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, cq, ck))
    if backend == "flex" and q.shape[2] < FLEX_MIN_QUERIES:
        return _data_block(q, k, v, cq, ck, q_pos, k_pos)
    if backend == "flex" and not (q.device.type == "cpu" and needs_grad):
        flex, _ = _flex_fns()
        mask = _causal_block_mask(q.shape[2], k.shape[2], q.device)
        return flex(q, k, v, score_mod=data_score_mod(cq, ck), block_mask=mask)
    if backend == "flex":
        _warn_cpu_backward()
    outs = []
    for s, e, kk in causal_row_blocks(q_pos, k_pos, block):
        args = (q[:, :, s:e], k[:, :, :kk], v[:, :, :kk], cq[:, :, s:e], ck[:, :, :kk], q_pos[s:e], k_pos[:kk])
        outs.append(checkpoint(_data_block, *args, use_reentrant=False) if needs_grad else _data_block(*args))
    return torch.cat(outs, dim=2)


@dataclass
class RowPositions:
    """Per-row positions of a padded batch: ``q`` ``[B, Q]`` and ``k`` ``[B, K]`` positions (``q = k[:, -Q:]``),
    ``valid`` ``[B, K]`` true for real tokens, false for padding. A real token's position counts the real
    tokens before it in its row, so a left-padded row gets the positions it would have alone."""

    q: torch.Tensor
    k: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor, queries: int) -> RowPositions:
        """From an attention mask ``[B, K]`` (1 = token, 0 = padding) over cached and new tokens."""
        valid = mask.bool()
        k = (valid.long().cumsum(-1) - 1).clamp_(min=0)
        return cls(q=k[:, k.shape[1] - queries:], k=k, valid=valid)


def rows_allowed(rows: RowPositions, queries: int) -> torch.Tensor:
    """``[B, 1, Q, K]`` bool: causal, never a padding key, and every query sees itself (so no softmax row of
    a padding query is empty; its output is never used)."""
    n_k = rows.valid.shape[1]
    idx_k = torch.arange(n_k, device=rows.valid.device)
    idx_q = idx_k[n_k - queries:]
    allowed = (idx_k[None, :] <= idx_q[:, None])[None] & rows.valid[:, None, :]
    return (allowed | (idx_k[None, :] == idx_q[:, None])[None]).unsqueeze(1)


def masked_logits(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``q k^T / sqrt(D)`` ``[B, H, Q, K]``, ``-inf`` where ``allowed`` (bool, broadcast) is false."""
    return (torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5).masked_fill(~allowed, float("-inf"))


def attend_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enc, allowed: torch.Tensor) -> torch.Tensor:
    """Attention with an encoding that reads the logits (CoPE): ``s = q k^T / sqrt(D)``, ``-inf`` where
    ``allowed`` (bool, broadcast to ``[B, H, Q, K]``) is false, ``s + enc.logit_bias(q, s)``, softmax, ``@ v``.
    Dense: the ``[B, H, Q, K]`` logits exist (the encoding refuses sizes past its limit)."""
    scores = masked_logits(q, k, allowed)
    scores = scores + enc.logit_bias(q, scores).to(scores.dtype)
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


def attend_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enc, rows: RowPositions,
                bias_cache: dict | None = None) -> torch.Tensor:
    """Dense causal attention of a padded batch (HF's ``attention_mask``): row ``b`` uses its own positions
    ``rows.q[b], rows.k[b]`` for the bias and never attends to padding keys. The newest ``Q`` of the ``K``
    keys are the queries; a padding query attends to itself only (its output is never used), so no softmax
    row is empty. Causal by token index, whatever the positions: they may be in any order (a task's position
    ids), and the bias of such rows reads ``|q_pos - k_pos|`` (``BiasEncoding.compute_bias_rows``).
    ``enc`` may also be a data bias's ``(cq, ck)`` (``[B, H, Q]``, ``[B, H, K]``).
    Materializes ``[B, H, Q, K]``; unpadded batches take :func:`attend_backend` instead."""
    allowed = rows_allowed(rows, q.shape[2])
    if enc is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if isinstance(enc, tuple):  # a data bias (cq [B, H, Q], ck [B, H, K]); padding keys carry log f = 0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=data_bias(*enc, allowed, q.dtype))
    bias = bias_cache.get(id(enc)) if bias_cache is not None else None
    if bias is None:
        bias = enc.compute_bias_rows(rows.q, rows.k)
        if bias_cache is not None:
            bias_cache[id(enc)] = bias
    mask = torch.where(allowed, bias.to(q.dtype), torch.tensor(float("-inf"), dtype=q.dtype, device=q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass
class AttentionInputs:
    """What every attention layer of one forward pass receives besides ``q, k, v``.

    ``q_pos`` ``[Q]`` and ``k_pos`` ``[K]`` are the query/key positions (``q_pos = k_pos[-Q:]`` with a
    KV cache); ``same_positions`` tells ``q_pos == k_pos`` (SDPA's ``is_causal``). ``backend`` and
    ``block`` pick the attention backend (see :data:`BACKENDS`). ``angles`` is the rotary ``(cos, sin)``,
    each ``[K, head_dim]`` (``[B, 1, K, head_dim]`` with ``rows``), or None for non-rotary encodings.
    ``rows`` holds per-row positions of a padded batch (then :func:`attend_rows` replaces the backend).
    ``biases`` maps ``id(enc)`` to the materialized ``[H, Q, K]`` bias (``[B, H, Q, K]`` with ``rows``),
    so layers sharing one encoding compute it once per forward.
    """

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    same_positions: bool
    backend: str = "auto"
    block: int = 1024
    angles: tuple[torch.Tensor, torch.Tensor] | None = None
    biases: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: RowPositions | None = None


@dataclass
class KVCache:
    """Keys and values of every layer for positions ``0..length-1`` (rotary keys stored rotated)."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0
    #: a model's own cache when it keeps one (transformers' DynamicCache for ``arch="llama"``)
    extra: Any = None

    @classmethod
    def empty(cls, n_layer: int) -> KVCache:
        return cls([None] * n_layer, [None] * n_layer, 0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v`` ``[B, H, T, D]`` for ``layer`` and return all keys/values so far."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
