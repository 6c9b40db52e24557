"""Forgetting Transformer (FoX; Lin et al., ICLR 2025): a data-dependent attention bias from a forget gate.

Each head ``h`` has a scalar forget gate per token, computed from the attention layer's input ``x_t``
(the normed hidden state, ``d_model = H * head_dim``):

    f_{t,h} = sigmoid(w_h . x_t + b_h),        c_{t,h} = sum_{l <= t} log f_{l,h}

and adds to the logit of query ``i`` and key ``j <= i``

    D[h, i, j] = sum_{l = j+1 .. i} log f_{l,h} = c_{i,h} - c_{j,h}       (<= 0)

with no other position encoding (the paper's "FoX (LLaMA)"). The bias is built from the O(n) vector
``c`` (a cumulative sum), never from an ``n x n`` parameter: the attention backends read ``c`` for the
queries and the keys and form ``c_q - c_k`` block by block (:func:`firepe.attention.attend_data`); the
KV cache keeps ``log f`` of every cached key. FoX's "Pro" block adds an output gate, QK-norm and a
key/value shift: those change the attention layer, not the position signal, and are not part of this
encoding. Initialization follows the reference code's ``fgate_type="full"``: ``w`` normal with std
``init_std`` (0.02), ``b = bias_init`` (0: every gate starts at 0.5).

Shapes: ``x`` ``[B, T, H * head_dim]`` -> ``log_forget`` ``[B, H, T]`` (float32 whatever ``x``'s dtype);
:meth:`bias_for` ``[B, H, T, T]`` (entries with ``k > q`` are not specified; they are 0 here).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .base import DataBiasEncoding
from .registry import register

#: the range of ``bias_init`` (a gate's sigmoid is 1 - 4e-44 at +100: larger values mean nothing more)
BIAS_BOUND = 100.0
#: the largest ``init_std`` (gate logits of std ``init_std * |x|``; past this they saturate at any input)
STD_BOUND = 10.0


@register("fox")
class FoX(DataBiasEncoding):
    """Per-head forget gates ``f = sigmoid(x W^T + b)``; :meth:`log_forget` gives ``log f`` ``[B, H, T]``."""

    def __init__(self, num_heads: int, head_dim: int, bias_init: float = 0.0, init_std: float = 0.02):
        super().__init__(num_heads, head_dim)
        for label, value in (("bias_init", bias_init), ("init_std", init_std)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"fox {label} must be a finite number, got {value!r}.")
        if init_std < 0:
            raise ValueError(f"fox init_std must be >= 0, got {init_std!r}.")
        if init_std > STD_BOUND:
            raise ValueError(f"fox init_std must be in [0, {STD_BOUND:g}], got {init_std!r}.")
        if not -BIAS_BOUND <= bias_init <= BIAS_BOUND:
            raise ValueError(f"fox bias_init must be in [{-BIAS_BOUND:g}, {BIAS_BOUND:g}], got {bias_init!r}.")
        self.gate = nn.Linear(num_heads * head_dim, num_heads)
        with torch.no_grad():
            nn.init.normal_(self.gate.weight, std=float(init_std))
            self.gate.bias.fill_(float(bias_init))

    def log_forget(self, x: torch.Tensor) -> torch.Tensor:
        """``log f = logsigmoid(x W^T + b)`` ``[B, H, T]`` in float32 for ``x`` ``[B, T, H * head_dim]``."""
        width = self.num_heads * self.head_dim
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != width or not x.is_floating_point():
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"fox log_forget takes the layer input [B, T, {width}] (floating point), got {got}.")
        w, b = self.gate.weight, self.gate.bias
        logits = F.linear(x.to(w.dtype), w, b).float()
        return F.logsigmoid(logits).transpose(1, 2)
