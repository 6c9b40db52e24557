"""T5's bucketed relative bias (Raffel et al., 2019; FIRE paper Appendix A.1, Eq. 5-6).

Unidirectional (causal) bucketing with ``num_buckets = K + 1`` buckets and maximum distance ``L1``:
distances ``0 <= n < K+1/2`` get their own bucket, distances up to ``L1`` are binned logarithmically,
everything beyond shares the last bucket (Eq. 6). Each bucket has one learned scalar per head.

Defaults: ``num_buckets=32, max_distance=128`` as T5 and Hugging Face. The FIRE paper's language
modeling runs use 64 buckets per head (Appendix C.1; it does not state ``max_distance``, so T5's 128
is kept): :func:`firepe.positions.training_options`, used by ``firepe train`` and ``firepe compare``,
sets ``num_buckets=64`` unless it is given.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import BiasEncoding
from .registry import register


def t5_bucket(distance: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bucket index of each causal distance ``n = i - j`` (negative distances are clamped to 0).

    Same bucket function as T5 / HF ``_relative_position_bucket(bidirectional=False)``.
    """
    n = distance.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # float32 like the reference implementations; n.clamp(min=1) only keeps log() finite for small n.
    large = max_exact + (
        torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, n.long(), large)


@register("t5")
class T5Bias(BiasEncoding):
    """``bias[h, q, k] = r[bucket(q_pos - k_pos), h]`` with ``r`` an ``nn.Embedding(num_buckets, H)``."""

    translation_invariant = True

    @classmethod
    def training_defaults(cls, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
        """The paper's 64 buckets per head (Appendix C.1); ``max_distance`` keeps T5's 128."""
        return {"num_buckets": 64}

    def __init__(self, num_heads: int, head_dim: int, num_buckets: int = 32, max_distance: int = 128,
                 layer_shared: bool = True):
        super().__init__(num_heads, head_dim)
        self.layer_shared = layer_shared  # T5 computes the bias once and reuses it in every layer
        if not isinstance(num_buckets, int) or num_buckets < 2:
            raise ValueError(f"num_buckets must be an integer >= 2, got {num_buckets!r}.")
        if not isinstance(max_distance, int) or max_distance <= num_buckets // 2:
            raise ValueError(f"max_distance must be an integer > num_buckets // 2 = {num_buckets // 2}, "
                             f"got {max_distance!r}.")
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)
        nn.init.normal_(self.relative_attention_bias.weight, std=0.02)

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        buckets = t5_bucket(q_pos[:, None] - k_pos[None, :], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)
