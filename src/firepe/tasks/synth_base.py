"""The base of every synthetic task generator (:class:`SynthTask`) and what all of them share: the token
ids 0-2, training rows from generated examples, one-pass exact-match scoring, distance bins.

A generator maps ``(count, level, generator, training)`` to ``(tokens [B, n], answer [B, n], extra)``:
``answer[b, t]`` is the index (within the row) of the answer token ``t`` belongs to, -1 for tokens that
are not answers; ``extra`` holds per-token tensors a task reports by (recall: ``distance``, ``first``;
the RULER tasks: ``depth``) and, for a task with its own position ids, ``positions [B, n]``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["PAD", "SEP", "EOS", "FIRST", "SynthTask", "task_seed", "rows_from", "score_batch", "distance_bins",
           "bin_of"]

PAD, SEP, EOS = 0, 1, 2
#: the first id a task may use for its own tokens
FIRST = 3


def task_seed(*parts: int) -> int:
    """A 63-bit seed from integers (FNV-1a style): the same parts give the same seed on every machine."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class SynthTask:
    """A generated task of a :class:`~firepe.tasks.synthetic.SynthConfig` (build one with
    :func:`firepe.tasks.synthetic.make_task`).

    ``level`` is what a column of the table varies: the sequence length, or the number of digits for
    addition (``level_name``). Subclasses set ``vocab_size`` and implement :meth:`_check` and
    :meth:`_batch`; a task whose level is not its length overrides :meth:`length_of` and
    :meth:`train_level`.
    """

    level_name = "length"

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.name = cfg.task
        self.vocab_size = FIRST

    # -- lengths ---------------------------------------------------------------------------
    def length_of(self, level: int) -> int:
        """Tokens of an example at ``level``."""
        return level

    def train_level(self, seq_len: int) -> int:
        """The level trained on (``seq_len`` unless the task fixes its own)."""
        return seq_len

    def train_length(self, seq_len: int) -> int:
        """The training length in tokens."""
        return self.length_of(self.train_level(seq_len))

    def checked_train_length(self, seq_len: int) -> int:
        """:meth:`train_length`, refused in one line when it cannot hold a training example."""
        level = self.train_level(seq_len)
        self.check_level(level, "training length" if self.level_name == "length" else self.level_name)
        return self.length_of(level)

    def check_level(self, level: int, what: str = "length") -> None:
        """One line naming why ``level`` cannot hold an example."""
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise ValueError(f"the {what} must be an integer >= 1, got {level!r}.")
        self._check(level, what)

    def _check(self, level: int, what: str) -> None:
        raise NotImplementedError

    def levels(self, train_len: int, max_factor: int) -> list[int]:
        """Default columns: the training length x 1, 2, 4, ... ``max_factor``."""
        out, f = [], 1
        while f <= max_factor:
            out.append(train_len * f)
            f *= 2
        return out

    # -- generation --------------------------------------------------------------------------
    def batch(self, count: int, level: int, g: torch.Generator, training: bool = False):
        """``(tokens, answer, extra)`` of ``count`` examples at ``level``."""
        self.check_level(level, self.level_name)
        return self._batch(count, level, g, training)

    def _batch(self, count: int, level: int, g: torch.Generator, training: bool):
        raise NotImplementedError

    def training_rows(self, count: int, seq_len: int, seed: int, step: int):
        """Batch ``step`` of training seed ``seed``: ``(x, y, positions)``, ``x, y`` ``[count, n]`` with ``y`` the
        next token at answer positions and -100 (ignored) elsewhere, ``positions`` the task's position ids
        (None: ``0 .. n-1``); the same for the same arguments."""
        g = torch.Generator().manual_seed(task_seed(seed, step, 7))
        tokens, answer, extra = self.batch(count, self.train_level(seq_len), g, training=True)
        x, y = rows_from(tokens, answer)
        return x, y, extra.get("positions")

    def eval_batch(self, count: int, level: int):
        """The fixed evaluation examples of ``level`` (from ``eval_seed`` and ``level`` only)."""
        g = torch.Generator().manual_seed(task_seed(self.cfg.eval_seed, level, 11))
        return self.batch(count, level, g, training=False)

    def answers_per_row(self) -> int:
        """Scored answers per evaluation row."""
        return 1


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

