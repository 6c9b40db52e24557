"""ALiBi (Press et al., 2022): ``b_h(i, j) = -m_h |i - j|`` with fixed head slopes ``m_h``."""

from __future__ import annotations

import math

import torch

from .base import BiasEncoding
from .registry import register


def alibi_slopes(num_heads: int) -> list[float]:
    """Head slopes of the ALiBi paper: the geometric sequence starting at ``2^(-8/n)`` with that ratio
    for ``n`` a power of two; otherwise the slopes of the closest lower power of two ``p`` followed by
    every other slope of ``2p`` heads, for the remaining ``num_heads - p`` heads."""
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}.")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    p = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(p) + alibi_slopes(2 * p)[0::2][: num_heads - p]


@register("alibi")
class ALiBi(BiasEncoding):
    """``bias[h, q, k] = -slopes[h] * |q_pos - k_pos|``. ``slopes`` may be given to override the paper's."""

    translation_invariant = True

    def __init__(self, num_heads: int, head_dim: int, slopes: list[float] | None = None):
        super().__init__(num_heads, head_dim)
        values = alibi_slopes(num_heads) if slopes is None else list(slopes)
        if len(values) != num_heads or not all(math.isfinite(s) and s > 0 for s in values):
            raise ValueError(f"slopes must be {num_heads} finite positive numbers, got {values!r}.")
        self.register_buffer("slopes", torch.tensor(values, dtype=torch.float32))

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = self.distance(q_pos, k_pos, self.slopes.dtype).abs()
        return -self.slopes[:, None, None] * dist

    def score_mod(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        slopes = self.slopes  # positions as tensors: no recompilation for a new offset

        def mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_pos[q_idx] - k_pos[kv_idx]).abs()

        return mod
