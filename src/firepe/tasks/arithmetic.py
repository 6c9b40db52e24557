"""``addition``: two numbers with their digits in reversed order (least significant first).

``a + b = c`` with ``D`` digits each (scoring) or 1..``digits`` each (training), the answer ``c``
padded to ``max(da, db) + 1`` digits, then ``EOS``. ``hints=True`` puts an index hint token before
every digit (Zhou et al., 2024), the same index in both operands and the sum; training draws the
first hint at random so every hint token is trained. 12 + 59 = 71, reversed, without hints:
``2 1 + 9 5 = [1 7 0 EOS]``; with hints: ``h0 2 h1 1 + h0 9 h1 5 = [h0 1 h1 7 h2 0 EOS]``.

Position ids (``position_ids``; the model reads them as ``positions``, every encoding alike), ``o`` the
example's offset (uniform in ``[0, max_offset]`` per training example, 0 in scoring):

* ``default`` -- ``0 .. n-1`` (no ``positions`` in ``extra``).
* ``abacus`` (McLeish et al., 2024) -- a digit gets ``o + i``, ``i`` its place in its own number (1 = least
  significant, the first digit written); every other token (``+``, ``=``, ``EOS``, ``PAD``, index hints) gets 0.
* ``coupled`` (position coupling, Cho et al., 2024) -- digits as abacus (digit ``i`` of ``a``, ``b`` and ``c``
  share ``o + i``); ``+`` and ``=`` get ``o`` (place 0 of the number they introduce), ``EOS`` ``o + m + 1``
  (one past the sum's ``m`` digits), an index hint the id of the digit it precedes, ``PAD`` 0.

12 + 59 = 71, ``o = 0``: tokens ``2 1 + 9 5 = 1 7 0 EOS``; abacus ``1 2 0 1 2 0 1 2 3 0``; coupled
``1 2 0 1 2 0 1 2 3 4``. Both give every digit the same id (all three numbers are written least significant
first, so a digit's place in its number is its significance); they differ on the other tokens.
"""

from __future__ import annotations

import torch

from .synth_base import EOS, FIRST, PAD, SEP, SynthTask

__all__ = ["AdditionTask"]


class AdditionTask(SynthTask):
    level_name = "digits"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.digit0, self.plus = FIRST, FIRST + 10
        self.hint0 = self.plus + 1
        self.max_digits = 4 * cfg.digits
        self.vocab_size = self.hint0 + (self.max_digits + 1 if cfg.hints else 0)
        self.scheme = cfg.position_ids
        self.max_offset = 3 * cfg.digits if cfg.max_offset is None else cfg.max_offset

    def addition_length(self, digits: int) -> int:
        """Tokens of an addition example with ``digits``-digit operands: ``a + b = c EOS``."""
        per = 2 if self.cfg.hints else 1
        return per * digits * 2 + 2 + per * (digits + 1) + 1

    def length_of(self, level: int) -> int:
        return self.addition_length(level)

    def train_level(self, seq_len: int) -> int:
        return self.cfg.digits

    def levels(self, train_len: int, max_factor: int) -> list[int]:
        """``digits`` x 1, 2, 3, 4 (up to ``min(max_factor, 4)``)."""
        return [self.cfg.digits * f for f in range(1, min(max_factor, 4) + 1)]

    def _check(self, level: int, what: str) -> None:
        if level > self.max_digits:
            raise ValueError(f"addition is scored up to 4 x --digits = {self.max_digits} digits, got {level}.")

    def _batch(self, B: int, D: int, g: torch.Generator, training: bool):
        c = self.cfg
        n = self.addition_length(c.digits if training else D)
        if training:
            da = torch.randint(1, c.digits + 1, (B,), generator=g)
            db = torch.randint(1, c.digits + 1, (B,), generator=g)
            width = c.digits
        else:
            da = db = torch.full((B,), D)
            width = D
        a = torch.randint(0, 10, (B, width), generator=g)
        b = torch.randint(0, 10, (B, width), generator=g)
        lead = torch.randint(1, 10, (B, 2), generator=g)  # the most significant digit is never 0
        col = torch.arange(width)[None]
        a = torch.where(col < da[:, None], a, 0)
        b = torch.where(col < db[:, None], b, 0)
        a[torch.arange(B), da - 1] = lead[:, 0]
        b[torch.arange(B), db - 1] = lead[:, 1]
        total = torch.zeros((B, width + 1), dtype=torch.long)
        carry = torch.zeros(B, dtype=torch.long)
        for i in range(width):  # column addition, least significant digit first
            s = a[:, i] + b[:, i] + carry
            total[:, i], carry = s % 10, s // 10
        total[:, width] = carry
        hint_start = (torch.randint(0, self.max_digits - width + 1, (B,), generator=g) if training and c.hints
                      else torch.zeros(B, dtype=torch.long))
        tokens = torch.full((B, n), PAD, dtype=torch.long)
        answer = torch.full((B, n), -1, dtype=torch.long)
        # drawn after everything else, and only for a scheme: the default data stays what it was
        offset = (torch.randint(0, self.max_offset + 1, (B,), generator=g) if training and self.scheme != "default"
                  else torch.zeros(B, dtype=torch.long))
        ids = torch.zeros((B, n), dtype=torch.long)
        rows_a, rows_b, rows_c = a.tolist(), b.tolist(), total.tolist()
        for r in range(B):
            h0 = int(hint_start[r])
            na, nb = int(da[r]), int(db[r])

            def number(digits: list[int], h0: int = h0) -> list[int]:
                if not c.hints:
                    return [self.digit0 + d for d in digits]
                return [t for i, d in enumerate(digits) for t in (self.hint0 + h0 + i, self.digit0 + d)]

            left = number(rows_a[r][:na]) + [self.plus] + number(rows_b[r][:nb]) + [SEP]
            out = number(rows_c[r][:max(na, nb) + 1]) + [EOS]
            seq = left + out
            tokens[r, :len(seq)] = torch.tensor(seq)
            answer[r, len(left):len(seq)] = 0
            if self.scheme != "default":
                ids[r, :len(seq)] = torch.tensor(self.position_ids(seq, int(offset[r])))
        return tokens, answer, ({} if self.scheme == "default" else {"positions": ids})

    def position_ids(self, seq: list[int], offset: int) -> list[int]:
        """The ids of one example's tokens ``seq`` (``a + b = c EOS``, no padding) under the scheme (module
        docstring): a digit ``offset + place``, the other tokens by the scheme's rule."""
        abacus, out, place = self.scheme == "abacus", [], 0
        for t in seq:
            if self.digit0 <= t < self.plus:
                place += 1
                out.append(offset + place)
            elif t >= self.hint0:  # coupled: a hint shares the id of the digit after it
                out.append(0 if abacus else offset + place + 1)
            else:  # coupled: + and = start a number (place 0), EOS is one past the sum
                out.append(0 if abacus else offset + place + 1 if t == EOS else offset)
                place = 0
        return out
