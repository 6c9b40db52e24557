"""Rotary encodings: RoPE (Su et al., 2021), position interpolation (Chen et al., 2023) and YaRN
(Peng et al., 2024, with the parameters of Hugging Face's ``rope_type="yarn"``).

``angles(pos)`` returns ``cos, sin`` of shape ``[T, head_dim]`` in the Hugging Face layout
(``head_dim/2`` frequencies ``theta_k = base^(-2k/d)`` repeated twice), so that
``apply_rotary(q, k, cos, sin)`` rotates pairs ``(x_k, x_{k + d/2})`` by ``pos * theta_k``.
"""

from __future__ import annotations

import math

import torch

from .base import RotaryEncoding
from .registry import register


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` ``[..., Tq, D]`` and ``k`` ``[..., Tk, D]`` with ``cos, sin`` of ``[T, D]``.

    ``cos, sin`` must have as many rows as ``q`` and ``k``; pass ``angles(q_pos)`` and
    ``angles(k_pos)`` separately when they differ (KV cache).
    """
    _check_angles(q, cos, sin, "q")
    _check_angles(k, cos, sin, "k")
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _check_angles(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``cos`` and ``sin`` have one shape whose last two sizes are ``x``'s ``[T, D]``."""
    if not all(isinstance(t, torch.Tensor) for t in (x, cos, sin)):
        raise ValueError(f"{name}, cos and sin must be tensors.")
    if cos.shape != sin.shape or cos.dim() < 2 or x.dim() < 2 or cos.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"cos and sin must both be [T, D] = {list(x.shape[-2:])} for {name} of shape "
                         f"{list(x.shape)}, got cos {list(cos.shape)} and sin {list(sin.shape)}; pass angles() of "
                         f"{name}'s own positions.")


def apply_rotary_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate a single tensor ``x`` ``[..., T, D]``."""
    _check_angles(x, cos, sin, "x")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def check_positive(name: str, value: float) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite positive number."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")


@register("rope")
class RoPE(RotaryEncoding):
    """``cos/sin(pos * theta_k)``, ``theta_k = base^(-2k/head_dim)``; ``position_scale`` divides positions."""

    position_scale: float = 1.0

    def __init__(self, num_heads: int, head_dim: int, base: float = 10000.0):
        super().__init__(num_heads, head_dim)
        if head_dim % 2:
            raise ValueError(f"rotary encodings need an even head_dim, got {head_dim}.")
        check_positive("base", base)
        self.base = float(base)
        self.register_buffer("inv_freq", self.inverse_frequencies(), persistent=False)
        self.attention_factor = 1.0

    def inverse_frequencies(self) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        return (1.0 / self.base**exponent).float()

    def compute_angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in float32 at least: bf16 positions lose integers above 256.
        dtype = torch.float64 if self.inv_freq.dtype == torch.float64 else torch.float32
        freqs = (pos.to(dtype) / self.position_scale)[:, None] * self.inv_freq.to(dtype)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


@register("rope_pi")
class RoPEPositionInterpolation(RoPE):
    """Position interpolation: RoPE angles at ``pos / factor`` (Chen et al., 2023)."""

    def __init__(self, num_heads: int, head_dim: int, factor: float, base: float = 10000.0):
        super().__init__(num_heads, head_dim, base=base)
        check_positive("factor", factor)
        self.position_scale = float(factor)


@register("yarn")
class YaRN(RoPE):
    """YaRN (Peng et al., 2024): NTK-by-parts interpolation plus attention temperature.

    Frequencies with fewer than ``beta_slow`` rotations over ``original_max_position_embeddings``
    are interpolated (divided by ``factor``), those with more than ``beta_fast`` are kept, a linear
    ramp blends in between; ``cos, sin`` are scaled by ``attention_factor`` (default
    ``0.1 ln(factor) + 1``), so logits scale by its square, as in Hugging Face's implementation.
    """

    def __init__(self, num_heads: int, head_dim: int, factor: float,
                 original_max_position_embeddings: int = 2048, base: float = 10000.0,
                 beta_fast: float = 32.0, beta_slow: float = 1.0, attention_factor: float | None = None,
                 truncate: bool = True):
        for name, v in (("factor", factor), ("beta_fast", beta_fast), ("beta_slow", beta_slow),
                        ("original_max_position_embeddings", original_max_position_embeddings)):
            check_positive(name, v)
        if factor < 1:
            raise ValueError(f"YaRN factor must be >= 1, got {factor}.")
        self.factor = float(factor)
        self.original_max = int(original_max_position_embeddings)
        self.beta_fast, self.beta_slow, self.truncate = float(beta_fast), float(beta_slow), truncate
        super().__init__(num_heads, head_dim, base=base)
        if attention_factor is None:
            attention_factor = 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0
        check_positive("attention_factor", attention_factor)
        self.attention_factor = float(attention_factor)

    def _correction_dim(self, num_rotations: float) -> float:
        return (self.head_dim * math.log(self.original_max / (num_rotations * 2 * math.pi))) / (
            2 * math.log(self.base))

    def inverse_frequencies(self) -> torch.Tensor:
        d = self.head_dim
        pos_freqs = self.base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (self.factor * pos_freqs)
        low, high = self._correction_dim(self.beta_fast), self._correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (high frequency), 0: interpolate (low frequency)
        return (interpolation * (1 - keep) + extrapolation * keep).float()
