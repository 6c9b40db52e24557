"""Theorem 3.1 as code: FIRE modules that reproduce T5, ALiBi, Kerple and Sandwich biases exactly.

Each function follows the constructive proof of Appendix A.2 and returns a FIRE bias module with
``bias(i, j) == target(i, j)`` for all ``0 <= j <= i <= max_len`` (0-based; this includes every
position of a ``max_len``-token window). Past ``max_len`` the threshold no longer normalizes by
``L = max_len`` and the two biases may differ -- that is where progressive interpolation starts.

Deviations from the proof, for exactness in floating point:
* T5: the step neurons fire at ``i - j - (s_k - 1/2) >= 0`` instead of ``i - j - s_k >= 0``; on
  integer distances this is the same function, but robust to rounding of ``L0 * (d / L0)``.
* Kerple-log: the target has a different ``r2`` per head and FIRE shares ``psi`` across heads, so
  the construction is one single-head FIRE per head (:class:`~firepe.positions.fire.FIREHeads`).
* ``eps = 0`` (the construction needs ``psi(L0)`` exactly as normalizer).
* ``bias_mode="exact"``: table mode would interpolate the row ``i = max_len`` (and every row past it).

Use float64 (``dtype=torch.float64``) when exactness to 1e-5 matters at large ``max_len``;
float32 rounding of ``-r * (i - j)`` at ``i - j ~ 4096`` is about 1e-4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .alibi import ALiBi
from .base import BiasEncoding
from .fire import FIRE, FIREHeads
from .kerple import KerpleLog, KerplePower
from .sandwich import Sandwich
from .t5 import T5Bias, t5_bucket

__all__ = ["from_alibi", "from_buckets", "from_t5", "from_kerple_log", "from_kerple_power",
           "from_sandwich", "to_fire"]


def _check_max_len(max_len: int) -> None:
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}.")


def _fire(num_heads: int, max_len: int, dtype: torch.dtype, **opts) -> FIRE:
    opts.setdefault("log_transform", False)
    # exact: the constructions hold up to and including the row i = max_len = L, which table mode interpolates
    fire = FIRE(num_heads=num_heads, init_L=float(max_len), learn_threshold=False, eps=0.0, bias_mode="exact",
                **opts)
    return fire.to(dtype)


def from_alibi(slopes: ALiBi | Sequence[float] | torch.Tensor, max_len: int,
               dtype: torch.dtype = torch.float32) -> FIRE:
    """ALiBi ``-r_h (i - j)``: identity psi, ``L = max_len``, linear ``f(x) = -r_h L x`` (Eq. 13)."""
    _check_max_len(max_len)
    r = torch.as_tensor(slopes.slopes if isinstance(slopes, ALiBi) else slopes, dtype=torch.float64)
    fire = _fire(len(r), max_len, dtype, mlp_layers=0, activation="identity")
    with torch.no_grad():
        fire.mlp[0].weight.copy_((-r * max_len)[:, None])
        fire.mlp[0].bias.zero_()
    return fire


def from_buckets(boundaries: Sequence[int], values: torch.Tensor, max_len: int,
                 dtype: torch.dtype = torch.float32) -> FIRE:
    """General T5 bias (Eq. 5): ``values[h, k]`` for ``s_k <= i - j < s_{k+1}``, ``boundaries = [s_1..s_K]``.

    One step neuron per boundary (Eq. 8): weights ``L``, biases ``-(s_k - 1/2)``, output weights
    ``r_k - r_{k-1}`` and output bias ``r_0``.
    """
    _check_max_len(max_len)
    values = torch.as_tensor(values, dtype=torch.float64)
    s = torch.as_tensor(list(boundaries), dtype=torch.float64)
    if values.dim() != 2 or values.shape[1] != len(s) + 1:
        raise ValueError(f"values must have shape [heads, {len(s) + 1}] for {len(s)} boundaries, "
                         f"got {tuple(values.shape)}.")
    if len(s) and (s[0] <= 0 or (s[1:] <= s[:-1]).any()):
        raise ValueError(f"boundaries must be strictly increasing positive integers, got {list(boundaries)}.")
    heads = values.shape[0]
    if len(s) == 0:  # a constant bias: linear f with zero weight
        fire = _fire(heads, max_len, dtype, mlp_layers=0, activation="identity")
        with torch.no_grad():
            fire.mlp[0].weight.zero_()
            fire.mlp[0].bias.copy_(values[:, 0])
        return fire
    fire = _fire(heads, max_len, dtype, mlp_layers=1, mlp_width=len(s), activation="step")
    with torch.no_grad():
        fire.mlp[0].weight.fill_(float(max_len))
        fire.mlp[0].bias.copy_(-(s - 0.5))
        fire.mlp[2].weight.copy_(values[:, 1:] - values[:, :-1])
        fire.mlp[2].bias.copy_(values[:, 0])
    return fire


def from_t5(t5: T5Bias, max_len: int, dtype: torch.dtype = torch.float32) -> FIRE:
    """T5's bucketed bias (Eq. 6) on distances ``0..max_len``, via :func:`from_buckets`."""
    _check_max_len(max_len)
    buckets = t5_bucket(torch.arange(max_len + 1), t5.num_buckets, t5.max_distance)
    change = torch.nonzero(buckets[1:] != buckets[:-1]).flatten() + 1
    seen = torch.cat([buckets[:1], buckets[change]])
    values = t5.relative_attention_bias.weight.detach().to(torch.float64)[seen].T  # [H, segments]
    return from_buckets(change.tolist(), values, max_len, dtype)


