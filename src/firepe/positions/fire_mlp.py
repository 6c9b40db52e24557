"""FIRE's MLP on an ascending grid as the piecewise-linear function it is (the interpolation table).

``f`` is ``Linear(1, w), ReLU, [Linear(w, w), ReLU] * (layers - 1), Linear(w, H)``: a piecewise-linear
function of its scalar input. The grid is cut into pieces on which every ReLU mask is constant; on a
piece the output is ``x alpha + beta`` with ``alpha, beta`` in ``R^H``. Layer by layer: on a piece the
pre-activation is ``z = x alpha + beta`` (the first layer: ``alpha = w1``, ``beta = b1``, one piece); each
neuron's mask ``z > 0`` is monotone along an ascending grid (``x alpha`` and ``+ beta`` round
monotonically), so it flips at most once inside a piece, where the piece is cut (a bisection per piece
and neuron, :func:`split`). With the mask ``m`` of a piece the next layer's coefficients are
``alpha' = W (m * alpha)``, ``beta' = W (m * beta) + b``. Only the final ``x alpha + beta`` runs per grid
point: ``pieces x w x w`` products instead of ``G x w x w`` (the paper's MLP, width 32, on 16,384 points:
a few hundred pieces), and nothing of size ``G x w`` in memory, forward or backward.

The masks are those of ``z`` rounded as PyTorch rounds ``x * alpha + beta``; the output differs from
running the layers on every point by float rounding only (re-associated sums, ~1e-7 relative; the
tests compare values and gradients with :meth:`FIRE.f`). Cutting runs in a small C function
(``csrc/fire_mlp.c``, built and cached like the table kernel), else in PyTorch ops over ``[G, w]``.
MLPs with another activation (or ``identity`` / ``final_activation`` other than ReLU) run :meth:`FIRE.f`.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from ..cbuild import enabled, load_library

__all__ = ["available", "grid_values", "split"]

_LIB: list = []


def _declare(lib) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.fire_mlp_split.argtypes = [p, i64, p, i64, p, p, i64, p, p, p, i64]
    lib.fire_mlp_split.restype = i64
    lib.fire_mlp_eval.argtypes = [p, i64, p, i64, p, p, i64, p]
    lib.fire_mlp_eval.restype = None
    lib.fire_mlp_eval_backward.argtypes = [p, i64, p, i64, p, i64, p, p]
    lib.fire_mlp_eval_backward.restype = None


def _load():
    if not _LIB:
        _LIB.append(load_library("fire_mlp.c", _declare, what="the FIRE MLP kernel") if enabled() else None)
    return _LIB[0]


def available() -> bool:
    """True when the compiled cutting function is loaded (compiling it now if needed)."""
    return _load() is not None


def _split_torch(x, starts, alpha, beta):
    piece = torch.bucketize(torch.arange(len(x), device=x.device), starts, right=True) - 1
    mask = (x[:, None] * alpha[piece] + beta[piece]) > 0
    cut = torch.cat([mask.new_ones(1), (mask[1:] != mask[:-1]).any(1) | (piece[1:] != piece[:-1])])
    first = torch.nonzero(cut).flatten()
    return first, piece[first], mask[first].to(x.dtype)


def split(x: torch.Tensor, starts: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
          use_kernel: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut the pieces of ``x`` ``[G]`` (ascending; piece ``p`` starts at ``starts[p]``, ``starts[0] = 0``)
    where a mask of ``z = x alpha[p] + beta[p] > 0`` (``alpha, beta`` ``[P, w]``) changes. Returns the new
    pieces' ``(starts [P'], parent piece [P'], masks [P', w])``."""
    x, starts, alpha, beta = (t.detach().contiguous() for t in (x, starts, alpha, beta))
    lib = _load() if use_kernel else None
    if lib is None or not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (x, alpha, beta)):
        return _split_torch(x, starts, alpha, beta)
    starts = starts.to(torch.int64).contiguous()
    P, w = alpha.shape
    cap = min(len(x), P * (w + 1))
    new = torch.empty(cap, dtype=torch.int64)
    parent = torch.empty(cap, dtype=torch.int64)
    masks = torch.empty(cap, w, dtype=torch.float32)
    n = lib.fire_mlp_split(x.data_ptr(), len(x), starts.data_ptr(), P, alpha.data_ptr(), beta.data_ptr(), w,
                           new.data_ptr(), parent.data_ptr(), masks.data_ptr(), cap)
    if n < 0:  # cannot happen (a piece splits into at most w + 1, and pieces are non-empty): be safe
        return _split_torch(x, starts, alpha, beta)
    return new[:n], parent[:n], masks[:n]


