"""RULER-style tasks (Hsieh et al., 2024): the synthetic tasks of RULER that need no downloaded text, in
firepe's own small vocabulary.

Vocabulary of the needle tasks (``niah_*``, ``vartrack``): ``noise`` noise tokens ``n0 .. n{P-1}``, the
ten digits, ``names`` key (variable) names, and ``?`` (the query mark); ``=`` is ``SEP``. The haystack is
RULER's "repeated noise": the fixed pattern ``n0 n1 .. n{P-1}`` repeated, with the needles inserted at
random points (the pattern runs on across a needle). A needle is ``k v1 .. vL``: a key and a value of
``value_len`` digits. The context (haystack with needles) fills the sequence up to the query, and the
answer follows the query; the answer tokens are supervised and scored (one teacher-forced pass, exact
match of the whole answer). ``extra["depth"]`` holds, at every answer token, the relative position of
the needle (statement) it comes from in the context, ``start / (context - needle length)`` in [0, 1];
scoring bins each answer by the depth of its first token (:func:`by_depth`). Examples (``L=2``, ``P=4``;
``needles=2`` for multivalue, 3 for multiquery with ``query_keys=2``, ``chains=2 hops=2`` for vartrack; the
length n in brackets after the name; answers in brackets)::

    niah_single (24)      n0 n1 n2 k5 3 8 n3 n0 n1 n2 n3 n0 n1 n2 n3 n0 n1 n2 n3 n0   ? k5 [3 8]
    niah_multikey (24)    n0 k2 7 1 n1 n2 k5 3 8 n3 n0 k9 0 0 n1 n2 n3 n0 n1 n2   ? k5 [3 8]
    niah_multivalue (24)  n0 k5 7 1 n1 n2 k5 3 8 n3 n0 n1 n2 n3 n0 n1 n2 n3   ? k5 [7 1 3 8]
    niah_multiquery (24)  n0 k2 7 1 n1 n2 k5 3 8 n3 n0 k9 0 0 n1 n2   ? k9 [0 0] ? k2 [7 1]
    vartrack (31)         n0 k4 = 6 1 n1 k7 = 2 2 k1 = k4 n2 k3 = k7 k8 = k1 n3 k6 = k3 n0   ? 6 1 [k4 k1 k8]

``niah_multikey``/``niah_multiquery``: ``needles`` needles of distinct keys, one (``query_keys``
distinct ones, each a separate answer) queried. ``niah_multivalue``: ``needles`` needles of the same key;
the answer is every value in order of appearance. ``vartrack``: ``chains`` chains ``X1 = value``, ``X2 =
X1``, ... (``hops`` copies each; distinct names, distinct values) interleaved, each chain in order; the
query gives a value, the answer is the names of its chain in order.

``cwe`` / ``fwe`` (common / frequent word extraction): the context is a shuffled bag of words (``words``
word tokens), then ``?`` and the ``top`` most frequent words, most frequent first (one answer). The counts
depend only on the length, so ties are impossible by construction (:meth:`WordTask.counts`): ``cwe``
gives ``top`` common words ``top + 2 - i`` units each (rank ``i``) and every other word one unit;
``fwe`` gives rank ``r`` the count ``floor(m / ((r + 1) H))`` (Zipf, exponent 1; ``H`` the harmonic number,
``m`` the context). Which word has which rank is random; the context is left-padded with ``PAD``.
``cwe``, ``top=2``, 6 words (counts 4, 3, 1, 1, 1, 1), n=15: ``PAD w3 w0 w3 w1 w3 w0 w5 w2 w3 w4 w0 ? [w3 w0]``.
"""

from __future__ import annotations

import math

import torch

from .synth_base import FIRST, PAD, SEP, SynthTask

__all__ = ["NEEDLE_TASKS", "WORD_TASKS", "RULER_TASKS", "NeedleTask", "WordTask", "check_ruler_options",
           "by_depth", "DEPTH_BINS"]

NEEDLE_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vartrack")
WORD_TASKS = ("cwe", "fwe")
RULER_TASKS = NEEDLE_TASKS + WORD_TASKS
#: the depth bins of ``by_depth`` (0-20%, ..., 80-100%)
DEPTH_BINS = 5


def check_ruler_options(c) -> None:
    """One line naming a RULER option of ``c`` (a ``SynthConfig``) that is out of range."""
    for name in ("noise", "names", "value_len", "needles", "query_keys", "chains", "hops", "words", "top"):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer in [1, 4096], got {v!r}.")
    if c.value_len > 16:
        raise ValueError(f"--value-len must be at most 16 digits, got {c.value_len}.")
    if c.task in ("niah_multikey", "niah_multiquery") and c.needles > c.names:
        raise ValueError(f"--needles {c.needles} is more than the {c.names} distinct keys (--names); each needle "
                         "of niah_multikey/multiquery needs its own key.")
    if c.task == "niah_multiquery" and c.query_keys > c.needles:
        raise ValueError(f"--query-keys {c.query_keys} is more than the {c.needles} needles (--needles); each "
                         "query asks a distinct needle.")
    if c.task == "vartrack" and c.chains * (c.hops + 1) > c.names:
        raise ValueError(f"vartrack needs --chains x (--hops + 1) = {c.chains * (c.hops + 1)} distinct variable "
                         f"names, more than --names {c.names}.")
    if c.task == "vartrack" and c.chains > 10 ** c.value_len:
        raise ValueError(f"--chains {c.chains} needs distinct values; {c.value_len} digits (--value-len) give "
                         f"only {10 ** c.value_len}.")
    if c.task in WORD_TASKS and c.top >= c.words:
        raise ValueError(f"--top {c.top} must be less than --words {c.words} (the top words and at least one "
                         "other word).")


