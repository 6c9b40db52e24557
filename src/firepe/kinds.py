"""What an encoding contributes to attention, as objects: one :class:`Kind` per ``PositionEncoding.kind``.

An encoding names its kind (``"none"``, ``"bias"``, ``"rotary"``, ``"data"``, ``"context"``); :func:`kind_of`
maps it to the object that knows what attention needs from it, and the model, the benchmarks and the
command line call that object -- none of them compares kind names:

* :meth:`Kind.angles` -- per-forward inputs shared by every layer (rotary: ``cos, sin`` of the keys' positions).
* :meth:`Kind.attend` -- one layer's attention ``[B, H, T, D]`` from its ``q, k, v`` ``[B, H, T, D]`` and input
  ``x`` ``[B, T, H * D]``, with the KV-cache rule (queries at the end of the keys) and padded rows: a bias
  (``compute_bias``/``score_mod``) through the backend :func:`firepe.attention.attend_backend` picks, a
  rotation of ``q, k``, FoX's per-token ``c_q - c_k`` (its ``log f`` carried in the cache), CoPE's dense path.
* :meth:`Kind.check_backend` -- the backends it runs on (CoPE needs every logit: not ``chunked``/``flex``).
* :meth:`Kind.input_bias` -- what it adds to the logits for a given input (``plot-bias --text``), for the
  kinds whose bias depends on the input (``reads_input``); ``draws_position_bias`` for biases of positions.
* :meth:`Kind.bench` -- one layer's attention call for ``bench-speed``.

A new kind is a subclass here and an entry in :data:`KINDS`. :func:`check_model` (every :class:`GPTConfig`,
registered with :data:`firepe.config.MODEL_CHECKS` when this module is imported, as ``import firepe`` does)
builds the encoding once and checks its backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import config, positions
from .attention import (
    AttentionInputs,
    RowPositions,
    attend_backend,
    attend_context,
    attend_data,
    attend_rows,
    causal_mask,
    masked_logits,
    rows_allowed,
)
from .positions.base import PositionEncoding
from .positions.rope import apply_rotary_one

__all__ = ["Kind", "KINDS", "kind_of", "check_model", "check_backend", "attend"]


class Kind:
    """The ``"none"`` kind (NoPE): plain causal attention; the base of the others."""

    name = "none"
    backends: tuple[str, ...] = config.BACKENDS
    reads_input = False           # its bias depends on the input (plot-bias --text)
    needs_layer_input = False     # it reads each key's layer input x (FoX's gates), kept beside the KV cache
    draws_position_bias = False   # it adds a bias of positions alone (plot-bias draws it)

    def check_backend(self, position: str, backend: str) -> None:
        """ValueError when the encoding ``position`` cannot run on ``backend``."""
        if backend not in config.BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(config.BACKENDS)}.")

    def angles(self, enc, k_pos: torch.Tensor, rows, batch: int, keys: int):
        """Per-forward inputs every layer shares (None: nothing)."""
        return None

    def bias_module(self, enc):
        """The module whose ``compute_bias``/``score_mod`` the backends read (None: no bias)."""
        return None

    def attend(self, enc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor,
               inputs: AttentionInputs, layer: int, cache) -> torch.Tensor:
        """The model's layer: ``q, k, v`` of the new tokens (``x`` their layer input), then ``cache.update``."""
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return self.attend_keys(enc, q, k, v, inputs)

    def attend_keys(self, enc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs,
                    log_forget: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over every key at once (:func:`attend`): ``k, v`` ``[B, H, K, D]`` unrotated, the queries
        the last ``Q`` of them; ``log_forget`` ``[B, H, K]`` for the data kind."""
        bias = self.bias_module(enc)
        if inputs.rows is not None:
            return attend_rows(q, k, v, bias, inputs.rows, inputs.biases)
        return attend_backend(inputs.backend, q, k, v, bias, inputs.q_pos, inputs.k_pos, inputs.same_positions,
                              inputs.block, bias_cache=inputs.biases)

    def input_bias(self, enc, q: torch.Tensor, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{enc.name!r} has no data-dependent bias; its bias depends on positions only.")

    def bench(self, enc, q, k, v, layer_input: Callable[[], torch.Tensor], pos, backend: str,
              block: int) -> Callable[[], torch.Tensor]:
        """One layer's attention for ``bench-speed`` (every call computes what a layer computes);
        ``layer_input()`` makes a random layer input ``[B, T, H * D]`` for the kinds that read one."""
        return lambda: attend_backend(backend, q, k, v, self.bias_module(enc), pos, pos, True, block)


class BiasKind(Kind):
    """An additive bias of positions (ALiBi, Kerple, T5, Sandwich, FIRE): Eq. 1's ``B[i, j]``."""

    name = "bias"
    draws_position_bias = True

    def bias_module(self, enc):
        return enc


class RotaryKind(Kind):
    """``q, k`` rotated by angles of their positions (RoPE and its variants), then plain attention."""

    name = "rotary"

    def angles(self, enc, k_pos, rows, batch, keys):
        if rows is None:
            return enc.compute_angles(k_pos)
        cos, sin = enc.compute_angles(rows.k.reshape(-1))
        return cos.view(batch, 1, keys, -1), sin.view(batch, 1, keys, -1)

    def _rotate(self, enc, q, k, angles):
        if angles is None:
            raise ValueError(f"{type(enc).__name__} is a rotary encoding but AttentionInputs.angles is None.")
        t = q.shape[2]
        cos, sin = angles[0][..., -t:, :], angles[1][..., -t:, :]
        return apply_rotary_one(q, cos, sin), apply_rotary_one(k, cos, sin)

    def attend(self, enc, q, k, v, x, inputs, layer, cache):
        q, k = self._rotate(enc, q, k, inputs.angles)  # the new tokens: the cache keeps rotated keys
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return Kind.attend_keys(self, enc, q, k, v, inputs)

    def attend_keys(self, enc, q, k, v, inputs, log_forget=None):
        cos, sin = inputs.angles if inputs.angles is not None else self.angles(enc, inputs.k_pos, None, 1, 1)
        t = q.shape[2]
        q = apply_rotary_one(q, cos[..., -t:, :], sin[..., -t:, :])
        return super().attend_keys(enc, q, apply_rotary_one(k, cos, sin), v, inputs)

    def bench(self, enc, q, k, v, layer_input, pos, backend, block):
        def run():
            qq, kk = self._rotate(enc, q, k, enc.compute_angles(pos))
            return attend_backend(backend, qq, kk, v, None, pos, pos, True, block)

        return run


class DataKind(Kind):
    """A bias from the input (FoX): ``log f = enc.log_forget(x)`` ``[B, H, T]``, ``c = cumsum(log f)`` over every
    key, logits ``+ c_q - c_k``. Padding tokens get ``log f = 0``, so a padded row sees the bias it would have
    alone. A cache keeps each key's ``log f`` as two extra channels of the cached key (its value in the key's
    dtype and the remainder: exact in float32, about 16 bits in bfloat16), so any cache with ``update(layer, k,
    v)`` -- transformers' included -- carries it; ``c`` is summed again over all keys each call, as the full
    forward does."""

    name = "data"
    reads_input = True
    needs_layer_input = True

    def attend(self, enc, q, k, v, x, inputs, layer, cache):
        t = x.shape[1]
        log_f = enc.log_forget(x)
        if inputs.rows is not None:
            log_f = log_f.masked_fill(~inputs.rows.valid[:, None, -t:], 0.0)
        if cache is not None:
            hi = log_f.to(k.dtype)
            lo = (log_f - hi.float()).to(k.dtype)
            k, v = cache.update(layer, torch.cat([k, hi[..., None], lo[..., None]], dim=-1), v)
            log_f = k[..., -2].float() + k[..., -1].float()
            k = k[..., :-2]
        return self.attend_keys(enc, q, k, v, inputs, log_f)

    def attend_keys(self, enc, q, k, v, inputs, log_forget=None):
        if log_forget is None:
            raise ValueError(f"{enc.name!r} reads the layer input: pass x (every key's) or log_forget [B, H, K].")
        if inputs.rows is not None:
            log_forget = log_forget.masked_fill(~inputs.rows.valid[:, None, :], 0.0)
        c = log_forget.cumsum(-1)
        cq = c[..., c.shape[-1] - q.shape[2]:]
        if inputs.rows is not None:
            return attend_rows(q, k, v, (cq, c), inputs.rows)
        return attend_data(inputs.backend, q, k, v, cq, c, inputs.q_pos, inputs.k_pos, inputs.block)

    def input_bias(self, enc, q, k, x):
        return enc.bias_for(x)

    def bench(self, enc, q, k, v, layer_input, pos, backend, block):
        x = layer_input()

        def run():  # the gates and cumulative sum are timed too
            c = enc.log_forget(x).cumsum(-1)
            return attend_data(backend, q, k, v, c, c, pos, pos, block)

        return run


class ContextKind(Kind):
    """A bias from the queries and the masked logits (CoPE): a dense path of its own, whatever the backend."""

    name = "context"
    reads_input = True
    backends = ("auto", "dense", "blocked")

    def check_backend(self, position, backend):
        super().check_backend(position, backend)
        if backend not in self.backends:
            raise ValueError(f"{position} runs on a dense path of its own (it reads every query-key logit); "
                             f"attention {backend!r} is refused for it: use auto, dense or blocked.")

    def attend_keys(self, enc, q, k, v, inputs, log_forget=None):
        t = q.shape[2]
        allowed = rows_allowed(inputs.rows, t) if inputs.rows is not None else causal_mask(inputs.q_pos,
                                                                                          inputs.k_pos)
        return attend_context(q, k, v, enc, allowed)

    def input_bias(self, enc, q, k, x):
        pos = torch.arange(x.shape[1], device=x.device)
        allowed = causal_mask(pos, pos)
        return enc.logit_bias(q, masked_logits(q, k, allowed)).masked_fill(~allowed, 0.0)

    def bench(self, enc, q, k, v, layer_input, pos, backend, block):
        allowed = causal_mask(pos, pos)
        return lambda: attend_context(q, k, v, enc, allowed)


#: kind name -> the object the model, the benchmarks and the command line call
KINDS: dict[str, Kind] = {k.name: k for k in (BiasKind(), RotaryKind(), DataKind(), ContextKind(), Kind())}


def kind_of(enc) -> Kind:
    """The :class:`Kind` of an encoding (a module, or its class; None is NoPE's), from its ``kind`` name."""
    if enc is None:
        return KINDS["none"]
    name = getattr(enc, "kind", None)
    if name not in KINDS:
        what = enc.__name__ if isinstance(enc, type) else type(enc).__name__
        raise ValueError(f"position encoding {what} has kind {name!r}; valid: {', '.join(KINDS)}.")
    return KINDS[name]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, encoding=None, *, q_pos: torch.Tensor | None = None,
           k_pos: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
           x: torch.Tensor | None = None, log_forget: torch.Tensor | None = None, backend: str = "auto",
           block: int = 1024) -> torch.Tensor:
    """Causal attention of ``q`` over ``k, v`` with any firepe encoding: the function for a model of your own.

    Args:
        q: ``[B, H, Q, D]`` queries; k, v: ``[B, H, K, D]`` keys and values, ``K >= Q``: the queries are the
            last ``Q`` keys (the KV-cache rule: pass every cached key and value, unrotated, plus the new ones).
        encoding: a module from :func:`firepe.positions.build` (None: no position signal, NoPE). Its parameters
            get gradients; a rotary encoding rotates ``q`` and ``k`` here.
        q_pos, k_pos: ``[Q]`` / ``[K]`` positions (default ``arange(K)``, the queries its last ``Q``).
        key_padding_mask: ``[B, K]``, true (1) for real tokens, false (0) for padding: each row gets the
            positions it would have alone (left padding for generation) and never attends to padding.
        x, log_forget: FoX (``kind == "data"``) reads the layer input of every key, ``x`` ``[B, K, H * D]``, or
            its ``log_forget`` ``[B, H, K]`` if you keep it (e.g. beside your KV cache).
        backend: ``auto`` (the fastest correct path firepe has for the encoding and device: the fused CPU kernel
            for biases, ``chunked`` for long inputs, SDPA otherwise), ``dense``, ``blocked``, ``chunked``, ``flex``.
        block: query rows per block of ``chunked``.

    Returns ``[B, H, Q, D]``, ``softmax(q k^T / sqrt(D) + bias) v`` as firepe's own GPT computes it.
    """
    if encoding is not None and not isinstance(encoding, PositionEncoding):
        raise ValueError(f"encoding must be a module from firepe.positions.build (or None), got "
                         f"{encoding.__name__ if isinstance(encoding, type) else type(encoding).__name__}.")
    kind = kind_of(encoding)
    kind.check_backend(getattr(encoding, "name", "nope"), backend)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive integer (query rows per chunk), got {block!r}.")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a [B, H, T, D] floating-point tensor, got "
                             f"{getattr(t, 'shape', type(t).__name__)}.")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must share one dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}.")
    b, h, nq, d = q.shape
    nk = k.shape[2]
    if k.shape != (b, h, nk, d) or v.shape[:3] != (b, h, nk) or nq > nk or nq < 1:
        raise ValueError(f"k and v must be [B, H, K, D] with the queries' B, H, D and K >= Q; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}.")
    if encoding is not None and (encoding.num_heads != h or encoding.head_dim != d):
        raise ValueError(f"the encoding was built for {encoding.num_heads} heads of {encoding.head_dim}; the tensors "
                         f"have {h} heads of {d}.")
    rows = None
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or tuple(key_padding_mask.shape) != (b, nk):
            raise ValueError(f"key_padding_mask must be [B, K] = {(b, nk)}, got "
                             f"{tuple(getattr(key_padding_mask, 'shape', ())) or type(key_padding_mask).__name__}.")
        if key_padding_mask.is_floating_point() or key_padding_mask.is_complex():
            raise ValueError(f"key_padding_mask must be bool or 0/1 integers (true = token), got "
                             f"{key_padding_mask.dtype}; an additive float mask is not a padding mask.")
        if not bool(key_padding_mask.bool().all()):
            if q_pos is not None or k_pos is not None:
                raise ValueError("give key_padding_mask or q_pos/k_pos, not both: with padding, each row's positions "
                                 "count its real tokens.")
            rows = RowPositions.from_mask(key_padding_mask.to(q.device), nq)
    k_pos = _positions(k_pos, "k_pos", nk, q.device)
    if k_pos is None:
        k_pos = torch.arange(nk, device=q.device)
    q_pos = _positions(q_pos, "q_pos", nq, q.device)
    if q_pos is None:
        q_pos = k_pos[nk - nq:]
    elif not torch.equal(q_pos, k_pos[nk - nq:]):
        raise ValueError("q_pos must be the last Q entries of k_pos (the queries are the last keys); leave it out.")
    if log_forget is not None and (not isinstance(log_forget, torch.Tensor)
                                   or tuple(log_forget.shape) != (b, h, nk)):
        raise ValueError(f"log_forget must be [B, H, K] = {(b, h, nk)}, got "
                         f"{tuple(getattr(log_forget, 'shape', ())) or type(log_forget).__name__}.")
    if x is not None and log_forget is None and kind.needs_layer_input:
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (b, nk, h * d):
            raise ValueError(f"x must be every key's layer input [B, K, H * D] = {(b, nk, h * d)}, got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}.")
        log_forget = encoding.log_forget(x)
    angles = kind.angles(encoding, k_pos, rows, b, nk)
    inputs = AttentionInputs(q_pos=q_pos, k_pos=k_pos, same_positions=nq == nk, backend=backend, block=block,
                             angles=angles, rows=rows)
    return kind.attend_keys(encoding, q, k, v, inputs, log_forget)


