"""FIRE: Functional Interpolation for Relative Positional Encoding (Li et al., ICLR 2024).

Eq. (4) / (23) of the paper, for query position ``i`` and key position ``j`` (0-based, ``j <= i``)::

    b(i, j) = f_theta( psi(i - j) / (psi(max(L, i)) + eps) ),   psi(x) = log(|c| x + 1)

``f_theta: R -> R^H`` is a tiny MLP (one output per head), ``c`` and the threshold ``L`` are learned.
``L`` is learned as a multiplier of its initial value, ``L = |L_multiplier * init_L|``, exactly as
the paper's Appendix E module; parameter names match that module so its state dicts load
(see :func:`load_appendix_e`).

Ablations of Appendix B are options: ``log_transform=False`` gives ``psi(x) = x`` (Eq. 21),
``threshold=False`` normalizes by ``psi(i)`` (Eq. 21-22), ``mlp_layers`` (0 = linear, 1, 2 hidden
layers), ``activation`` and ``final_activation``; ``layer_shared=True`` (or the registry name
``fire_s``) asks the model to share one FIRE module across all layers (FIRE-S, Sec. 4.6).

Shift invariance: for ``i <= L`` (threshold on) the bias depends on ``i - j`` only; past ``L``
(or always, with ``threshold=False``) it depends on ``i`` too -- that is progressive interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from . import fire_mlp, fire_table
from .base import BiasEncoding, FlashBias, causal_row_blocks, position_span, rows_sorted
from .registry import register


class Step(nn.Module):
    """Heaviside step ``1{x >= 0}`` (Theorem 3.1, T5 construction)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x >= 0).to(x.dtype)


class Cos(nn.Module):
    """``cos(x)`` (Theorem 3.1, Sandwich construction)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)


class Power(nn.Module):
    """``max(x, 0) ** exponent`` with one exponent per neuron (Theorem 3.1, Kerple-power construction)."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("exponent", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0).pow(self.exponent.to(x.dtype))


ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda width: nn.ReLU(),
    "gelu": lambda width: nn.GELU(),
    "identity": lambda width: nn.Identity(),
    "step": lambda width: Step(),
    "cos": lambda width: Cos(),
    "power": Power,
}


