"""The two interfaces every position encoding implements.

* :class:`BiasEncoding` -- additive attention biases (Eq. 1 of the FIRE paper):
  ``bias(q_pos, k_pos) -> Tensor[H, Q, K]`` added to the pre-softmax logits.
* :class:`RotaryEncoding` -- rotary encodings: ``angles(pos) -> (cos, sin)`` of shape
  ``[T, head_dim]``, applied to queries and keys by :func:`firepe.positions.apply_rotary`.
* :class:`DataBiasEncoding` -- data-dependent biases of the cumulative form
  ``B[b, h, i, j] = c[b, h, i] - c[b, h, j]`` with ``c = cumsum(log_forget(x))`` over tokens, where
  ``log_forget(x [B, T, d_model]) -> [B, H, T]`` reads the attention layer's input (FoX).
* ``kind == "context"`` encodings (CoPE, :mod:`.cope`) read the queries and the masked logits:
  ``logit_bias(q [B, H, Q, D], s [B, H, Q, K]) -> [B, H, Q, K]``.

Positions are always explicit 0-based integer vectors (any integer dtype; they are converted to
``torch.long`` after the checks), never "the length": a KV cache passes ``q_pos = tensor([t])``
and long evaluation passes query blocks. Entries with ``k_pos > q_pos`` are never used by a causal
model with sorted positions and are not specified by ``compute_bias``. Per-row position ids that are not
sorted (a task's own ids, e.g. ``firepe synth --position-ids coupled``) can put an earlier key at a larger
id than its query: :meth:`BiasEncoding.compute_bias_rows` then gives every bias encoding here the distance
``|q_pos - k_pos|`` (:func:`rows_sorted` tells the two cases apart); rotary encodings see the signed difference.

``PositionEncoding.kind`` is the one attribute telling what an encoding contributes to attention:
``"bias"`` (an additive bias), ``"rotary"`` (rotated queries and keys), ``"data"`` (a bias computed
from the hidden states), ``"context"`` (a bias computed from the queries and logits) or ``"none"`` (NoPE).
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["PositionEncoding", "BiasEncoding", "RotaryEncoding", "DataBiasEncoding", "FlashBias", "check_positions",
           "positive_int", "causal_row_blocks", "rows_sorted"]


@dataclass
class FlashBias:
    """A position bias as small inputs, for attention kernels that compute each logit's bias themselves
    (:mod:`firepe.attention_flash`) instead of reading an ``[H, Q, K]`` tensor.

    ``table`` ``[H, M]``: columns ``0..base-1`` hold the bias at causal distance ``d = q_pos - k_pos``
    (``bias[h, i, j] = table[h, d]``). Rows with ``long_row[i]`` (FIRE's rows ``i >= L``) instead read the
    ``grid`` columns from ``base`` (``Tg``) with linear interpolation at ``x = psi[d] * inv_norm[i]``:
    ``p = clamp(x, 0, 1) (grid - 1)``, ``k = min(floor(p), grid - 2)``, ``bias = Tg[k] + (Tg[k + 1] - Tg[k]) (p - k)``.
    ``psi`` ``[P]`` covers the distances those rows reach, ``inv_norm`` and ``long_row`` are ``[Q]``. Gradients
    flow to ``table``, ``psi`` and ``inv_norm`` (so on to the encoding's parameters)."""

    table: torch.Tensor
    base: int
    grid: int = 0
    psi: torch.Tensor | None = None
    inv_norm: torch.Tensor | None = None
    long_row: torch.Tensor | None = None


def check_positions(*positions: torch.Tensor, names: tuple[str, ...] | None = None) -> None:
    """Raise ``ValueError`` unless every argument is a 1-D non-negative integer tensor on one device."""
    names = names or tuple(f"positions[{i}]" for i in range(len(positions)))
    device = None
    for name, pos in zip(names, positions):
        if not isinstance(pos, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of integer positions, got {type(pos).__name__}.")
        if pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold integer positions (torch.long), got dtype {pos.dtype}; "
                "use torch.arange(n) rather than float positions."
            )
        if pos.dim() != 1:
            raise ValueError(f"{name} must be a 1-D vector of positions, got shape {tuple(pos.shape)}.")
        if device is None:
            device = pos.device
        elif pos.device != device:
            raise ValueError(
                f"{names[0]} is on {device} but {name} is on {pos.device}; move both to the same device."
            )
    for name, pos in zip(names, positions):
        if pos.numel() and pos.device.type != "meta" and int(pos.min()) < 0:
            raise ValueError(f"{name} must be non-negative (0-based positions), got minimum {int(pos.min())}.")


def causal_row_blocks(q_pos: torch.Tensor, k_pos: torch.Tensor, block: int) -> list[tuple[int, int, int]]:
    """``(start, end, keys)`` per block of ``block`` query rows: rows ``start:end`` see at most the
    first ``keys`` keys (the others have ``k_pos > q_pos``); every key when ``k_pos`` is not sorted
    ascending."""
    n_q, n_k = len(q_pos), len(k_pos)
    starts = list(range(0, n_q, block))
    ends = [min(s + block, n_q) for s in starts]
    if n_k > 1 and not bool((k_pos[1:] >= k_pos[:-1]).all()):
        return [(s, e, n_k) for s, e in zip(starts, ends)]
    if not starts:
        return []
    block_max = torch.stack([q_pos[s:e].max() for s, e in zip(starts, ends)])
    keys = torch.searchsorted(k_pos, block_max, right=True).tolist()
    return list(zip(starts, ends, keys))


def rows_sorted(q_rows: torch.Tensor, k_rows: torch.Tensor) -> bool:
    """Whether every row of ``q_rows`` ``[B, Q]`` and ``k_rows`` ``[B, K]`` is non-decreasing: then no key a query
    sees (an earlier token) has a larger position, and the causal distance ``q_pos - k_pos`` is never negative."""
    return all(t.shape[-1] < 2 or bool((t[..., 1:] >= t[..., :-1]).all()) for t in (q_rows, k_rows))


def position_span(q_pos: torch.Tensor, k_pos: torch.Tensor) -> int:
    """The largest causal distance ``max(q_pos) - min(k_pos)`` (0 when negative or a vector is empty)."""
    return max(int(q_pos.max()) - int(k_pos.min()), 0) if len(q_pos) and len(k_pos) else 0


def positive_int(name: str, value) -> int:
    """``value`` as an ``int`` when it is a positive integer (not a bool); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def outside_autocast(fn):
    """Run the method ``fn`` with autocast disabled on the module's device (that of its first tensor).

    Encodings compute in their own dtype (float32 unless the module was cast): under bf16 autocast a
    ``Linear`` would run FIRE's MLP in bf16, so its 16384-point table collapses to about 128 distinct
    inputs, and a matmul of positions by frequencies loses every integer above 256. The attention that
    consumes the bias or angles still runs under autocast.
    """

    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        first = next(self.parameters(), None)
        first = first if first is not None else next(self.buffers(), None)
        if first is None:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        device = first.device.type if first is not None else "cpu"
        if not torch.is_autocast_enabled(device):
            return fn(self, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return fn(self, *args, **kwargs)

    run.outside_autocast = True
    return run


#: the methods every encoding runs outside autocast (wrapped in each class that defines them)
AUTOCAST_FREE = ("compute_bias", "compute_bias_rows", "score_mod", "distance_bias", "compute_angles", "f",
                 "distance_table", "interpolation_table", "lookup_table", "log_forget", "logit_bias")


class PositionEncoding(nn.Module):
    """Base class; ``name`` is the registry key.

    ``kind`` tells what the encoding contributes to attention: ``"bias"`` (:meth:`BiasEncoding.bias`
    returns ``[H, Q, K]``), ``"rotary"`` (:meth:`RotaryEncoding.angles`) or ``"none"`` (nothing: NoPE).
    """

    kind: str = "none"
    name: str = ""
    #: a model shares one module across layers when this is true or the module has no parameters
    layer_shared: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in AUTOCAST_FREE:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "outside_autocast", False):
                setattr(cls, name, outside_autocast(fn))

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = positive_int("num_heads", num_heads)
        self.head_dim = positive_int("head_dim", head_dim)

    @classmethod
    def training_defaults(cls, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
        """Options a training run at ``seq_len`` adds to ``options`` (the encoding's own defaults stay for
        what is not added). None here; FIRE and T5 set the paper's training values (Appendix C.1)."""
        return {}

    @property
    def adds_bias(self) -> bool:
        """``kind == "bias"`` (read-only; kept for compatibility, test ``kind`` instead)."""
        return self.kind == "bias"


class BiasEncoding(PositionEncoding):
    """Additive relative bias ``B[h, q, k] = b_h(q_pos[q], k_pos[k])``.

    Subclasses implement :meth:`compute_bias` (no input checks, used on hot paths);
    :meth:`bias` validates its inputs first.
    """

    kind = "bias"

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Bias of shape ``[H, len(q_pos), len(k_pos)]`` for 0-based integer positions (any integer
        dtype: they are converted to ``torch.long``, so ``uint8`` is never a mask and never wraps)."""
        check_positions(q_pos, k_pos, names=("q_pos", "k_pos"))
        self.check_parameters()
        try:
            return self.compute_bias(q_pos.long(), k_pos.long())
        except (torch.OutOfMemoryError, RuntimeError) as e:  # an allocation the span makes impossible
            if not isinstance(e, torch.OutOfMemoryError) and "alloc" not in str(e).lower():
                raise
            span = position_span(q_pos, k_pos)
            raise ValueError(f"{self.name or type(self).__name__} bias for {len(q_pos)} x {len(k_pos)} positions "
                             f"spanning {span:,} distances does not fit in memory; pass fewer or closer "
                             "positions.") from None

    def check_parameters(self) -> None:
        """Raise ``ValueError`` when a learned quantity is not usable (e.g. non-finite)."""

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_bias_rows(self, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """``[B, H, Q, K]``: the bias of every row's own positions ``q_rows`` ``[B, Q]``, ``k_rows`` ``[B, K]``
        (padded batches, randomized positions, a task's position ids). Translation-invariant encodings gather
        one per-distance table for all rows; others compute row by row (FIRE overrides it to build its table
        once). Rows that are not all sorted (:func:`rows_sorted`: ids that restart or repeat) get the bias at
        the distance ``|q_pos - k_pos|`` for every pair, so a key with a larger id than its query, though
        earlier in the row, is seen at that distance (sorted rows: the causal distance, as always)."""
        if self.translation_invariant:
            diff = q_rows[:, :, None] - k_rows[:, None, :]
            dist = diff.clamp(min=0) if rows_sorted(q_rows, k_rows) else diff.abs()
            per_distance = self.distance_bias(int(dist.max()) if dist.numel() else 0, q_rows.device)
            return per_distance[:, dist].transpose(0, 1)
        return torch.stack([self.compute_bias(q, k) for q, k in zip(q_rows, k_rows)])

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return self.bias(q_pos, k_pos)

    #: the bias depends on ``q_pos - k_pos`` only (ALiBi, Kerple, T5, Sandwich): FlexAttention then reads
    #: one per-distance table ``[H, D + 1]`` (:meth:`distance_bias`) instead of a materialized ``[H, Q, K]``
    translation_invariant: bool = False

    def flash_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> FlashBias | None:
        """This bias as small inputs (:class:`FlashBias`) for sorted positions, or None when it has no such form
        (the caller then materializes :meth:`compute_bias`). Translation-invariant encodings give their
        per-distance table (:meth:`distance_bias`)."""
        if not self.translation_invariant:
            return None
        span = position_span(q_pos, k_pos)
        return FlashBias(self.distance_bias(span, q_pos.device), span + 1)

    def distance_bias(self, max_distance: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[H, max_distance + 1]``: column ``d`` is the bias at causal distance ``q_pos - k_pos = d``
        (for translation-invariant encodings; one row of :meth:`compute_bias`, read backwards)."""
        pos = torch.arange(max_distance + 1, device=device)
        return self.compute_bias(pos[-1:], pos)[:, 0].flip(-1)

    def score_mod(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """A FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` adding this bias; ``q_idx`` and
        ``kv_idx`` index ``q_pos`` and ``k_pos``.

        What it captures is built for FlexAttention's backward: positions as tensors (never Python ints,
        which would recompile for every offset), every grad-requiring tensor 1-D or more and read once.
        Translation-invariant encodings read a per-distance table (:meth:`distance_bias`); the others a
        materialized ``[H, Q, K]`` bias. Encodings override it to compute the bias from a few small
        tensors (ALiBi, FIRE)."""
        if self.translation_invariant:
            per_distance = self.distance_bias(position_span(q_pos, k_pos), q_pos.device)

            def mod(score, b, h, q_idx, kv_idx):
                return score + per_distance[h, (q_pos[q_idx] - k_pos[kv_idx]).clamp(min=0)]

            return mod
        table = self.compute_bias(q_pos, k_pos)
        if table is None:
            return None

        def materialized(score, b, h, q_idx, kv_idx):
            return score + table[h, q_idx, kv_idx]

        return materialized

    @staticmethod
    def distance(q_pos: torch.Tensor, k_pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``q_pos[:, None] - k_pos[None, :]`` as ``dtype`` (``[Q, K]``; negative where masked)."""
        return (q_pos[:, None] - k_pos[None, :]).to(dtype)


class RotaryEncoding(PositionEncoding):
    """Rotary encodings: :meth:`angles` gives ``cos, sin`` of shape ``[T, head_dim]`` (HF layout:
    the ``head_dim/2`` frequencies repeated twice, used with ``rotate_half``)."""

    kind = "rotary"

    def angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin`` ``[len(pos), head_dim]`` for 0-based integer positions (any integer dtype)."""
        check_positions(pos, names=("pos",))
        return self.compute_angles(pos.long())

    def compute_angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.angles(pos)


class DataBiasEncoding(PositionEncoding):
    """A bias read from the data: :meth:`log_forget` maps the attention layer's input ``x``
    ``[B, T, H * head_dim]`` to per-token increments ``[B, H, T]`` (float32, ``<= 0`` for a forget
    gate); with ``c = cumsum(log_forget(x), -1)`` the logit of query ``i`` and key ``j <= i`` gets
    ``c_i - c_j``. Positions play no part: randomized positions change nothing for these encodings.
    """

    kind = "data"

    def log_forget(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias_for(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, T]``: ``c_i - c_j`` where ``j <= i`` and 0 above the diagonal, for ``x`` ``[B, T, d]``
        (the input of one attention layer; ``plot-bias`` shows it for a given text)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.num_heads * self.head_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.name or type(self).__name__} reads hidden states [batch, tokens, "
                             f"{self.num_heads * self.head_dim}], got {shape}.")
        c = self.log_forget(x).cumsum(-1)
        t = x.shape[1]
        below = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        return torch.where(below, c[..., :, None] - c[..., None, :], c.new_zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias_for(x)
