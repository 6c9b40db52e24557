"""Kerple (Chi et al., 2022): conditionally positive definite kernels as additive biases.

* log variant:   ``b_h(i, j) = -r1_h * log(1 + r2_h |i - j|)``
* power variant: ``b_h(i, j) = -r1_h * |i - j| ** r2_h`` with ``0 < r2_h <= 2``

``r1, r2 > 0`` are learned per head. As in the Kerple reference implementation, the stored
parameters are clamped in place (no autograd) to at least ``min_value`` (and ``r2 <= 2`` for the
power variant) at the start of every bias computation and then used as they are, so a parameter an
optimizer step pushed out of range is brought back to the boundary and still gets a gradient (a
clamp inside the graph would give it zero gradient forever).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import BiasEncoding
from .registry import register


class _Kerple(BiasEncoding):
    translation_invariant = True

    max_r2: float = math.inf

    def __init__(self, num_heads: int, head_dim: int, init_r1: float | None = None,
                 init_r2: float | None = None, min_value: float = 1e-2):
        super().__init__(num_heads, head_dim)
        for name, v in (("init_r1", init_r1), ("init_r2", init_r2), ("min_value", min_value)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number, got {v!r}.")
        # Random init (uniform in (0, 2) and (0, 1) as in the Kerple code) unless a value is given.
        r1 = torch.full((num_heads,), float(init_r1)) if init_r1 is not None else torch.rand(num_heads) * 2
        r2 = torch.full((num_heads,), float(init_r2)) if init_r2 is not None else torch.rand(num_heads)
        self.r1_raw = nn.Parameter(r1)
        self.r2_raw = nn.Parameter(r2)
        self.min_value = float(min_value)

    @property
    def r1(self) -> torch.Tensor:
        """``r1`` ``[H]`` as the bias uses it (the stored value, clamped to ``>= min_value``)."""
        return self.r1_raw.clamp(min=self.min_value)

    @property
    def r2(self) -> torch.Tensor:
        """``r2`` ``[H]`` as the bias uses it (clamped to ``[min_value, max_r2]``)."""
        return self.r2_raw.clamp(min=self.min_value, max=self.max_r2)

    def clamp_parameters_(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamp ``r1_raw``/``r2_raw`` into range in place (only when out of range, so a graph that
        already saved them stays valid) and return them, for use with gradients."""
        with torch.no_grad():
            for p, high in ((self.r1_raw, math.inf), (self.r2_raw, self.max_r2)):
                if bool(((p < self.min_value) | (p > high)).any()):
                    p.clamp_(min=self.min_value, max=None if math.isinf(high) else high)
        return self.r1_raw, self.r2_raw

    def check_parameters(self) -> None:
        if not (torch.isfinite(self.r1_raw).all() and torch.isfinite(self.r2_raw).all()):
            raise ValueError(f"{self.name}: r1/r2 contain non-finite values; the checkpoint or training diverged.")


@register("kerple_log")
class KerpleLog(_Kerple):
    """``bias[h, q, k] = -r1[h] * log(1 + r2[h] * |q_pos - k_pos|)``."""

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        r1, r2 = self.clamp_parameters_()
        dist = self.distance(q_pos, k_pos, r1.dtype).abs()
        return -r1[:, None, None] * torch.log1p(r2[:, None, None] * dist)


@register("kerple_power")
class KerplePower(_Kerple):
    """``bias[h, q, k] = -r1[h] * |q_pos - k_pos| ** r2[h]`` with ``r2`` clamped to ``(0, 2]``."""

    max_r2 = 2.0

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        r1, r2 = self.clamp_parameters_()
        dist = self.distance(q_pos, k_pos, r1.dtype).abs()
        return -r1[:, None, None] * dist.pow(r2[:, None, None])
