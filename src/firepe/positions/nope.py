"""NoPE: no position encoding (Kazemnejad et al., 2023); a causal mask is the only order signal."""

from __future__ import annotations

import torch

from .base import BiasEncoding
from .registry import register


@register("nope")
class NoPE(BiasEncoding):
    """``bias(q_pos, k_pos)`` returns ``None``: attention runs without any bias (``kind == "none"``)."""

    kind = "none"

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__(num_heads, head_dim)

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> None:
        return None