class _PieceEval(torch.autograd.Function):
    """``out [H, G] = x alpha[piece] + beta[piece]`` (pieces contiguous from ``starts``); gradients to
    ``alpha, beta`` ``[P, H]`` as per-piece sums (in C: no ``[G, H]`` gather or scatter)."""

    @staticmethod
    def forward(ctx, x, starts, alpha, beta):
        lib = _load()
        x, starts, alpha, beta = (t.contiguous() for t in (x, starts, alpha, beta))
        (P, H), G = alpha.shape, len(x)
        out = torch.empty(H, G, dtype=torch.float32)
        lib.fire_mlp_eval(x.data_ptr(), G, starts.data_ptr(), P, alpha.data_ptr(), beta.data_ptr(), H, out.data_ptr())
        ctx.save_for_backward(x, starts)
        ctx.shape = (P, H)
        return out

    @staticmethod
    def backward(ctx, grad):
        lib = _load()
        x, starts = ctx.saved_tensors
        grad = grad.to(torch.float32).contiguous()
        P, H = ctx.shape
        dalpha, dbeta = torch.empty(P, H), torch.empty(P, H)
        lib.fire_mlp_eval_backward(x.data_ptr(), len(x), starts.data_ptr(), P, grad.data_ptr(), H,
                                   dalpha.data_ptr(), dbeta.data_ptr())
        return None, None, dalpha, dbeta


def _relu_mlp(mlp: nn.Sequential) -> list[nn.Linear] | None:
    """The Linear layers of a ReLU MLP ``Linear, ReLU, Linear, ..., [ReLU]`` with at least one hidden layer
    (final activation none or ReLU); None for any other module."""
    mods = list(mlp)
    linears, acts = mods[0::2], mods[1::2]
    if len(linears) < 2 or not all(isinstance(m, nn.Linear) for m in linears):
        return None
    if not all(isinstance(m, nn.ReLU) for m in acts):
        return None
    return linears


def grid_values(mlp: nn.Sequential, x: torch.Tensor, use_kernel: bool = True, fallback=None) -> torch.Tensor:
    """``mlp(x)`` transposed, ``[H, G]``, on an ascending 1-D grid ``x`` ``[G]`` (the module docstring has the
    math); other MLPs and grids run ``fallback(x)`` (default ``mlp(x[:, None]).T``)."""
    linears = _relu_mlp(mlp)
    if linears is None or x.dim() != 1 or len(x) == 0 or not bool((x[1:] >= x[:-1]).all()):
        return fallback(x) if fallback is not None else mlp(x[:, None]).T
    first = linears[0]
    alpha, beta = first.weight.T, first.bias[None, :]  # [1, w]: one piece
    starts = torch.zeros(1, dtype=torch.int64, device=x.device)
    n_relu = len(mlp) // 2  # ReLUs: one per hidden layer, plus a final one
    for layer in range(n_relu):
        starts, parent, masks = split(x, starts, alpha, beta, use_kernel)
        alpha, beta = masks * alpha[parent], masks * beta[parent]
        if layer + 1 < len(linears):
            lin = linears[layer + 1]
            alpha, beta = alpha @ lin.weight.T, torch.addmm(lin.bias, beta, lin.weight.T)
    lib = _load() if use_kernel else None
    if lib is not None and x.device.type == "cpu" and all(t.dtype == torch.float32 for t in (x, alpha, beta)):
        return _PieceEval.apply(x, starts.to(torch.int64), alpha, beta)
    piece = torch.bucketize(torch.arange(len(x), device=x.device), starts.to(x.device), right=True) - 1
    return torch.addcmul(beta.index_select(0, piece), x[:, None], alpha.index_select(0, piece)).T
