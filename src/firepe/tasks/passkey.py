"""Passkey retrieval (Mohtashami & Jaggi, 2023), built offline and deterministically.

A prompt of exactly ``length`` tokens::

    filler[:p] + "\\nThe pass key is 48213. Remember it.\\n" + filler[p:] + "\\nWhat is the pass key? The pass key is "

and the answer ``48213`` (the classic format of Mohtashami & Jaggi: the question ends by
repeating the key sentence's prefix, so the answer is a copy; passkey takes no ``"\\nAnswer: "``
prefix). The key sentence starts at token ``p = round(depth * F)`` of the ``F`` filler tokens, so
depth 0 puts it first and depth 1 right before the question. The filler is the run's corpus (its
validation split when scoring, its training split when fine-tuning) or the classic repeated
sentences (``filler="classic"``). Lengths are counted in the run's tokens, so one task spans any
multiple of the training length.

Example ``index`` draws its key and its filler offset from ``Random(f"{seed}:{index}")``: the same
example has the same key and filler start at every length and depth (the needle-in-a-haystack
grid scores the same examples everywhere). A key whose digits occur elsewhere in the prompt is
redrawn, so the key is present exactly once. Scored by exact match of the leading digits of the
generation (:meth:`PasskeyTask.postprocess`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ..limits import split_list
from .base import Prepared

__all__ = ["CLASSIC_FILLER", "QUESTION", "key_sentence", "PasskeyTask", "parse_depths", "DEFAULT_DEPTHS",
           "corpus_filler"]

CLASSIC_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key? The pass key is "
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
FILLERS = ("corpus", "classic")


def key_sentence(key: str) -> str:
    return f"\nThe pass key is {key}. Remember it.\n"


def parse_depths(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``: fractions of the filler before the key, each in [0, 1]."""
    depths = split_list(text, float, "--depths", "numbers in [0, 1]", "0,0.25,0.5,0.75,1")
    bad = [d for d in depths if not 0 <= d <= 1]  # NaN fails too
    if bad:
        raise ValueError(f"--depths must be numbers in [0, 1] (fractions of the context), got {bad[0]}.")
    return sorted(set(depths))


#: filler tokens read from the corpus (the filler wraps around when a prompt needs more)
FILLER_TOKENS = 1 << 20


def corpus_filler(data_cfg, tokenizer, split: str) -> list[int]:
    """Passkey filler from a run's corpus: the first :data:`FILLER_TOKENS` tokens of its ``train``
    split (fine-tuning) or ``validation`` split (scoring), documents joined as in training."""
    from ..data import split_tokens

    return split_tokens(data_cfg, tokenizer, split, FILLER_TOKENS).tolist()


class PasskeyTask:
    """Generates :class:`~firepe.tasks.base.Prepared` passkey examples for one tokenizer.

    ``filler_ids``: the token stream the filler is cut from (wrapped around when too short);
    ``None`` uses :data:`CLASSIC_FILLER`. Scored by exact match of the generated key.
    """

    name = "passkey"
    metric = "accuracy"
    metrics = ("accuracy",)
    labels = None

    def __init__(self, tokenizer, filler_ids: Sequence[int] | None = None, seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"the passkey seed must be an integer >= 0, got {seed!r}.")
        self.tokenizer, self.seed = tokenizer, seed
        if filler_ids is None:
            filler_ids = tokenizer.encode(CLASSIC_FILLER * 64)
        self.filler = list(filler_ids)
        if len(self.filler) < 16:
            raise ValueError(f"the passkey filler has {len(self.filler)} tokens; it needs at least 16 "
                             "(use a larger validation split or filler 'classic').")
        self.question = tokenizer.encode(QUESTION)
        self._fixed = len(self.question) + len(tokenizer.encode(key_sentence("00000")))

    @staticmethod
    def postprocess(text: str) -> str:
        """The generated answer as scored: its leading digits (``"48213. Remember"`` -> ``"48213"``),
        so a model that goes on after the key (no end-of-document token) is still judged on the key."""
        m = re.match(r"\s*(\d+)", text)
        return m.group(1) if m else text.strip()

    def min_length(self) -> int:
        """The shortest prompt: key sentence + question + answer prefix and one filler token."""
        return self._fixed + 1

    def _filler(self, start: int, n: int) -> list[int]:
        f = self.filler
        out = []
        while len(out) < n:
            take = f[start: start + n - len(out)]
            out += take
            start = 0
        return out

    def example(self, index: int, length: int, depth: float, for_training: bool = False) -> Prepared:
        """Example ``index`` with its key at ``depth``: a prompt of ``length`` tokens (scoring) or
        prompt + answer + end-of-document of ``length + 1`` tokens (training)."""
        rng = random.Random(f"{self.seed}:{index}")
        start = rng.randrange(len(self.filler))
        tok = self.tokenizer
        for _ in range(100):
            key = str(rng.randint(10000, 99999))
            answer = tok.encode(key) + [tok.eos_id]
            sentence = tok.encode(key_sentence(key))
            prompt_len = length + 1 - len(answer) if for_training else length
            n = prompt_len - len(sentence) - len(self.question)
            if n < 1:
                need = len(sentence) + len(self.question) + 1 + (len(answer) - 1 if for_training else 0)
                raise ValueError(f"passkey needs a length of at least {need} tokens (key sentence, question "
                                 f"and answer), got {length}.")
            filler = self._filler(start, n)
            p = round(depth * n)
            if key not in tok.decode(filler):
                break
        else:  # pragma: no cover - a filler made of 5-digit numbers
            raise ValueError("the passkey filler contains every key tried; use filler 'classic'.")
        prompt = filler[:p] + sentence + filler[p:] + self.question
        return Prepared(f"passkey-{index}", prompt, answer, (key,), length, depth=depth)

    def prepared(self, length: int, depth: float, count: int, for_training: bool = False) -> list[Prepared]:
        return [self.example(i, length, depth, for_training) for i in range(count)]
