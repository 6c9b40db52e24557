"""p-RoPE (Barbero et al., "Round and Round We Go! What makes Rotary Positional Encodings useful?",
ICLR 2025): RoPE with its lowest frequencies removed.

RoPE rotates pair ``k`` (``k = 0 .. d/2 - 1``) by ``pos * theta_k``, ``theta_k = base^(-2k/d)``,
highest frequency first. p-RoPE keeps the ``round(p * d/2)`` highest frequencies unchanged and sets
the others to zero, so those pairs are never rotated and carry no position (``p = 1`` is RoPE,
``p = 0`` is NoPE). This differs from GPT-NeoX's / Hugging Face's ``partial_rotary_factor``, which
rotates the first fraction of the dimensions with frequencies re-spread over ``base^(-2k/(p d))``.
"""

from __future__ import annotations

import math

import torch

from .registry import register
from .rope import RoPE


@register("p_rope")
class PRoPE(RoPE):
    """``theta_k = base^(-2k/d)`` for ``k < round(fraction * d/2)``, ``0`` for the rest; ``cos, sin``
    ``[T, d]`` in the Hugging Face layout, as :class:`~firepe.positions.RoPE`. Default
    ``fraction=0.75`` (the paper's Gemma runs compare 0.25 and 0.75 with RoPE and NoPE)."""

    def __init__(self, num_heads: int, head_dim: int, fraction: float = 0.75, base: float = 10000.0):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ValueError(f"p_rope fraction must be a number in [0, 1], got {fraction!r}.")
        self.fraction = float(fraction)
        super().__init__(num_heads, head_dim, base=base)

    def kept(self) -> int:
        """How many of the ``head_dim/2`` frequencies stay (the highest ones)."""
        return int(round(self.fraction * (self.head_dim // 2)))

    def inverse_frequencies(self) -> torch.Tensor:
        inv = super().inverse_frequencies()
        inv[self.kept():] = 0.0
        return inv
