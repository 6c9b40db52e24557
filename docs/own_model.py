"""A nanoGPT-style model with any firepe encoding: the whole integration is ``firepe.attend`` (docs/own-model.md)."""

import torch
from torch import nn

import firepe
from firepe import positions


class Block(nn.Module):
    def __init__(self, d: int, heads: int, position: str, backend: str = "auto", **options):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.position = positions.build(position, heads, d // heads, **options)  # its parameters are the model's

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``x`` ``[B, T, d]``; ``cache`` (a dict, filled here) keeps every key, value and attention input so far."""
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(h).split(d, dim=-1))
        if cache is not None:  # keys stay unrotated: attend() applies a rotary encoding to q and k itself
            if cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                h = torch.cat([cache["x"], h], 1)
            cache.update(k=k, v=v, x=h)
        # the queries are the last t keys; x is read only by encodings that gate on the input (FoX)
        y = firepe.attend(q, k, v, self.position, x=h, backend=self.backend)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 64, heads: int = 4, layers: int = 2, position: str = "fire",
                 backend: str = "auto", **options):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)  # no position embedding: the encoding lives in attention
        self.blocks = nn.ModuleList(Block(d, heads, position, backend, **options) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        """``idx`` ``[B, T]`` -> logits ``[B, T, vocab]``; with ``caches`` (one dict per block), ``idx`` are the
        tokens after those already cached."""
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln(x))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """Greedy decoding of ``n`` tokens with the KV cache."""
        caches = [{} for _ in self.blocks]
        logits = self(idx, caches)
        for _ in range(n):
            nxt = logits[:, -1:].argmax(-1)
            idx = torch.cat([idx, nxt], 1)
            logits = self(nxt, caches)
        return idx
