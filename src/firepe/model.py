"""Decoder-only GPT (pre-LayerNorm, GeLU FFN) taking any registered position encoding.

No maximum length is baked in: positions are generated per call, so every encoding runs at any
length (16x its training length included). Presets follow Appendix C Table 8 (``base``: 12 layers,
12 heads, d=768; ``large``: 24 layers, 16 heads, d=1024, head dim 64) plus small CPU presets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import positions
from .attention import AttentionInputs, KVCache, RowPositions
from .config import BACKENDS, GPTConfig, is_int, is_real
from .generate import decode
from .kinds import check_backend, kind_of
from .limits import MAX_LENGTH
from .positions.base import PositionEncoding

__all__ = ["GPT", "IGNORE_INDEX", "MIN_TEMPERATURE"]

IGNORE_INDEX = -100      # target id skipped by the loss (F.cross_entropy's default)
MIN_TEMPERATURE = 1e-4   # smallest sampling temperature other than 0 (greedy); see GPT.generate


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, enc: PositionEncoding, inputs: AttentionInputs, layer: int,
                cache: KVCache | None) -> torch.Tensor:
        """``x`` ``[B, T, d_model]`` -> ``[B, T, d_model]``: ``softmax(q k^T / sqrt(D) + B) v`` per head, with what
        the encoding's kind contributes (a bias, a rotation, a bias from ``x``: :mod:`firepe.kinds`)."""
        q, k, v = self.heads(x)
        return self.merge(kind_of(enc).attend(enc, q, k, v, x, inputs, layer, cache))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, d_model]`` -> ``q, k, v``, each ``[B, H, T, head_dim]`` (before any rotation)."""
        B, T, _ = x.shape
        return self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output ``[B, H, T, head_dim]`` -> ``[B, T, d_model]`` through the output projection."""
        B, _, T, _ = y.shape
        return self.dropout(self.proj(y.transpose(1, 2).reshape(B, T, -1)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn_dim), nn.GELU(),
                                 nn.Linear(cfg.ffn_dim, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, enc, inputs: AttentionInputs, layer, cache):
        x = x + self.attn(self.ln1(x), enc, inputs, layer, cache)
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """``forward(idx [B, T], targets=None, cache=None) -> (logits [B, T, V], loss or None)``.

    Position encodings: one module per layer (``self.position_layers``) unless the encoding has no
    parameters or sets ``layer_shared`` (FIRE-S, T5), in which case ``self.position_shared`` serves
    every layer and its bias is computed once per forward.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        first = self.build_position()
        if first.layer_shared or not any(True for _ in first.parameters()):
            self.position_shared: PositionEncoding | None = first
            self.position_layers = None
        else:
            self.position_shared = None
            self.position_layers = nn.ModuleList([first] + [self.build_position() for _ in range(cfg.n_layer - 1)])

    def build_position(self) -> PositionEncoding:
        c = self.cfg
        return positions.build(c.position, num_heads=c.n_head, head_dim=c.head_dim, **c.position_options)

    def _init_weights(self) -> None:
        # GPT-2 init for the transformer only; position modules keep their own initialization.
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = 1 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "ffn.2.weight")) else 1
                nn.init.normal_(p, std=std * scale)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def position_for(self, layer: int) -> PositionEncoding:
        return self.position_shared if self.position_shared is not None else self.position_layers[layer]

    def position_modules(self) -> list[PositionEncoding]:
        return [self.position_for(i) for i in range(self.cfg.n_layer)]

    @torch.no_grad()
    def attention_inputs(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The input of every attention layer (after its LayerNorm), ``[B, T, d_model]`` each, for ``idx``
        ``[B, T]``: what a data-dependent bias (FoX) reads, e.g. to plot its bias for a given text."""
        self._check_inputs(idx)
        seen: list[torch.Tensor] = []
        hooks = [b.ln1.register_forward_hook(lambda mod, args, out: seen.append(out)) for b in self.blocks]
        try:
            self.hidden(idx, check=False)
        finally:
            for h in hooks:
                h.remove()
        return seen

    @torch.no_grad()
    def input_biases(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, ``[B, H, T, T]``: what a data-dependent encoding adds to that layer's logits for ``idx``
        ``[B, T]`` -- FoX's ``c_i - c_j``, CoPE's ``q_i . e(p_ij)`` from the layer's own queries and keys
        (0 above the diagonal). ``plot-bias --text`` draws one row of it."""
        kind = kind_of(self.position_for(0))
        if not kind.reads_input:
            raise ValueError(f"{self.cfg.position!r} has no data-dependent bias; its bias depends on positions only.")
        out = []
        for i, x in enumerate(self.attention_inputs(idx)):
            q, k, _ = self.blocks[i].attn.heads(x)
            out.append(kind.input_bias(self.position_for(i), q, k, x))
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the first parameter or buffer holding NaN or inf.

        :func:`firepe.checkpoint.check_finite` on this model; ``save_checkpoint`` and ``load_run``
        run the same check.
        """
        from .checkpoint import check_finite  # here: the model itself needs no safetensors

        check_finite(self)

    def _check_inputs(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                      name: str = "idx") -> None:
        """``ValueError`` unless ``idx`` is a non-empty ``[B, T]`` integer tensor of ids in
        ``[0, vocab_size)`` and ``targets`` matches it (ids, or ``IGNORE_INDEX``); one host sync."""
        V = self.cfg.vocab_size
        for label, t in ((name, idx), ("targets", targets)):
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{label} must be a torch.Tensor of token ids, got {type(t).__name__}.")
            if t.dtype not in (torch.long, torch.int):
                raise ValueError(f"{label} must hold integer token ids (torch.long), got dtype {t.dtype}.")
        if idx.dim() != 2:
            raise ValueError(f"{name} must have shape [batch, tokens], got shape {tuple(idx.shape)}.")
        if idx.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(idx.shape)}); give at least one row of one token or more.")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of {name} {tuple(idx.shape)}, got {tuple(targets.shape)}.")
        if isinstance(cache, KVCache):
            if len(cache.keys) != self.cfg.n_layer:
                raise ValueError(f"the KV cache holds {len(cache.keys)} layers but the model has {self.cfg.n_layer}; "
                                 "use KVCache.empty(model.cfg.n_layer).")
            if cache.keys[0] is not None and cache.keys[0].shape[0] != idx.shape[0]:
                raise ValueError(f"{name} has batch size {idx.shape[0]} but the KV cache holds "
                                 f"{cache.keys[0].shape[0]} rows.")
        if idx.device.type == "meta":
            return
        stats = [*torch.aminmax(idx)]
        if targets is not None:
            stats.append(((targets >= V) | ((targets < 0) & (targets != IGNORE_INDEX))).any())
        lo, hi, *bad_targets = torch.stack([x.to(torch.long) for x in stats]).tolist()
        if lo < 0:
            raise ValueError(f"{name} holds the negative token id {lo}; ids must be in [0, vocab_size={V}).")
        if hi >= V:
            raise ValueError(f"{name} holds the token id {hi}, outside the vocabulary; ids must be in "
                             f"[0, vocab_size={V}).")
        if bad_targets and bad_targets[0]:
            raise ValueError(f"targets hold ids outside [0, vocab_size={V}) other than {IGNORE_INDEX} (ignored).")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        """``idx`` ``[B, T]`` token ids -> ``(logits [B, T, V], loss or None)``.

        ``targets`` ``[B, T]`` gives the mean next-token cross-entropy (``IGNORE_INDEX`` entries
        skipped); with ``cache`` the ``T`` tokens sit at positions ``cache.length .. cache.length+T-1``.
        ``attention_mask`` ``[B, cache.length + T]`` (1 = token, 0 = padding, as in Hugging Face) lets
        rows of different lengths share a batch: see :meth:`hidden`.
        ``positions`` ``[B, T]`` (integers >= 0 per row, in any order, repeats allowed; no cache or mask)
        replaces the positions ``0 .. T-1`` of every row: randomized positional encodings (Ruoss et al., 2023),
        a task's own position ids (``firepe synth --position-ids``: ids that restart per number or repeat).
        Causal masking stays by token index. Rotary encodings see the signed ``q_pos - k_pos``; bias
        encodings, in a batch whose rows are not all sorted, the distance ``|q_pos - k_pos|``
        (:meth:`firepe.positions.BiasEncoding.compute_bias_rows`).
        Bad ids, shapes or dtypes raise ``ValueError`` (one host sync per call).
        """
        self._check_inputs(idx, targets, cache)
        return self._forward(idx, targets, cache, attention_mask, positions)

    def _forward(self, idx: torch.Tensor, targets: torch.Tensor | None, cache: KVCache | None,
                 attention_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        logits = self.lm_head(self.hidden(idx, cache, attention_mask, check=False, positions=positions))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1).long(),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, attention_mask: torch.Tensor | None = None,
               check: bool = True, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, d_model]`` (the input of ``lm_head``).

        ``cache`` is a :class:`KVCache` or any object with ``length`` and ``update(layer, k, v)`` (the
        Hugging Face wrapper passes transformers' own cache). ``attention_mask`` ``[B, cache.length + T]``
        marks padding with 0: a row's positions then count only its real tokens (a left-padded row is
        scored as if alone) and nobody attends to padding. A mask without zeros is the same as None;
        one with zeros takes the dense per-row path (:func:`firepe.attention.attend_rows`).
        """
        if check:
            self._check_inputs(idx, None, cache)
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if positions is not None:
            rows = self._given_positions(positions, B, T, cache, attention_mask)
        else:
            rows = self._rows(attention_mask, B, start + T, T, idx.device)
        k_pos = torch.arange(start + T, device=idx.device)
        first = self.position_for(0)
        angles = kind_of(first).angles(first, k_pos, rows, B, start + T)
        inputs = AttentionInputs(q_pos=k_pos[start:], k_pos=k_pos, same_positions=start == 0,
                                 backend=self.cfg.attention, block=self.cfg.attention_block, angles=angles, rows=rows)
        x = self.drop(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, self.position_for(i), inputs, i, cache)
        if cache is not None:
            cache.length = start + T
        return self.ln_f(x)

    @staticmethod
    def _given_positions(positions, batch: int, tokens: int, cache, mask) -> RowPositions:
        if cache is not None or mask is not None:
            raise ValueError("positions= applies without a KV cache and without attention_mask (training).")
        if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (batch, tokens):
            shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
            raise ValueError(f"positions must have the shape of idx {(batch, tokens)}, got {shape}.")
        if positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"positions must hold integers, got dtype {positions.dtype}.")
        positions = positions.long()
        lo, hi = torch.stack([*torch.aminmax(positions)]).tolist()  # one host sync per call
        if lo < 0:
            raise ValueError(f"positions must be integers >= 0, got {lo}.")
        if hi >= MAX_LENGTH:
            raise ValueError(f"positions must be below {MAX_LENGTH:,} (firepe.limits.MAX_LENGTH).")
        valid = torch.ones_like(positions, dtype=torch.bool)
        return RowPositions(q=positions, k=positions, valid=valid)

    @staticmethod
    def _rows(mask: torch.Tensor | None, batch: int, keys: int, queries: int, device) -> RowPositions | None:
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (batch, keys):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"attention_mask must have shape [batch, cached + new tokens] = {(batch, keys)}, "
                             f"got {shape}.")
        if mask.dtype.is_floating_point or mask.dtype.is_complex:
            raise ValueError(f"attention_mask must hold 0 (padding) and 1 (token) as integers or booleans, "
                             f"got dtype {mask.dtype}.")
        mask = mask.to(device)
        if mask.device.type != "meta":
            lo, hi = torch.aminmax(mask.to(torch.long))
            if int(lo) < 0 or int(hi) > 1:
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (token).")
            if int(lo) == 1:
                return None
        return RowPositions.from_mask(mask, queries)

    def set_attention(self, backend: str, block: int | None = None) -> GPT:
        """Switch the attention backend (one of ``firepe.attention.BACKENDS``) and optionally the
        chunked backend's query ``block`` of a built model."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}.")
        if block is not None and (not is_int(block) or block <= 0):
            raise ValueError(f"attention block must be a positive integer, got {block!r}.")
        check_backend(self.cfg.position, backend)
        self.cfg.attention = backend
        if block is not None:
            self.cfg.attention_block = block
        return self

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``prompt`` ``[B, T]`` (or ``[T]``) with a KV cache; returns ``[B, T + new]``.

        Each step samples from ``softmax(logits / temperature)``. ``temperature = 0`` is greedy decoding;
        any other temperature must be finite and ``>= MIN_TEMPERATURE`` (1e-4): far below it
        ``logits / temperature`` overflows float32 (1e-45 gave NaN probabilities) and sampling is greedy
        anyway. ``top_k`` keeps the k most likely tokens (all of them when ``top_k >= vocab_size``).
        Each step feeds one token: bias encodings compute one bias row for query position ``t``.
        """
        if not is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
        if not is_real(temperature) or not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, "
                             f"got {temperature!r}.")
        if top_k is not None and (not is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}.")
        if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
            prompt = prompt[None]
        self._check_inputs(prompt, name="prompt")
        was_training = self.training
        self.eval()
        try:
            new = decode(self, prompt, max_new_tokens, temperature, top_k, generator)
        finally:
            self.train(was_training)
        return torch.cat([prompt, new], dim=1)