def build_mlp(num_heads: int, width: int, layers: int, activation: str, final_activation: bool) -> nn.Sequential:
    """``Linear(1, w), act, [Linear(w, w), act] * (layers - 1), Linear(w, H)``; ``layers = 0`` is
    ``Linear(1, H)``. With ``final_activation`` the output also goes through ``act`` (Appendix B.4)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown FIRE activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}.")
    make = ACTIVATIONS[activation]
    mods: list[nn.Module] = []
    fan_in = 1
    for _ in range(layers):
        mods += [nn.Linear(fan_in, width), make(width)]
        fan_in = width
    mods.append(nn.Linear(fan_in, num_heads))
    if final_activation:
        mods.append(make(num_heads))
    return nn.Sequential(*mods)


@register("fire")
class FIRE(BiasEncoding):
    """FIRE bias ``[H, Q, K]``.

    Args:
        num_heads: heads ``H`` (MLP outputs).
        head_dim: unused by the bias; accepted for the common interface.
        mlp_width: hidden width (paper: 32).
        mlp_layers: hidden layers (0 = linear map, paper default 2).
        activation: ``relu`` (paper), ``gelu``; ``identity``, ``step``, ``cos``, ``power`` serve the
            Theorem 3.1 constructions.
        final_activation: apply the activation to the MLP output too (Appendix B.4).
        log_transform: ``psi(x) = log(|c| x + 1)`` if true, else ``psi(x) = x``.
        threshold: normalize by ``psi(max(L, i))`` if true, else by ``psi(i)``.
        init_c: initial ``c`` (0.1). init_L: initial threshold (512).
        learn_threshold: learn ``L`` (through ``L_multiplier``) or keep it fixed.
        eps: added to the normalizer (Appendix E: 1e-6).
        layer_shared: one module for all layers of a model (FIRE-S).
        bias_mode: how the ``[H, Q, K]`` bias is computed (same function, same gradients to the MLP,
            ``c`` and ``L``, also at the row ``i = L`` where the subgradient of ``max(L, i)`` is split
            half-half between ``L`` and ``i`` as ``torch.maximum`` does):

            * ``"table"`` (default, fast) -- rows ``i < L`` read a per-distance table of exact MLP
              values; rows ``i >= L`` read a per-head table of ``f`` on ``table_size`` uniform
              points of [0, 1] (for ReLU MLPs computed piece by piece, :mod:`.fire_mlp`), with linear
              interpolation (:mod:`.fire_table`). ReLU MLPs are piecewise linear, so only grid cells holding a kink
              differ from the exact value (max error measured in docs/backends.md, about 3e-5 at the
              default ``table_size``).
            * ``"exact"`` -- rows ``i < L`` as ``table`` (bit-identical to the reference); rows
              ``i >= L`` run the MLP per pair.
            * ``"reference"`` -- the MLP on every (i, j) pair, as Appendix E: an ``[Q, K, width]``
              hidden tensor.

            ``exact`` and ``reference`` are for bit-level parity; every attention backend (also
            FlexAttention's ``score_mod``) computes the bias of the chosen mode.
        table_size: grid points of the interpolation table.
    """

    def __init__(self, num_heads: int, head_dim: int = 64, mlp_width: int = 32, mlp_layers: int = 2,
                 activation: str = "relu", final_activation: bool = False, log_transform: bool = True,
                 threshold: bool = True, init_c: float = 0.1, init_L: float = 512.0,
                 learn_threshold: bool = True, eps: float = 1e-6, layer_shared: bool = False,
                 bias_mode: str = "table", table_size: int = 16384):
        super().__init__(num_heads, head_dim)
        if bias_mode not in ("table", "exact", "reference"):
            raise ValueError(f"bias_mode must be 'table', 'exact' or 'reference', got {bias_mode!r}.")
        if not isinstance(table_size, int) or table_size < 2:
            raise ValueError(f"table_size must be an integer >= 2, got {table_size!r}.")
        self.bias_mode, self.table_size = bias_mode, table_size
        if not isinstance(mlp_width, int) or isinstance(mlp_width, bool) or mlp_width <= 0:
            raise ValueError(f"mlp_width must be a positive integer, got {mlp_width!r}.")
        if not isinstance(mlp_layers, int) or isinstance(mlp_layers, bool) or mlp_layers < 0:
            raise ValueError(f"mlp_layers must be an integer >= 0 (0 = linear), got {mlp_layers!r}.")
        for name, v in (("init_c", init_c), ("init_L", init_L)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number, got {v!r}.")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}.")
        self.mlp_width, self.mlp_layers, self.activation = mlp_width, mlp_layers, activation
        self.log_transform, self.threshold, self.eps = log_transform, threshold, float(eps)
        self.layer_shared = layer_shared
        self.mlp = build_mlp(num_heads, mlp_width, mlp_layers, activation, final_activation)
        self.c = nn.Parameter(torch.tensor(float(init_c))) if log_transform else None
        self.register_buffer("init_L", torch.tensor(float(init_L)))
        if threshold:
            multiplier = torch.tensor(1.0)
            if learn_threshold:
                self.L_multiplier = nn.Parameter(multiplier)
            else:
                self.register_buffer("L_multiplier", multiplier)

    @classmethod
    def training_defaults(cls, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
        """``init_L = seq_len / 4`` unless given (or ``threshold=False``): the paper's ratio, 512 for 2048
        (the constructor's default stays 512); ``bias_mode="table"``, recorded explicitly in saved configs."""
        out: dict[str, Any] = {}
        if "init_L" not in options and options.get("threshold", True):
            out["init_L"] = seq_len / 4
        out["bias_mode"] = "table"
        return out

    @property
    def L(self) -> torch.Tensor | None:
        """Effective threshold ``|L_multiplier * init_L|`` (None without thresholding)."""
        return (self.L_multiplier * self.init_L).abs() if self.threshold else None

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.c.abs() * x + 1) if self.log_transform else x

    def check_parameters(self) -> None:
        for name, value in (("c", self.c), ("L", self.L)):
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"FIRE {name} is not finite ({value.detach().cpu().tolist()}); "
                                 "the checkpoint is corrupt or training diverged.")

    def normalizer(self, q_pos: torch.Tensor) -> torch.Tensor:
        """``psi(max(L, i)) + eps`` per query, shape ``[Q]``."""
        qf = q_pos.to(torch.promote_types(self.init_L.dtype, torch.float32))  # bf16 loses integers above 256
        if self.threshold:
            qf = torch.maximum(qf, self.L)
        return self.psi(qf) + self.eps

    def normalized_distance(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """MLP input ``psi(|i - j|) / (psi(max(L, i)) + eps)``, shape ``[Q, K]`` (in [0, 1] when causal)."""
        dist = self.distance(q_pos, k_pos, self.init_L.dtype).abs()
        return self.psi(dist) / self.normalizer(q_pos)[:, None]

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP on a tensor of normalized distances ``[...]`` -> ``[..., H]``."""
        return self.mlp(x.unsqueeze(-1))

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        if self.bias_mode == "reference":
            return self.f(self.normalized_distance(q_pos, k_pos)).permute(2, 0, 1)
        if self.bias_mode == "table":
            return self._table_bias(q_pos, k_pos)
        return self._exact_bias(q_pos, (q_pos[:, None] - k_pos[None, :]).clamp(min=0))  # k > q: masked anyway

    def _exact_bias(self, q_pos: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """``exact`` mode's ``[H, Q, K]`` at the distances ``dist`` ``[Q, K]`` (>= 0) of queries ``q_pos``."""
        max_d = int(dist.max()) if dist.numel() else 0
        if not self.threshold:
            out = torch.empty(self.num_heads, *dist.shape, dtype=self.init_L.dtype, device=dist.device)
        else:
            out = self.distance_table(max_d)[:, dist]
        idx = torch.nonzero(self.interpolating_rows(q_pos)).flatten()
        if idx.numel() == 0:
            return out
        exact = self.f(self.psi(dist[idx].to(self.init_L.dtype)) / self.normalizer(q_pos[idx])[:, None])
        return out.index_copy(1, idx, exact.permute(2, 0, 1).to(out.dtype))

    def compute_bias_rows(self, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """``[B, H, Q, K]`` per-row bias; table mode builds its lookup table once for all rows. Rows that are not
        all sorted (a task's position ids) get :meth:`absolute_bias_rows`."""
        if not rows_sorted(q_rows, k_rows):
            return self.absolute_bias_rows(q_rows, k_rows)
        if self.bias_mode != "table":
            return super().compute_bias_rows(q_rows, k_rows)
        dtype = self.init_L.dtype
        if q_rows.shape[1] * k_rows.shape[1] <= self.ROWS_AT_ONCE:
            return self._table_bias_rows(q_rows, k_rows)
        if not fire_table.use_kernel(dtype, self.init_L.device):
            return torch.stack([self._table_bias(q, k) for q, k in zip(q_rows, k_rows)])
        max_d = max((position_span(q, k) for q, k in zip(q_rows, k_rows)), default=0)
        psi_d = self.psi(torch.arange(max_d + 1, dtype=dtype))
        table, base = self.lookup_table(max_d)  # once for all rows, not once per row
        return torch.stack([fire_table.kernel_bias(table, base, self.table_size, psi_d, 1 / self.normalizer(q), q, k,
                                                   self.interpolating_rows(q)) for q, k in zip(q_rows, k_rows)])

    #: rows of at most this many query-key pairs take :meth:`_table_bias_rows` (one lookup for the whole batch:
    #: a call per row costs more than its arithmetic there, 3x the step time of sequences of 29 tokens)
    ROWS_AT_ONCE = 1 << 14

    def _table_bias_rows(self, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """``[B, H, Q, K]`` table-mode bias of sorted rows in one PyTorch lookup (any value where
        ``k_pos > q_pos``: masked by every caller)."""
        B, Q = q_rows.shape
        K = k_rows.shape[1]
        dtype = torch.promote_types(self.init_L.dtype, torch.float32)
        dist = (q_rows[:, :, None] - k_rows[:, None, :]).clamp(min=0).reshape(B * Q, K)
        q_flat = q_rows.reshape(-1)
        x = self.psi(dist.to(dtype)) / self.normalizer(q_flat)[:, None]
        table, base = self.lookup_table(int(dist.max()) if dist.numel() else 0)
        long_rows = self.interpolating_rows(q_flat)[:, None] if self.threshold else None
        out = fire_table.lerp_bias(table, base, self.table_size, x, dist, long_rows, [(0, B * Q, K)])
        return out.view(-1, B, Q, K).transpose(0, 1)

    def absolute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``[H, Q, K]`` at the distance ``|i - j|`` of every pair (``i = q_pos``, ``j = k_pos``, any order),
        normalized by the query's ``psi(max(L, i))``: Eq. 4 with ``|i - j|`` for ``i - j``, for position ids
        that are not sorted (an earlier key may have a larger id). Equal to :meth:`compute_bias` wherever
        ``j <= i``. The normalized distance exceeds 1 where ``|i - j| > max(L, i)`` (a key past ``2i``):
        ``exact`` and ``reference`` evaluate the MLP there, ``table`` reads ``f(1)`` (it clamps to [0, 1], as
        it always does). PyTorch ops (not the fused kernel, which computes causal distances only)."""
        return self.absolute_bias_rows(q_pos[None], k_pos[None])[0]

    def absolute_bias_rows(self, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        """:meth:`absolute_bias` of every row, ``[B, H, Q, K]`` (table mode: one lookup table for all rows)."""
        dist = (q_rows[:, :, None] - k_rows[:, None, :]).abs()
        if self.bias_mode == "reference":  # normalized_distance already takes |i - j|
            return torch.stack([self.f(self.normalized_distance(q, k)).permute(2, 0, 1)
                                for q, k in zip(q_rows, k_rows)])
        if self.bias_mode == "exact":
            return torch.stack([self._exact_bias(q, d) for q, d in zip(q_rows, dist)])
        B, n_q, n_k = dist.shape
        dtype = torch.promote_types(self.init_L.dtype, torch.float32)
        q = q_rows.reshape(-1)
        x = self.psi(dist.reshape(-1, n_k).to(dtype)) / self.normalizer(q)[:, None]
        table, base = self.lookup_table(int(dist.max()) if dist.numel() else 0)
        long_rows = self.interpolating_rows(q)[:, None] if self.threshold else None
        blocks = [(s, min(s + 256, B * n_q), n_k) for s in range(0, B * n_q, 256)]  # every key: none is skipped
        out = fire_table.lerp_bias(table, base, self.table_size, x, dist.reshape(-1, n_k), long_rows, blocks)
        return out.view(-1, B, n_q, n_k).transpose(0, 1)

    def _table_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``[H, Q, K]`` table-mode bias for int64 positions (0 or any value where ``k_pos > q_pos``)."""
        dtype, g = self.init_L.dtype, self.table_size
        if fire_table.use_kernel(dtype, self.init_L.device):  # float32 on the CPU: flash_bias's small inputs
            b = self.flash_bias(q_pos, k_pos)
            return fire_table.kernel_bias(b.table, b.base, g, b.psi, b.inv_norm, q_pos, k_pos, b.long_row)
        # coordinates in float32 at least: in bf16, g - 2 = 16382 rounds to 16384 (an index past the table)
        dtype = torch.promote_types(dtype, torch.float32)
        dist = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)
        x = self.psi(dist.to(dtype)) / self.normalizer(q_pos)[:, None]
        table, base = self.lookup_table(int(dist.max()) if dist.numel() else 0)
        long_rows = self.interpolating_rows(q_pos)[:, None] if self.threshold else None
        return fire_table.lerp_bias(table, base, g, x, dist, long_rows, causal_row_blocks(q_pos, k_pos, 256))

    def flash_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> FlashBias | None:
        """Table mode's bias as small inputs (:class:`~.base.FlashBias`): the lookup table
        ``[distance table | interpolation table]``, ``psi(d)``, ``1 / (psi(max(L, i)) + eps)`` and the rows that
        interpolate -- what :meth:`_table_bias` hands the lookup kernel. None in ``exact`` and ``reference`` mode
        (they evaluate the MLP per pair) and for dtypes other than float32."""
        if self.bias_mode != "table" or self.init_L.dtype != torch.float32:
            return None
        span = position_span(q_pos, k_pos)
        psi_d = self.psi(torch.arange(span + 1, dtype=self.init_L.dtype, device=q_pos.device))
        inv_norm = 1 / self.normalizer(q_pos)
        table, base = self.lookup_table(span)  # after psi_d, inv_norm: keeps autograd's summation order
        return FlashBias(table, base, self.table_size, psi_d, inv_norm, self.interpolating_rows(q_pos))

    def distance_table(self, max_distance: int) -> torch.Tensor:
        """``[H, max_distance + 1]``: the bias of rows ``i <= L`` at distance ``d = 0..max_distance``."""
        grid = torch.arange(max_distance + 1, device=self.init_L.device, dtype=self.init_L.dtype)
        norm = self.psi(self.L) + self.eps
        return self.f(self.psi(grid) / norm).T

    def interpolation_table(self) -> torch.Tensor:
        """``[H, table_size]``: ``f`` on ``table_size`` uniform points of [0, 1] (:func:`.fire_mlp.grid_values`;
        cached without autograd: :class:`.fire_table.TableCache`)."""
        device, dtype = self.init_L.device, self.init_L.dtype

        def build() -> torch.Tensor:
            grid = torch.linspace(0, 1, self.table_size, device=device, dtype=dtype)
            return fire_mlp.grid_values(self.mlp, grid, fallback=lambda x: self.f(x).T)

        cache = self.__dict__.setdefault("_table_cache", fire_table.TableCache())
        return cache.get([*self.mlp.parameters(), *self.mlp.buffers()], (self.table_size, device, dtype), build)

    def interpolating_rows(self, q_pos: torch.Tensor) -> torch.Tensor:
        """Bool ``[Q]``: rows ``i >= L`` (every row without a threshold), normalized per row by
        ``psi(max(L, i))``; rows ``i < L`` depend on ``i - j`` only and read the distance table.

        The row ``i = L`` is included so that its normalizer is ``torch.maximum(i, L)``, whose
        subgradient is split half-half between ``L`` and ``i`` as in the reference (Appendix E)."""
        if not self.threshold:
            return torch.ones_like(q_pos, dtype=torch.bool)
        return q_pos.to(self.init_L.dtype) >= self.L

    def lookup_table(self, max_distance: int) -> tuple[torch.Tensor, int]:
        """``([distance table | interpolation table], base)``: the ``[H, M]`` table one lookup per (i, j) reads
        (:mod:`.fire_table`), and the column where the interpolation table starts (no distance table, base 0,
        without a threshold)."""
        if not self.threshold:
            return self.interpolation_table(), 0
        return torch.cat([self.distance_table(max_distance), self.interpolation_table()], dim=1), max_distance + 1

    def score_mod(self, q_pos: torch.Tensor, k_pos: torch.Tensor):
        """FlexAttention ``score_mod``. Table mode computes each score's bias from the lookup tables
        (:func:`.fire_table.lerp_score_mod`; positions must be contiguous ranges); ``exact`` and
        ``reference`` read their materialized ``[H, Q, K]`` bias, so every backend gives the bias of
        the chosen mode."""
        if self.bias_mode != "table":
            return super().score_mod(q_pos, k_pos)
        span = position_span(q_pos, k_pos)
        dtype = torch.promote_types(self.init_L.dtype, torch.float32)
        psi_d = self.psi(torch.arange(span + 1, device=q_pos.device, dtype=dtype))
        inv_norm = 1 / self.normalizer(q_pos)
        table, base = self.lookup_table(span)
        long_row = self.interpolating_rows(q_pos).detach() if self.threshold else None
        return fire_table.lerp_score_mod(table, base, self.table_size, psi_d, inv_norm, q_pos, k_pos, long_row)


@register("fire_s")
class FIREShared(FIRE):
    """FIRE-S: FIRE with one bias module shared by all layers (``layer_shared=True``)."""

    def __init__(self, num_heads: int, head_dim: int = 64, **options):
        options.setdefault("layer_shared", True)
        super().__init__(num_heads, head_dim, **options)


class FIREHeads(BiasEncoding):
    """Single-head FIRE modules stacked along the head axis: head ``h`` has its own ``c``, ``L`` and
    MLP. Used where Theorem 3.1 needs a per-head ``psi`` (Kerple-log with per-head ``r2``)."""

    name = "fire_heads"

    def __init__(self, heads: list[FIRE]):
        if not heads or any(h.num_heads != 1 for h in heads):
            raise ValueError("FIREHeads needs a non-empty list of single-head FIRE modules.")
        super().__init__(len(heads), heads[0].head_dim)
        self.heads = nn.ModuleList(heads)

    def check_parameters(self) -> None:
        for h in self.heads:
            h.check_parameters()

    def compute_bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.compute_bias(q_pos, k_pos) for h in self.heads], dim=0)

    def compute_bias_rows(self, q_rows: torch.Tensor, k_rows: torch.Tensor) -> torch.Tensor:
        if rows_sorted(q_rows, k_rows):
            return super().compute_bias_rows(q_rows, k_rows)
        return torch.cat([h.compute_bias_rows(q_rows, k_rows) for h in self.heads], dim=1)  # |i - j| per head


