"""Attention with a position encoding, and the KV cache.

``attend(q, k, v, enc, q_pos, k_pos)`` is the one entry point the model calls:

* rotary encodings rotate ``q`` and ``k`` (done by the caller, before caching ``k``);
* NoPE and rotary attention use SDPA's ``is_causal`` when queries and keys are the same positions;
* bias encodings fold the causal mask into the bias (``-inf`` where ``k_pos > q_pos``) and pass it
  to :func:`torch.nn.functional.scaled_dot_product_attention` as a float mask (``dense`` backend).

Shapes: ``q`` ``[B, H, Q, D]``, ``k, v`` ``[B, H, K, D]``, ``q_pos`` ``[Q]``, ``k_pos`` ``[K]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["causal_mask", "bias_mask", "attend", "KVCache"]


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


@dataclass
class KVCache:
    """Keys and values of every layer for positions ``0..length-1`` (rotary keys stored rotated)."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0

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
