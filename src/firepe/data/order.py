"""The order in which training reads its sequences: a seeded permutation per epoch, a pure function of
``(step, seed)``, so a resumed run reads exactly what an uninterrupted one would.

Global batch ``step`` of ``B`` sequences is positions ``step*B .. step*B + B - 1`` of the endless
sequence "epoch 0's permutation, then epoch 1's, ...". A permutation is either

* ``torch.randperm`` of the ``n`` sequences, seeded with ``seed * 1_000_003 + epoch`` (every in-memory
  corpus, and prepared folders of at most :data:`RANDPERM_LIMIT` sequences -- so a small prepared
  corpus trains exactly as the same corpus read into memory), or
* above that, a keyed Feistel permutation (:class:`FeistelPermutation`): each position is mapped on
  its own, in ``O(1)`` memory, so the order of a corpus of any size costs nothing to hold.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..config import is_int

__all__ = ["EpochOrder", "TokenData", "FeistelPermutation", "TokenStream", "RANDPERM_LIMIT"]

#: the most sequences a prepared folder's epoch is permuted with ``torch.randperm`` (8 MiB of indices)
RANDPERM_LIMIT = 1 << 20

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a ``uint64`` array (a bijection of 64-bit words that scatters every bit)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _mix_int(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class FeistelPermutation:
    """A keyed pseudo-random permutation of ``range(n)``, evaluated index by index.

    A balanced Feistel network on ``2h`` bits (``4^h >= n``, the smallest such ``h >= 1``) with
    :data:`ROUNDS` rounds ``(L, R) -> (R, L xor F_r(R))``, ``F_r(R) = mix(R xor k_r) mod 2^h`` (any round
    function gives a bijection); outputs ``>= n`` are sent through the network again ("cycle walking")
    until they fall in range, which keeps it a bijection of ``range(n)``. Since ``4^h < 4n``, a position
    needs fewer than four passes on average.
    """

    ROUNDS = 6

    def __init__(self, n: int, key: int):
        if not is_int(n) or n < 1:
            raise ValueError(f"a permutation needs n >= 1 items, got {n!r}.")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [np.uint64(_mix_int(_mix_int(key) ^ _mix_int(r + 1))) for r in range(self.ROUNDS)]

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << h) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The images of ``positions`` (integers in ``[0, n)``), as ``int64``."""
        x = np.asarray(positions, dtype=np.uint64)
        x = self._round_trip(x)
        out = x >= np.uint64(self.n)
        while out.any():
            x[out] = self._round_trip(x[out])
            out = x >= np.uint64(self.n)
        return x.astype(np.int64)


class EpochOrder:
    """The data order of training: ``num_sequences`` items visited in a seeded permutation per epoch.

    ``indices(step, batch_size, seed)`` is a pure function of its arguments, so a resumed run sees
    the same data order. Subclasses set ``num_sequences``; ``randperm_limit`` (None: no limit) is the
    largest ``num_sequences`` permuted with ``torch.randperm``, above it :class:`FeistelPermutation`.
    """

    num_sequences: int
    randperm_limit: int | None = None

    def permutation(self, epoch: int, seed: int) -> torch.Tensor:
        key = (epoch, seed)
        if getattr(self, "_perm_key", None) != key:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self._perm, self._perm_key = torch.randperm(self.num_sequences, generator=gen), key
        return self._perm

    def _permuted(self, epoch: int, seed: int, offsets: np.ndarray) -> np.ndarray:
        if self.randperm_limit is None or self.num_sequences <= self.randperm_limit:
            return self.permutation(epoch, seed).numpy()[offsets]
        return FeistelPermutation(self.num_sequences, seed * 1_000_003 + epoch)(offsets)

    def indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Sequence indices of global batch ``step``: consecutive slices of per-epoch permutations."""
        n = self.num_sequences
        epochs, offsets = np.divmod(step * batch_size + np.arange(batch_size, dtype=np.int64), n)
        out = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self._permuted(int(epoch), seed, offsets[rows])
        return torch.from_numpy(out)

    def epochs(self, steps: int, batch_size: int) -> float:
        """How many times ``steps`` global batches of ``batch_size`` read the ``num_sequences`` items."""
        return steps * batch_size / self.num_sequences


class TokenStream(Protocol):
    """A token stream on disk (:class:`firepe.data.shards.ShardedTokens`): its length and windows of it."""

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class TokenData(EpochOrder):
    """Training sequences cut from the stream: sequence ``n`` is ``stream[n*L : n*L + L + 1]``.

    ``stream``: a 1-D integer tensor in memory, or a :class:`TokenStream` on disk (each batch reads only
    its own windows; the order switches to the Feistel permutation above :data:`RANDPERM_LIMIT`
    sequences). ``batch(step, batch_size, seed)`` is a pure function of its arguments (seeded
    permutation per epoch), so a resumed run sees the same data order.
    """

    def __init__(self, stream, seq_len: int):
        if not is_int(seq_len) or seq_len < 2:
            raise ValueError(f"the training length must be at least 2 tokens, got {seq_len!r}.")
        on_disk = not isinstance(stream, torch.Tensor) and hasattr(stream, "read")
        if not on_disk and (not isinstance(stream, torch.Tensor) or stream.dim() != 1 or stream.is_floating_point()):
            raise ValueError(f"the token stream must be a 1-D integer tensor, got "
                             f"{getattr(stream, 'shape', type(stream).__name__)} {getattr(stream, 'dtype', '')}.")
        self.stream, self.seq_len = stream, seq_len
        self.randperm_limit = RANDPERM_LIMIT if on_disk else None
        self.num_sequences = (len(stream) - 1) // seq_len
        if self.num_sequences < 1:
            raise ValueError(f"the training corpus has {len(stream)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; use a larger corpus or a shorter --seq-len.")

    @property
    def tokens(self) -> int:
        """Distinct target tokens of an epoch (``num_sequences * seq_len``)."""
        return self.num_sequences * self.seq_len

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of rows ``rank, rank + world, ...`` of global batch ``step`` (a
        torchrun rank reads only its own rows)."""
        idx = self.indices(step, batch_size, seed)[rank::world]
        if isinstance(self.stream, torch.Tensor):
            offsets = idx[:, None] * self.seq_len + torch.arange(self.seq_len + 1)
            chunk = self.stream[offsets].long()
        else:
            n = self.seq_len
            rows = [self.stream.read(i * n, i * n + n + 1) for i in idx.tolist()]
            chunk = torch.from_numpy(np.stack(rows).astype(np.int64)) if rows else torch.zeros(0, n + 1,
                                                                                               dtype=torch.long)
        return chunk[:, :-1], chunk[:, 1:]
