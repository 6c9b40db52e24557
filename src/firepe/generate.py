"""One decoding loop, outside the model (as gpt-fast keeps ``prefill`` / ``decode_one_token``): it serves
:meth:`firepe.model.GPT.generate` (sampling), :func:`firepe.score.greedy_generate` (task scoring) and
every caller that continues a prompt.

* :func:`prefill` -- the prompt ``[B, T]`` through the model, filling a :class:`~firepe.attention.KVCache`;
  the logits of its last position ``[B, V]``.
* :func:`decode_one_token` -- one token per row ``[B, 1]`` at the next position; its logits ``[B, V]``.
* :func:`pick` -- the next token ``[B, 1]`` from logits: greedy at temperature 0, else sampled from
  ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens.
* :func:`decode` -- the loop: up to ``max_new_tokens`` tokens ``[B, N]``, stopping early once every row
  has produced ``eos_id`` (when given). ``use_cache=False`` recomputes the whole sequence each step (the
  reference the cached path is tested against).

The model is any :class:`~firepe.model.GPT` (called as ``model(ids, cache=...)``); ids are checked once,
at the prefill: sampled ids are in range, so no step syncs with the host for a check.
"""

from __future__ import annotations

import torch

from .attention import KVCache

__all__ = ["prefill", "decode_one_token", "pick", "decode"]


def prefill(model, prompt: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits ``[B, V]`` (float32) at the last prompt position; fills ``cache`` when given."""
    logits, _ = model(prompt, cache=cache)
    return logits[:, -1].float()


def decode_one_token(model, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits ``[B, V]`` (float32) of ``token`` ``[B, 1]`` at position ``cache.length``. A firepe GPT skips its
    input check here (the ids come from :func:`pick`, so they are in range: no host sync per step); any other
    model is called as ``model(token, cache=cache)``."""
    unchecked = getattr(model, "_forward", None)
    logits, _ = unchecked(token, None, cache, None, None) if unchecked is not None else model(token, cache=cache)
    return logits[:, -1].float()


def pick(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token ``[B, 1]`` of float logits ``[B, V]``."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def decode(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None, eos_id: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """The new tokens ``[B, N]`` after ``prompt`` ``[B, T]``: ``N = max_new_tokens``, or fewer when ``eos_id``
    is given and every row has produced it (rows that finished earlier go on; callers cut at ``eos_id``)."""
    if max_new_tokens == 0:
        return prompt.new_empty((prompt.shape[0], 0))
    cache = KVCache.empty(model.cfg.n_layer) if use_cache else None
    new: list[torch.Tensor] = []
    logits = prefill(model, prompt, cache)
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    seq = prompt
    while True:
        nxt = pick(logits, temperature, top_k, generator)
        new.append(nxt)
        if len(new) == max_new_tokens:
            break
        if eos_id is not None:
            done |= nxt[:, 0] == eos_id
            if bool(done.all()):
                break
        if cache is not None:
            logits = decode_one_token(model, nxt, cache)
        else:
            seq = torch.cat([seq, nxt], dim=1)
            logits = prefill(model, seq, None)
    return torch.cat(new, dim=1)
