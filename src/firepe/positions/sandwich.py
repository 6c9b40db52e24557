"""Sandwich (Chi et al., 2023): the inner product of sinusoidal embeddings as a bias (FIRE paper Eq. 16).

``b_h(i, j) = r1_h * (sum_{k=1}^{d'} cos((i - j) / 10000^(k / d')) - d')``

``d' = num_terms`` (default ``head_dim // 2``, i.e. the frequencies of a ``head_dim``-dimensional
sinusoidal embedding). The constant ``- d'`` makes ``b(i, i) = 0``; it is softmax-invariant.
Head scales default to ``r1_h = H / (8 h)`` for heads ``h = 1..H`` (the Sandwich paper's
ALiBi-like head-specific compression).
"""

from __future__ import annotations

import math

import torch

from .base import BiasEncoding
from .registry import register


@register("sandwich")
class Sandwich(BiasEncoding):
    translation_invariant = True

    def __init__(self, num_heads: int, head_dim: int, num_terms: int | None = None,
                 scales: list[float] | None = None, base: float = 10000.0):
        super().__init__(num_heads, head_dim)
        num_terms = head_dim // 2 if num_terms is None else num_terms
        if not isinstance(num_terms, int) or num_terms <= 0:
            raise ValueError(f"num_terms must be a positive integer, got {num_terms!r}.")
        values = [num_heads / (8 * h) for h in range(1, num_heads + 1)] if scales is None else list(scales)
        if len(values) != num_heads or not all(math.isfinite(s) for s in values):
            raise ValueError(f"scales must be {num_heads} finite numbers, got {values!r}.")
        if not (math.isfinite(base) and base > 1):
            raise ValueError(f"base must be a finite number > 1, got {base!r}.")
        self.num_terms, self.base = num_terms, float(base)
        self.register_buffer("scales", torch.tensor(values, dtype=torch.float32))

    def frequencies(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``w_k = base^(-k / d')`` for ``k = 1..d'`` (computed in float64, then cast)."""
        k = torch.arange(1, self.num_terms + 1, dtype=torch.float64)
        return (self.base ** (-k / self.num_terms)).to(dtype)

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        # b depends on the causal distance only: evaluate the d'-term sum once per distance, then gather.
        dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)
        grid = torch.arange(int(dist.max()) + 1 if dist.numel() else 1, device=dist.device)
        w = self.frequencies(self.scales.dtype).to(grid.device)
        table = torch.cos(grid.to(self.scales.dtype)[:, None] * w).sum(-1) - self.num_terms
        return self.scales[:, None, None] * table[dist]
