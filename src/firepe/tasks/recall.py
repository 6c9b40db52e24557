"""``recall``: multi-query associative recall (Zoology's MQAR, a multi-needle passkey).

``pairs`` key -> value bindings scattered at random positions through random filler, then ``queries``
queries ``k v`` at the end; the ``v`` after each query key is an answer (1 token). With
``format="fact"`` (default) one binding is one token ``k=v`` (``keys x values`` fact tokens), so a
query is answered by one content lookup over any distance; ``format="split"`` writes a binding as two
tokens ``k v`` (MQAR proper), which needs an induction circuit (two composed heads). Training
supervises every query; scoring counts the first query of each key only (a later one could copy the
value of an earlier query instead of finding the binding). Example (``pairs=2``, n=16, ``queries=3``;
``.`` filler)::

    . . k2=v7 . . . k5=v1 . . .   k5 [v1] k2 [v7] k5 [v1]

``extra``: ``distance [B, n]`` (query position - binding position at each answer token) and ``first``
(the answers scoring counts).
"""

from __future__ import annotations

import torch

from .synth_base import FIRST, SynthTask

__all__ = ["RecallTask"]


class RecallTask(SynthTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        c = cfg
        self.fill0 = FIRST
        self.key0 = self.fill0 + c.filler
        self.val0 = self.key0 + c.keys
        self.fact0 = self.val0 + c.values
        self.vocab_size = self.fact0 + (c.keys * c.values if c.format == "fact" else 0)

    def _check(self, level: int, what: str) -> None:
        c = self.cfg
        ctx = level - 2 * c.queries
        need = c.pairs if c.format == "fact" else 2 * c.pairs
        if ctx < need:
            raise ValueError(f"recall at length {level}: {c.queries} queries (2 tokens each) and {c.pairs} "
                             f"bindings ({need} tokens) do not fit; use fewer --queries/--pairs or a longer "
                             f"length (at least {2 * c.queries + need}).")

    def answers_per_row(self) -> int:
        """About one scored answer per distinct key queried."""
        return min(self.cfg.queries, self.cfg.pairs)

    def _batch(self, B: int, n: int, g: torch.Generator, training: bool):
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
