"""Decoder-only GPT (pre-LayerNorm, GeLU FFN) taking any registered position encoding.

No maximum length is baked in: positions are generated per call, so every encoding runs at any
length (16x its training length included). Presets follow Appendix C Table 8 (``base``: 12 layers,
12 heads, d=768; ``large``: 24 layers, 16 heads, d=1024, head dim 64) plus small CPU presets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import positions
from .attention import BACKENDS, KVCache, attend_backend
from .checkpoint import dataclass_from_dict
from .positions.base import BiasEncoding, PositionEncoding, RotaryEncoding
from .positions.rope import apply_rotary_one

__all__ = ["GPTConfig", "GPT", "PRESETS", "preset"]


@dataclass
class GPTConfig:
    """Model configuration; serialized as JSON next to every checkpoint."""

    vocab_size: int = 257
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None
    position: str = "fire"
    position_options: dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    attention: str = "auto"         # auto | dense | blocked | chunked | flex (see firepe.attention)
    attention_block: int = 1024     # query block of the chunked backend

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}.")
        positions.validate(self.position, self.position_options)
        if self.attention not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; valid: {', '.join(BACKENDS)}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        return dataclass_from_dict(cls, data)


PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, d_model=64),      # unit tests
    "cpu": dict(n_layer=3, n_head=4, d_model=128),      # the laptop `firepe compare` default
    "small": dict(n_layer=6, n_head=8, d_model=512),
    "base": dict(n_layer=12, n_head=12, d_model=768),   # Table 8, 125M
    "large": dict(n_layer=24, n_head=16, d_model=1024),  # Table 8 (head dim 64), 350M
}


def preset(name: str, **overrides: Any) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}.")
    return GPTConfig(**{**PRESETS[name], **overrides})


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, enc, ctx: dict, layer: int, cache: KVCache | None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if isinstance(enc, RotaryEncoding):
            cos, sin = ctx["angles"]
            q, k = apply_rotary_one(q, cos[-T:], sin[-T:]), apply_rotary_one(k, cos[-T:], sin[-T:])
        if cache is not None:
            k, v = cache.update(layer, k, v)
        bias_enc = enc if isinstance(enc, BiasEncoding) and enc.adds_bias else None
        y = attend_backend(ctx["backend"], q, k, v, bias_enc, ctx["q_pos"], ctx["k_pos"], ctx["same_positions"],
                           ctx["block"], bias_cache=ctx["biases"])
        return self.dropout(self.proj(y.transpose(1, 2).reshape(B, T, -1)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn_dim), nn.GELU(),
                                 nn.Linear(cfg.ffn_dim, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x, enc, ctx, layer, cache):
        x = x + self.attn(self.ln1(x), enc, ctx, layer, cache)
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
        first = self._build_position()
        if first.layer_shared or not any(True for _ in first.parameters()):
            self.position_shared: PositionEncoding | None = first
            self.position_layers = None
        else:
            self.position_shared = None
            self.position_layers = nn.ModuleList([first] + [self._build_position() for _ in range(cfg.n_layer - 1)])

    def _build_position(self) -> PositionEncoding:
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

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        device = idx.device
        k_pos = torch.arange(start + T, device=device)
        ctx = {"q_pos": k_pos[start:], "k_pos": k_pos, "same_positions": start == 0, "biases": {},
               "backend": self.cfg.attention, "block": self.cfg.attention_block}
        first = self.position_for(0)
        if isinstance(first, RotaryEncoding):
            ctx["angles"] = first.compute_angles(k_pos)
        x = self.drop(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, self.position_for(i), ctx, i, cache)
        if cache is not None:
            cache.length = start + T
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def set_attention(self, backend: str, block: int | None = None) -> GPT:
        """Switch the attention backend (one of ``firepe.attention.BACKENDS``) of a built model."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}.")
        self.cfg.attention = backend
        if block is not None:
            self.cfg.attention_block = block
        return self

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``prompt`` ``[B, T]`` with a KV cache; returns ``[B, T + new]``.

        ``temperature = 0`` is greedy decoding; ``top_k`` keeps the k most likely tokens. Each step
        feeds one token: bias encodings compute one bias row for query position ``t``.
        """
        if prompt.dim() == 1:
            prompt = prompt[None]
        if prompt.shape[1] < 1:
            raise ValueError("the prompt must hold at least one token.")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        was_training = self.training
        self.eval()
        cache = KVCache.empty(self.cfg.n_layer)
        logits, _ = self(prompt, cache=cache)
        out = [prompt]
        for _ in range(max_new_tokens):
            last = logits[:, -1].float()
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(last.softmax(-1), 1, generator=generator)
            out.append(nxt)
            logits, _ = self(nxt, cache=cache)
        self.train(was_training)
        return torch.cat(out, dim=1)
