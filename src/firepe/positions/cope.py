"""CoPE, contextual position encoding (Golovneva et al., 2024, arXiv 2405.18719).

Positions are counted by gates computed from the attention logits themselves. For query ``i`` and key
``j <= i`` of one head, with ``s_it = q_i . k_t / sqrt(D)`` the (causally masked) logit,

    g_it = sigmoid(s_it),        p_ij = sum_{t = j .. i} g_it                 (a real number in (0, i-j+1])

and the logit gets ``q_i . e(p_ij)``, where ``e`` interpolates learned vectors ``E[m]`` (``m = 0 ..
npos_max - 1``) linearly between ``floor(p)`` and ``ceil(p)``; ``p`` is clamped to ``npos_max - 1``.
It is computed as in the paper: ``z = q E^T`` ``[B, H, Q, npos_max]`` once, then
``z[floor p] (1 - w) + z[ceil p] w`` with ``w = p - floor p``. Masked keys have ``s = -inf``, so their
gates are 0 and a padded row counts only its own tokens. ``E`` starts at 0 (as in the paper), so an
untrained CoPE is NoPE; one ``E`` per layer, shared by its heads.

``p`` needs every ``(i, j)`` pair, so CoPE runs on a dense path of its own (``[B, H, Q, K]`` logits):
the ``chunked`` and ``flex`` backends are refused for it, and a call whose logits would exceed
:data:`MAX_ELEMENTS` is refused in one line. ``training_defaults`` sets ``npos_max`` to the training
length; positions past it count as ``npos_max - 1``.

Shapes: :meth:`logit_bias` takes ``q`` ``[B, H, Q, D]`` and the masked, scaled logits ``[B, H, Q, K]``
(the queries are the newest ``Q`` keys) and returns ``[B, H, Q, K]`` (float32, or float64 for float64 inputs).
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

from .base import PositionEncoding
from .registry import register

#: the most ``[B, H, Q, K]`` logit entries one CoPE call may materialize (2^28: 1 GiB in float32)
MAX_ELEMENTS = 2**28


@register("cope")
class CoPE(PositionEncoding):
    """Gated, counted positions ``p_ij = sum_{t=j..i} sigmoid(s_it)`` and interpolated embeddings ``E``
    ``[npos_max, head_dim]`` (``kind == "context"``: it reads the queries and the attention logits)."""

    kind = "context"

    def __init__(self, num_heads: int, head_dim: int, npos_max: int = 64):
        super().__init__(num_heads, head_dim)
        if isinstance(npos_max, bool) or not isinstance(npos_max, numbers.Integral) or not 2 <= npos_max <= 2**20:
            raise ValueError(f"cope npos_max must be an integer in [2, {2**20}], got {npos_max!r}.")
        self.npos_max = int(npos_max)
        self.pos_emb = nn.Parameter(torch.zeros(self.npos_max, head_dim))

    @classmethod
    def training_defaults(cls, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
        """``npos_max`` = the training length (at least 2) unless given."""
        return {} if "npos_max" in options else {"npos_max": max(2, int(seq_len))}

    def positions(self, logits: torch.Tensor) -> torch.Tensor:
        """``p`` ``[B, H, Q, K]``: for each key, the sum of the gates of it and every later key."""
        gates = torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))
        return gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.npos_max - 1)

    def logit_bias(self, q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``q_i . e(p_ij)`` ``[B, H, Q, K]`` for ``q`` ``[B, H, Q, D]`` and masked logits ``[B, H, Q, K]``."""
        if not isinstance(q, torch.Tensor) or q.dim() != 4 or q.shape[-1] != self.head_dim or not q.is_floating_point():
            got = f"{q.dtype} {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(f"cope takes queries [B, H, Q, {self.head_dim}] (floating point), got {got}.")
        if (not isinstance(logits, torch.Tensor) or logits.dim() != 4 or tuple(logits.shape[:3]) != tuple(q.shape[:3])
                or not logits.is_floating_point()):
            got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"cope takes masked logits [B, H, Q, K] with the queries' B, H, Q {tuple(q.shape[:3])}, "
                             f"got {got}.")
        if logits.numel() > MAX_ELEMENTS:
            raise ValueError(f"cope needs the {tuple(logits.shape)} attention logits ({logits.numel():,} entries, "
                             f"more than {MAX_ELEMENTS:,}); use a shorter sequence or a smaller batch.")
        pos = self.positions(logits)
        if bool(torch.isnan(pos).any()):  # NaN would reach gather as a huge negative index
            raise ValueError("cope got NaN attention logits (non-finite weights or inputs); check the model's "
                             "weights (a diverged run).")
        floor = pos.floor()
        w = pos - floor
        dtype = torch.promote_types(pos.dtype, q.dtype)  # float32 at least (float64 stays: gradcheck)
        z = torch.matmul(q.to(dtype), self.pos_emb.to(dtype).t())  # [B, H, Q, npos_max]
        lo = z.gather(-1, floor.long())
        hi = z.gather(-1, pos.ceil().long())
        return lo * (1 - w) + hi * w

    def forward(self, q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.logit_bias(q, logits)