def by_depth(depth: torch.Tensor, answer: torch.Tensor, ok: torch.Tensor) -> list[dict]:
    """Answers by depth (``DEPTH_BINS`` equal bins of [0, 1]): each answer at the depth of its first token.
    ``ok`` is the row-major correctness of :func:`score_batch` (answer ids increase along a row)."""
    prev = torch.cat([torch.full_like(answer[:, :1], -1), answer[:, :-1]], 1)
    d = depth[(answer >= 0) & (answer != prev)]  # one per answer, row-major
    if d.numel() != ok.numel():
        raise ValueError("by_depth needs one depth per scored answer.")
    bins = [[0, 0] for _ in range(DEPTH_BINS)]
    for x, c in zip(d.tolist(), ok.tolist()):
        b = bins[min(int(x * DEPTH_BINS), DEPTH_BINS - 1)]
        b[0] += int(c)
        b[1] += 1
    return [{"min_depth": i / DEPTH_BINS, "max_depth": (i + 1) / DEPTH_BINS, "correct": c, "answers": a}
            for i, (c, a) in enumerate(bins)]


class NeedleTask(SynthTask):
    """The needle tasks: ``niah_single``, ``niah_multikey``, ``niah_multivalue``, ``niah_multiquery``,
    ``vartrack`` (formats: the module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.noise0 = FIRST
        self.digit0 = self.noise0 + cfg.noise
        self.name0 = self.digit0 + 10
        self.query = self.name0 + cfg.names
        self.vocab_size = self.query + 1

    # -- sizes -------------------------------------------------------------------------------
    def _needed(self) -> tuple[int, int]:
        """``(context tokens of the needles, tokens of the queries and answers)``."""
        c, L = self.cfg, self.cfg.value_len
        if self.name == "niah_single":
            return 1 + L, 2 + L
        if self.name == "niah_multikey":
            return c.needles * (1 + L), 2 + L
        if self.name == "niah_multivalue":
            return c.needles * (1 + L), 2 + c.needles * L
        if self.name == "niah_multiquery":
            return c.needles * (1 + L), c.query_keys * (2 + L)
        return c.chains * (2 + L) + c.chains * c.hops * 3, 1 + L + c.hops + 1  # vartrack

    def _check(self, level: int, what: str) -> None:
        ctx, tail = self._needed()
        if level < ctx + tail:
            raise ValueError(f"{self.name} at {what} {level}: the needles ({ctx} tokens) and the query and answer "
                             f"({tail} tokens) do not fit; use a length of at least {ctx + tail} or fewer/shorter "
                             "needles.")

    def answers_per_row(self) -> int:
        return self.cfg.query_keys if self.name == "niah_multiquery" else 1

    # -- generation --------------------------------------------------------------------------
    def _ints(self, g: torch.Generator, high: int, size: int) -> list[int]:
        return torch.randint(0, high, (size,), generator=g).tolist()

    def _value(self, g: torch.Generator) -> list[int]:
        return [self.digit0 + d for d in self._ints(g, 10, self.cfg.value_len)]

    def _keys(self, g: torch.Generator, count: int) -> list[int]:
        """``count`` distinct names."""
        return [self.name0 + k for k in torch.randperm(self.cfg.names, generator=g)[:count].tolist()]

    def _haystack(self, ctx: int, pieces: list[list[int]], g: torch.Generator) -> tuple[list[int], list[float]]:
        """The repeated-noise haystack of ``ctx`` tokens with ``pieces`` inserted in order at random points;
        the depth of each piece."""
        P = self.cfg.noise
        free = ctx - sum(len(p) for p in pieces)
        cuts = sorted(self._ints(g, free + 1, len(pieces)))
        out, depths, done = [], [], 0
        for cut, piece in zip(cuts, pieces):
            out += [self.noise0 + i % P for i in range(done, cut)]
            depths.append(len(out) / max(1, ctx - len(piece)))
            out += piece
            done = cut
        out += [self.noise0 + i % P for i in range(done, free)]
        return out, depths

    def _row(self, ctx: int, g: torch.Generator):
        """``(context, query tail as [(token, answer id, depth)])`` of one example."""
        c = self.cfg
        Q = self.query
        if self.name == "vartrack":
            return self._vartrack(ctx, g)
        if self.name == "niah_multivalue":
            key = self._keys(g, 1)[0]
            values = [self._value(g) for _ in range(c.needles)]
            hay, depth = self._haystack(ctx, [[key, *v] for v in values], g)
            return hay, [(Q, -1, 0.0), (key, -1, 0.0)] + [(t, 0, d) for v, d in zip(values, depth) for t in v]
        count = 1 if self.name == "niah_single" else c.needles
        keys = self._keys(g, count)
        values = [self._value(g) for _ in range(count)]
        hay, depth = self._haystack(ctx, [[k, *v] for k, v in zip(keys, values)], g)
        asked = torch.randperm(count, generator=g)[:self.answers_per_row()].tolist()
        tail = []
        for a, j in enumerate(asked):
            tail += [(Q, -1, 0.0), (keys[j], -1, 0.0)] + [(t, a, depth[j]) for t in values[j]]
        return hay, tail

    def _vartrack(self, ctx: int, g: torch.Generator):
        c = self.cfg
        names = self._keys(g, c.chains * (c.hops + 1))
        chains = [names[i * (c.hops + 1):(i + 1) * (c.hops + 1)] for i in range(c.chains)]
        values: list[list[int]] = []
        while len(values) < c.chains:  # distinct values
            v = self._value(g)
            if v not in values:
                values.append(v)
        order = torch.randperm(c.chains * (c.hops + 1), generator=g).tolist()
        which = [i % c.chains for i in order]  # a random interleaving; each chain's statements stay in order
        nxt = [0] * c.chains
        pieces, owner = [], []
        for ch in which:
            j = nxt[ch]
            nxt[ch] += 1
            rhs = values[ch] if j == 0 else [chains[ch][j - 1]]
            pieces.append([chains[ch][j], SEP, *rhs])
            owner.append((ch, j))
        hay, depth = self._haystack(ctx, pieces, g)
        at = {o: d for o, d in zip(owner, depth)}
        q = int(torch.randint(0, c.chains, (1,), generator=g))
        tail = [(self.query, -1, 0.0)] + [(t, -1, 0.0) for t in values[q]]
        return hay, tail + [(name, 0, at[(q, j)]) for j, name in enumerate(chains[q])]

    def _batch(self, B: int, n: int, g: torch.Generator, training: bool):
        tail_len = self._needed()[1]
        tokens = torch.full((B, n), PAD, dtype=torch.long)
        answer = torch.full((B, n), -1, dtype=torch.long)
        depth = torch.zeros((B, n))
        for r in range(B):
            hay, tail = self._row(n - tail_len, g)
            tokens[r] = torch.tensor(hay + [t for t, _, _ in tail])
            answer[r, len(hay):] = torch.tensor([a for _, a, _ in tail])
            depth[r, len(hay):] = torch.tensor([d for _, _, d in tail])
        return tokens, answer, {"depth": depth}


class WordTask(SynthTask):
    """``cwe`` / ``fwe``: a bag of words, ``?``, the ``top`` most frequent words (module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.word0 = FIRST
        self.query = self.word0 + cfg.words
        self.vocab_size = self.query + 1

    def counts(self, n: int) -> list[int]:
        """The count of the word of every rank (most frequent first) at length ``n``."""
        c = self.cfg
        m = n - 1 - c.top
        if self.name == "cwe":
            weights = [c.top + 2 - i for i in range(c.top)] + [1] * (c.words - c.top)
            u = max(0, m) // sum(weights)
            return [w * u for w in weights]
        h = sum(1 / (r + 1) for r in range(c.words))
        return [math.floor(max(0, m) / ((r + 1) * h)) for r in range(c.words)]

    def _check(self, level: int, what: str) -> None:
        k = self.cfg.top
        cnt = self.counts(level)
        if not all(a > b for a, b in zip(cnt[:k], cnt[1:k + 1])) or cnt[k] < 1:
            raise ValueError(f"{self.name} at {what} {level}: too short to give the top {k} of {self.cfg.words} words "
                             f"distinct counts above the others (counts {cnt[:k + 1]}); use a longer length or "
                             "fewer --words/--top.")

    def _batch(self, B: int, n: int, g: torch.Generator, training: bool):
        k = self.cfg.top
        cnt = self.counts(n)
        tokens = torch.full((B, n), PAD, dtype=torch.long)
        answer = torch.full((B, n), -1, dtype=torch.long)
        answer[:, n - k:] = 0
        for r in range(B):
            rank = [self.word0 + w for w in torch.randperm(self.cfg.words, generator=g).tolist()]
            bag = torch.tensor([w for w, m in zip(rank, cnt) for _ in range(m)])
            bag = bag[torch.randperm(len(bag), generator=g)]
            start = n - 1 - k - len(bag)
            tokens[r, start:n - 1 - k] = bag
            tokens[r, n - 1 - k] = self.query
            tokens[r, n - k:] = torch.tensor(rank[:k])
        return tokens, answer, {}