def _positions(pos, name: str, n: int, device) -> torch.Tensor | None:
    """``pos`` as a 1-D integer tensor of ``n`` strictly increasing positions (None stays None)."""
    if pos is None:
        return None
    if not isinstance(pos, torch.Tensor) or pos.dim() != 1 or len(pos) != n or pos.is_floating_point() \
            or pos.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor of {n} positions, got "
                         f"{tuple(getattr(pos, 'shape', ())) or type(pos).__name__} "
                         f"{getattr(pos, 'dtype', '')}.".replace(" .", "."))
    pos = pos.to(device)
    if n > 1 and not bool((pos[1:] > pos[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing (causal attention follows the positions).")
    return pos


def check_backend(position: str, backend: str) -> None:
    """ValueError when the encoding named ``position`` cannot run on attention ``backend``."""
    kind_of(positions.get(position)).check_backend(position, backend)


def check_model(cfg) -> None:
    """Every :class:`~firepe.config.GPTConfig`'s encoding check: its options built once
    (:func:`firepe.positions.check`) and its backend (registered in :data:`firepe.config.MODEL_CHECKS`)."""
    positions.check(cfg.position, cfg.n_head, cfg.head_dim, cfg.position_options)
    check_backend(cfg.position, cfg.attention)


if check_model not in config.MODEL_CHECKS:
    config.MODEL_CHECKS.append(check_model)
