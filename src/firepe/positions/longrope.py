"""LongRoPE (Ding et al., ICML 2024), with the frequencies of Hugging Face's ``rope_type="longrope"``.

Each RoPE frequency is divided by its own rescale factor ``lambda_k``:
``theta_k = 1 / (lambda_k * base^(2k/d))``, ``k = 0 .. d/2 - 1``. Two factor lists exist:
``short_factor`` for sequences within ``original_max_position_embeddings`` (``L``) and
``long_factor`` beyond it; ``factor`` (required, as for YaRN) is the target length over ``L``;
as in Hugging Face, a call whose largest position ``p`` has ``p + 1 > L``
uses the long factors (``factors="auto"``; ``"short"`` or ``"long"`` fixes one list, which keeps a
KV cache consistent when a generation crosses ``L``). ``cos, sin`` are multiplied by
``attention_factor``, by default ``sqrt(1 + ln(factor) / ln(L))`` for ``factor > 1`` and 1 otherwise.

LongRoPE finds its factors by an evolutionary search per model; pass them as ``long_factor`` /
``short_factor`` (from Python as lists, in a spec as ``a/b/c``). Without ``long_factor`` the long
factors are a stand-in, a geometric ramp from 1 (highest frequency) to ``factor`` (lowest), the
non-decreasing shape the searched factors have; without ``short_factor`` the short factors are 1
(plain RoPE within ``L``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import positive_int
from .registry import register
from .rope import RoPE, check_positive

FACTOR_SETS = ("auto", "short", "long")


def _factor_list(name: str, values, length: int) -> torch.Tensor:
    if hasattr(values, "tolist") and hasattr(values, "dim"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or len(values) != length:
        got = len(values) if isinstance(values, Sequence) and not isinstance(values, (str, bytes)) else values
        raise ValueError(f"longrope {name} must be a list of head_dim/2 = {length} numbers, got {got!r}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"longrope {name} must hold finite positive numbers, got {v!r}.")
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


@register("longrope")
class LongRoPE(RoPE):
    """RoPE with per-frequency rescale factors (see the module docstring); ``original_max_position_embeddings``
    defaults to the training length in ``firepe train`` / ``compare``."""

    def __init__(self, num_heads: int, head_dim: int, factor: float,
                 long_factor: list[float] | None = None, short_factor: list[float] | None = None,
                 original_max_position_embeddings: int = 2048, attention_factor: float | None = None,
                 factors: str = "auto", base: float = 10000.0):
        half = positive_int("head_dim", head_dim) // 2
        positive_int("num_heads", num_heads)
        check_positive("factor", factor)
        if factor < 1:
            raise ValueError(f"longrope factor must be >= 1, got {factor}.")
        if isinstance(original_max_position_embeddings, bool) or not isinstance(
                original_max_position_embeddings, int) or original_max_position_embeddings < 2:
            raise ValueError(f"longrope original_max_position_embeddings must be an integer >= 2, "
                             f"got {original_max_position_embeddings!r}.")
        if factors not in FACTOR_SETS:
            raise ValueError(f"longrope factors must be one of {', '.join(FACTOR_SETS)}, got {factors!r}.")
        self.factor = float(factor)
        self.original_max = int(original_max_position_embeddings)
        self.factors = factors
        if long_factor is None:
            long = torch.tensor(self.factor, dtype=torch.float64) ** (torch.arange(half, dtype=torch.float64)
                                                                      / max(half - 1, 1))
        else:
            long = _factor_list("long_factor", long_factor, half)
        short = torch.ones(half, dtype=torch.float64) if short_factor is None else _factor_list(
            "short_factor", short_factor, half)
        self._long, self._short = long, short
        super().__init__(num_heads, head_dim, base=base)
        self.register_buffer("long_inv_freq", self._scaled(long), persistent=False)
        self.register_buffer("short_inv_freq", self._scaled(short), persistent=False)
        if attention_factor is None:
            f = self.factor
            attention_factor = math.sqrt(1 + math.log(f) / math.log(self.original_max)) if f > 1 else 1.0
        check_positive("attention_factor", attention_factor)
        self.attention_factor = float(attention_factor)

    def _scaled(self, ext: torch.Tensor) -> torch.Tensor:
        # as Hugging Face: float32 factors times base ** (float32 exponents), then 1 / that
        shape = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (ext.float() * self.base**shape)

    def inverse_frequencies(self) -> torch.Tensor:
        return self._scaled(self._short)

    def uses_long(self, pos: torch.Tensor) -> bool:
        """Whether ``angles(pos)`` uses the long factors."""
        if self.factors != "auto":
            return self.factors == "long"
        return bool(pos.numel()) and int(pos.max()) + 1 > self.original_max

    def compute_angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.long_inv_freq if self.uses_long(pos) else self.short_inv_freq
        dtype = torch.float64 if inv.dtype == torch.float64 else torch.float32
        freqs = pos.to(dtype)[:, None] * inv.to(dtype)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor

    @classmethod
    def training_defaults(cls, options, seq_len):
        return {"original_max_position_embeddings": int(seq_len)}