def from_kerple_log(kerple: KerpleLog, max_len: int, dtype: torch.dtype = torch.float32) -> FIREHeads:
    """Kerple-log ``-r1 log(1 + r2 (i - j))``: per head, ``psi(x) = log(r2 x + 1)`` (``c = r2``),
    ``L = max_len`` and linear ``f(x) = -r1 log(1 + r2 L) x`` (Eq. 14)."""
    _check_max_len(max_len)
    r1, r2 = kerple.r1.detach().double(), kerple.r2.detach().double()
    heads = []
    for a, b in zip(r1.tolist(), r2.tolist()):
        fire = _fire(1, max_len, dtype, mlp_layers=0, activation="identity", log_transform=True, init_c=b)
        with torch.no_grad():
            fire.mlp[0].weight.fill_(-a * torch.log1p(torch.tensor(b * max_len, dtype=torch.float64)).item())
            fire.mlp[0].bias.zero_()
        heads.append(fire)
    return FIREHeads(heads)


def from_kerple_power(kerple: KerplePower, max_len: int, dtype: torch.dtype = torch.float32) -> FIRE:
    """Kerple-power ``-r1 (i - j)^r2``: identity psi, ``L = max_len``, one power neuron per head,
    ``f(x) = -(r1^(1/r2) L x)^r2`` (Eq. 15)."""
    _check_max_len(max_len)
    r1, r2 = kerple.r1.detach().double(), kerple.r2.detach().double()
    heads = len(r1)
    fire = _fire(heads, max_len, dtype, mlp_layers=1, mlp_width=heads, activation="power")
    with torch.no_grad():
        fire.mlp[0].weight.copy_((r1 ** (1 / r2) * max_len)[:, None])
        fire.mlp[0].bias.zero_()
        fire.mlp[1].exponent.copy_(r2)
        fire.mlp[2].weight.copy_(-torch.eye(heads, dtype=torch.float64))
        fire.mlp[2].bias.zero_()
    return fire


def from_sandwich(sandwich: Sandwich, max_len: int, dtype: torch.dtype = torch.float32) -> FIRE:
    """Sandwich ``r1_h (sum_k cos((i - j) w_k) - d')``: identity psi, ``L = max_len``, ``d'`` cosine
    neurons with weights ``L w_k``, output weights ``r1_h`` and output bias ``-r1_h d'`` (Eq. 17-20)."""
    _check_max_len(max_len)
    w = sandwich.frequencies(torch.float64)
    scales = sandwich.scales.double()
    fire = _fire(len(scales), max_len, dtype, mlp_layers=1, mlp_width=sandwich.num_terms, activation="cos")
    with torch.no_grad():
        fire.mlp[0].weight.copy_((w * max_len)[:, None])
        fire.mlp[0].bias.zero_()
        fire.mlp[2].weight.copy_(scales[:, None].expand(-1, sandwich.num_terms))
        fire.mlp[2].bias.copy_(-scales * sandwich.num_terms)
    return fire


_CONVERTERS = {ALiBi: from_alibi, T5Bias: from_t5, KerpleLog: from_kerple_log,
               KerplePower: from_kerple_power, Sandwich: from_sandwich}


def to_fire(module: BiasEncoding, max_len: int, dtype: torch.dtype = torch.float32) -> FIRE | FIREHeads:
    """Dispatch to the construction for ``module``'s type (ALiBi, T5, Kerple-log/-power, Sandwich)."""
    for klass, fn in _CONVERTERS.items():
        if isinstance(module, klass):
            return fn(module, max_len, dtype)
    names = ", ".join(k.name for k in _CONVERTERS)
    raise ValueError(f"no Theorem 3.1 construction for {type(module).__name__}; supported: {names}.")
