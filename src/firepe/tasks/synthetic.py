"""Synthetic length-generalization tasks, generated offline and deterministically from a seed.

Each task has a small vocabulary of its own (not bytes of text), so a tiny GPT trained from
scratch learns it in minutes on a CPU; the loss is on the answer tokens only. A generated batch
is ``(tokens [B, n], answer [B, n])``: ``answer[b, t]`` is the index (within the row) of the
answer token ``t`` belongs to, -1 for tokens that are not answers. The model reads ``tokens`` and
is trained and scored on predicting every answer token from the tokens before it; an answer is
correct when every one of its tokens is the argmax (one teacher-forced pass, which is exactly
greedy decoding's exact match).

Token ids 0-2 are shared: ``PAD`` (after a short example), ``SEP`` (``=``) and ``EOS``.

* ``recall`` (multi-query associative recall, Zoology's MQAR, a multi-needle passkey): ``pairs``
  key -> value bindings scattered at random positions through random filler, then ``queries``
  queries ``k v`` at the end; the ``v`` after each query key is an answer (1 token). With
  ``format="fact"`` (default) one binding is one token ``k=v`` (``keys x values`` fact tokens), so
  a query is answered by one content lookup over any distance; ``format="split"`` writes a
  binding as two tokens ``k v`` (MQAR proper), which needs an induction circuit (two composed
  heads). Training supervises every query; scoring counts the first query of each key only (a later
  one could copy the value of an earlier query instead of finding the binding). Example
  (``pairs=2``, n=16, ``queries=3``; ``.`` filler)::

      . . k2=v7 . . . k5=v1 . . .   k5 [v1] k2 [v7] k5 [v1]

  Accuracy is also reported by distance between the binding and its query.
* ``copy`` / ``reverse``: a random string of ``m`` symbols, ``SEP``, then the string (reversed),
  then ``EOS`` (the answer: ``m + 1`` tokens); trained with ``m`` uniform in ``[1, (n - 2) // 2]``,
  scored with the longest ``m`` that fits the length: ``a c b SEP [a c b EOS]``.
* ``addition``: two numbers with their digits in reversed order (least significant first):
  ``a + b = c`` with ``D`` digits each (scoring) or 1..``digits`` each (training), the answer ``c``
  padded to ``max(da, db) + 1`` digits, then ``EOS``. ``hints=True`` puts an index hint token
  before every digit (Zhou et al., 2024), the same index in both operands and the sum; training
  draws the first hint at random so every hint token is trained. 12 + 59 = 71, reversed,
  without hints: ``2 1 + 9 5 = [1 7 0 EOS]``; with hints: ``h0 2 h1 1 + h0 9 h1 5 = [h0 1 h1 7 h2 0 EOS]``.

Evaluation examples depend on ``eval_seed`` and the level only (never on the training seed), so
every encoding and every seed is scored on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["SynthConfig", "SynthTask", "SYNTH_TASKS", "TASK_OPTIONS",
           "PAD", "SEP", "EOS", "rows_from", "score_batch", "distance_bins",
           "bin_of"]

PAD, SEP, EOS = 0, 1, 2
_FIRST = 3
SYNTH_TASKS = ("recall", "copy", "reverse", "addition")
FORMATS = ("fact", "split")


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


#: the options some tasks read only (given another value for another task, they are refused)
TASK_OPTIONS = {**{k: ("recall",) for k in ("pairs", "keys", "values", "queries", "format", "filler")},
                "symbols": ("copy", "reverse"), "digits": ("addition",), "hints": ("addition",)}


@dataclass
class SynthConfig:
    """A synthetic task and its options; saved as the ``synth`` section of every run's config.json."""

    task: str = field(default="recall", metadata=_help("recall | copy | reverse | addition"))
    pairs: int = field(default=4, metadata=_help("recall: key -> value bindings per sequence (K)"))
    keys: int = field(default=8, metadata=_help("recall: key vocabulary"))
    values: int = field(default=8, metadata=_help("recall: value vocabulary"))
    queries: int = field(default=16, metadata=_help("recall: queries at the end of each sequence"))
    format: str = field(default="fact", metadata=_help("recall: fact (one token k=v) | split (two tokens k v)"))
    filler: int = field(default=16, metadata=_help("recall: filler vocabulary"))
    symbols: int = field(default=16, metadata=_help("copy/reverse: alphabet size"))
    digits: int = field(default=8, metadata=_help("addition: most digits per number in training (scored up to 4x)"))
    hints: bool = field(default=False, metadata=_help("addition: index hints before every digit"))
    eval_seed: int = field(default=1234, metadata=_help("seed of the evaluation examples (fixed across seeds)"))

    def __post_init__(self) -> None:
        if self.task not in SYNTH_TASKS:
            raise ValueError(f"unknown synthetic task {self.task!r}; valid: {', '.join(SYNTH_TASKS)}.")
        for name in ("pairs", "keys", "values", "queries", "filler", "symbols", "digits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {v!r}.")
            if v > 4096:
                raise ValueError(f"--{name} must be at most 4096, got {v}.")
        if self.format == "fact" and self.keys * self.values > 65536:
            raise ValueError(f"--keys x --values ({self.keys} x {self.values}) must be at most 65536 fact tokens.")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be fact or split, got {self.format!r}.")
        if self.task == "recall" and self.pairs > self.keys:
            raise ValueError(f"--pairs {self.pairs} is more than the {self.keys} distinct keys (--keys); each binding "
                             "needs its own key.")
        if not isinstance(self.hints, bool):
            raise ValueError(f"hints must be true or false, got {self.hints!r}.")
        if not isinstance(self.eval_seed, int) or isinstance(self.eval_seed, bool) or self.eval_seed < 0:
            raise ValueError(f"--eval-seed must be an integer >= 0, got {self.eval_seed!r}.")
        for name, tasks in TASK_OPTIONS.items():  # another task's option, set: refused, never ignored
            if self.task not in tasks and getattr(self, name) != type(self).__dataclass_fields__[name].default:
                raise ValueError(f"--{name} applies to {' and '.join(tasks)} only, not to --task {self.task}.")


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class SynthTask:
    """Generator and vocabulary of one :class:`SynthConfig`.

    ``batch(count, level, generator, training)`` -> ``(tokens, answer, extra)``; ``level`` is the
    sequence length (recall, copy, reverse) or the number of digits (addition). ``extra`` holds
    ``distance [B, n]`` for recall (query position - binding position at each answer token).
    """

    def __init__(self, cfg: SynthConfig):
        self.cfg = c = cfg
        self.name = c.task
        if c.task == "recall":
            self.fill0 = _FIRST
            self.key0 = self.fill0 + c.filler
            self.val0 = self.key0 + c.keys
            self.fact0 = self.val0 + c.values
            self.vocab_size = self.fact0 + (c.keys * c.values if c.format == "fact" else 0)
        elif c.task in ("copy", "reverse"):
            self.sym0 = _FIRST
            self.vocab_size = self.sym0 + c.symbols
        else:
            self.digit0, self.plus = _FIRST, _FIRST + 10
            self.hint0 = self.plus + 1
            self.max_digits = 4 * c.digits
            self.vocab_size = self.hint0 + (self.max_digits + 1 if c.hints else 0)

    # -- lengths ---------------------------------------------------------------------------
    def addition_length(self, digits: int) -> int:
        """Tokens of an addition example with ``digits``-digit operands: ``a + b = c EOS``."""
        per = 2 if self.cfg.hints else 1
        return per * digits * 2 + 2 + per * (digits + 1) + 1

    def train_length(self, seq_len: int) -> int:
        """The training length: ``seq_len`` except for addition (its ``digits`` decide)."""
        return self.addition_length(self.cfg.digits) if self.name == "addition" else seq_len

    def checked_train_length(self, seq_len: int) -> int:
        """:meth:`train_length`, refused in one line when it cannot hold a training example."""
        length = self.train_length(seq_len)
        if self.name == "addition":
            self.check_level(self.cfg.digits, "digits")
        else:
            self.check_level(length, "training length")
        return length

    def check_level(self, level: int, what: str = "length") -> None:
        """One line naming why ``level`` cannot hold an example."""
        c = self.cfg
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise ValueError(f"the {what} must be an integer >= 1, got {level!r}.")
        if self.name == "recall":
            ctx = level - 2 * c.queries
            need = c.pairs if c.format == "fact" else 2 * c.pairs
            if ctx < need:
                raise ValueError(f"recall at length {level}: {c.queries} queries (2 tokens each) and {c.pairs} "
                                 f"bindings ({need} tokens) do not fit; use fewer --queries/--pairs or a longer "
                                 f"length (at least {2 * c.queries + need}).")
        elif self.name in ("copy", "reverse"):
            if level < 4:
                raise ValueError(f"{self.name} needs a length of at least 4 tokens, got {level}.")
        elif level > self.max_digits:
            raise ValueError(f"addition is scored up to 4 x --digits = {self.max_digits} digits, got {level}.")

    def levels(self, train_len: int, max_factor: int) -> list[int]:
        """Default columns: the training length x 1, 2, 4, ... ``max_factor``; addition: ``digits``
        x 1, 2, 3, 4 (up to ``min(max_factor, 4)``)."""
        if self.name == "addition":
            return [self.cfg.digits * f for f in range(1, min(max_factor, 4) + 1)]
        out, f = [], 1
        while f <= max_factor:
            out.append(train_len * f)
            f *= 2
        return out

    # -- generation --------------------------------------------------------------------------
    def batch(self, count: int, level: int, g: torch.Generator, training: bool = False):
        self.check_level(level, "digits" if self.name == "addition" else "length")
        if self.name == "recall":
            return self._recall(count, level, g)
        if self.name in ("copy", "reverse"):
            return self._copy(count, level, g, training)
        return self._addition(count, level, g, training)

    def _recall(self, B: int, n: int, g: torch.Generator):
        c = self.cfg
        K, Q = c.pairs, c.queries
        ctx = n - 2 * Q
        tokens = torch.randint(self.fill0, self.fill0 + c.filler, (B, n), generator=g)
        keys = torch.argsort(torch.rand(B, c.keys, generator=g), 1)[:, :K]          # distinct keys
        vals = torch.randint(0, c.values, (B, K), generator=g)
        ar = torch.arange(B)[:, None]
        if c.format == "fact":
            where = torch.argsort(torch.rand(B, ctx, generator=g), 1)[:, :K]
            tokens[ar, where] = self.fact0 + keys * c.values + vals
        else:
            where = torch.argsort(torch.rand(B, ctx // 2, generator=g), 1)[:, :K] * 2
            tokens[ar, where] = self.key0 + keys
            tokens[ar, where + 1] = self.val0 + vals
        pick = torch.randint(0, K, (B, Q), generator=g)
        qpos = ctx + 2 * torch.arange(Q)[None].expand(B, Q)
        tokens[ar, qpos] = self.key0 + keys.gather(1, pick)
        tokens[ar, qpos + 1] = self.val0 + vals.gather(1, pick)
        answer = torch.full((B, n), -1, dtype=torch.long)
        answer[ar, qpos + 1] = torch.arange(Q)[None].expand(B, Q)
        distance = torch.zeros((B, n), dtype=torch.long)
        distance[ar, qpos + 1] = qpos - where.gather(1, pick)
        # the first query of each key: teacher-forced, a later query of the same key could copy the value of
        # an earlier one; the first can only be answered from the binding (what scoring counts)
        earlier = (pick[:, :, None] == pick[:, None, :]).tril(-1).any(-1)
        first = torch.zeros((B, n), dtype=torch.bool)
        first[ar, qpos + 1] = ~earlier
        return tokens, answer, {"distance": distance, "first": first}

    def _copy(self, B: int, n: int, g: torch.Generator, training: bool):
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

    def _addition(self, B: int, D: int, g: torch.Generator, training: bool):
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
        return tokens, answer, {}

    # -- training rows -------------------------------------------------------------------------
    def training_rows(self, count: int, seq_len: int, seed: int, step: int):
        """Batch ``step`` of training seed ``seed``: ``(x, y)`` ``[count, seq_len]`` with ``y`` the next
        token at answer positions and -100 (ignored) elsewhere; the same for the same arguments."""
        g = torch.Generator().manual_seed(_seed(seed, step, 7))
        level = self.cfg.digits if self.name == "addition" else seq_len
        tokens, answer, _ = self.batch(count, level, g, training=True)
        return rows_from(tokens, answer)

    def eval_batch(self, count: int, level: int):
        """The fixed evaluation examples of ``level`` (from ``eval_seed`` and ``level`` only)."""
        g = torch.Generator().manual_seed(_seed(self.cfg.eval_seed, level, 11))
        return self.batch(count, level, g, training=False)

    def answers_per_row(self) -> int:
        """Scored answers per evaluation row (recall: about one per distinct key queried)."""
        return min(self.cfg.queries, self.cfg.pairs) if self.name == "recall" else 1


def rows_from(tokens: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: ``x = tokens``, ``y[t] = tokens[t + 1]`` where token ``t + 1`` is an answer, else -100."""
    y = torch.full_like(tokens, -100)
    y[:, :-1] = torch.where(answer[:, 1:] >= 0, tokens[:, 1:], -100)
    return tokens, y


def score_batch(logits: torch.Tensor, tokens: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Per-answer correctness ``[B, A]`` (A = answers per row, the same in every row) from one teacher-forced
    pass: an answer is correct when the argmax at the position before each of its tokens is that token."""
    pred = logits[:, :-1].argmax(-1)
    ans = answer[:, 1:]
    is_answer = (ans >= 0).long()
    wrong = (pred != tokens[:, 1:]).long() * is_answer
    A = int(answer.max()) + 1
    per = torch.zeros((tokens.shape[0], A), dtype=torch.long)
    per.scatter_add_(1, ans.clamp(min=0), wrong)
    present = torch.zeros_like(per).scatter_add_(1, ans.clamp(min=0), is_answer) > 0
    if not bool(present.all()):
        raise ValueError("score_batch needs the same number of answers in every row.")
    return per == 0


def distance_bins(max_distance: int) -> list[int]:
    """Upper edges of the distance bins of recall: 4, 8, 16, ... up to the first power of two >=
    ``max_distance`` (the same bins at every length, so heat-map rows line up across columns)."""
    edges, e = [], 4
    while e < max_distance:
        edges.append(e)
        e *= 2
    edges.append(e)
    return edges


def bin_of(distance: int, edges: list[int]) -> int:
    for i, e in enumerate(edges):
        if distance <= e:
            return i
    return len(edges) - 1