APPENDIX_E_KEYS = ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "c", "init_L", "L_multiplier")


def appendix_e_key_map(prefix: str = "") -> dict[str, str]:
    """Keys of the paper's Appendix E ``FIRE`` module (under ``prefix``) -> keys of :class:`FIRE`.

    The names coincide by design (``mlp`` is an ``nn.Sequential`` with the same indices, ``c``,
    ``init_L`` and ``L_multiplier`` keep their meaning); only the prefix is stripped.
    """
    return {prefix + k: k for k in APPENDIX_E_KEYS}


def load_appendix_e(state_dict: Mapping[str, torch.Tensor], prefix: str = "", eps: float = 1e-6,
                    bias_mode: str = "table") -> FIRE:
    """Build a :class:`FIRE` (one hidden layer, ReLU) holding the weights of an Appendix E state dict
    (``bias_mode="exact"`` reproduces the Appendix E module's values bit for bit at rows ``i <= L``)."""
    mapping = appendix_e_key_map(prefix)
    missing = [k for k in mapping if k not in state_dict]
    if missing:
        raise ValueError(f"not an Appendix E FIRE state dict: missing {', '.join(missing)}.")
    sd = {ours: state_dict[theirs] for theirs, ours in mapping.items()}
    width, num_heads = sd["mlp.0.weight"].shape[0], sd["mlp.2.weight"].shape[0]
    fire = FIRE(num_heads=num_heads, mlp_width=width, mlp_layers=1, init_L=float(sd["init_L"]), eps=eps,
                bias_mode=bias_mode)
    fire.load_state_dict(sd, strict=True)
    return fire
