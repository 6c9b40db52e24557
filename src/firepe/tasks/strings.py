"""``copy`` / ``reverse``: a random string of ``m`` symbols, ``SEP``, then the string (reversed), then
``EOS`` (the answer: ``m + 1`` tokens); trained with ``m`` uniform in ``[1, (n - 2) // 2]``, scored with
the longest ``m`` that fits the length: ``a c b SEP [a c b EOS]`` / ``a c b SEP [b c a EOS]``."""

from __future__ import annotations

import torch

from .synth_base import EOS, FIRST, PAD, SEP, SynthTask

__all__ = ["StringTask"]


class StringTask(SynthTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.sym0 = FIRST
        self.vocab_size = self.sym0 + cfg.symbols

    def _check(self, level: int, what: str) -> None:
        if level < 4:
            raise ValueError(f"{self.name} needs a length of at least 4 tokens, got {level}.")

    def _batch(self, B: int, n: int, g: torch.Generator, training: bool):
        top = (n - 2) // 2
        m = torch.randint(1, top + 1, (B,), generator=g) if training else torch.full((B,), top)
        s = torch.randint(self.sym0, self.sym0 + self.cfg.symbols, (B, top), generator=g)
        j = torch.arange(n)[None]
        mm = m[:, None]
        src = torch.where(j < mm, j, 0).clamp(max=top - 1)
        out_i = j - mm - 1
        if self.name == "reverse":
            out_i = mm - 1 - out_i
        tokens = torch.full((B, n), PAD, dtype=torch.long)
        tokens = torch.where(j < mm, s.gather(1, src), tokens)
        tokens = torch.where(j == mm, SEP, tokens)
        inside = (j > mm) & (j <= 2 * mm)
        tokens = torch.where(inside, s.gather(1, out_i.clamp(0, top - 1)), tokens)
        tokens = torch.where(j == 2 * mm + 1, EOS, tokens)
        answer = torch.where((j > mm) & (j <= 2 * mm + 1), 0, -1).long()
        return tokens, answer, {}
