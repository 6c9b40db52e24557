"""The training order: per-epoch permutations, the Feistel permutation of large prepared folders, and
rank-local batches."""

import numpy as np
import pytest
import torch

import firepe.data.order as order
from firepe.data import FeistelPermutation, TokenData


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 255, 1000, 4097, 65_537])
def test_feistel_is_a_permutation_of_range_n(n):
    perm = FeistelPermutation(n, key=12345)(np.arange(n))
    assert sorted(perm.tolist()) == list(range(n))
    assert np.array_equal(FeistelPermutation(n, key=12345)(np.arange(n)), perm)  # a pure function of (n, key)


def test_feistel_looks_random():
    n = 100_003
    a = FeistelPermutation(n, key=1)(np.arange(n))
    b = FeistelPermutation(n, key=2)(np.arange(n))
    assert not np.array_equal(a, b)
    # positions and images are uncorrelated, neighbours are scattered, each tenth of the range is hit evenly
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.02
    assert np.median(np.abs(np.diff(a))) > n / 10
    counts = np.bincount(a[: n // 10] * 10 // n, minlength=10)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    # a position maps the same whether computed alone or in a batch
    assert FeistelPermutation(n, key=1)(np.array([777]))[0] == a[777]


def test_feistel_refuses_an_empty_range():
    with pytest.raises(ValueError, match="n >= 1"):
        FeistelPermutation(0, key=0)


class _Disk:
    """A token stream on "disk" (the TokenStream protocol) over an array."""

    def __init__(self, tokens):
        self.tokens = np.asarray(tokens, dtype=np.uint16)

    def __len__(self):
        return len(self.tokens)

    def read(self, start, stop):
        return self.tokens[start:stop]


def test_on_disk_streams_read_what_memory_reads():
    tokens = torch.randint(0, 257, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    mem, disk = TokenData(tokens, 16), TokenData(_Disk(tokens.numpy()), 16)
    for step in (0, 7, 300, 10_000):  # past several epochs
        for a, b in zip(mem.batch(step, 8, seed=3), disk.batch(step, 8, seed=3)):
            assert torch.equal(a, b)


def test_large_on_disk_streams_use_the_feistel_order(monkeypatch):
    monkeypatch.setattr(order, "RANDPERM_LIMIT", 100)
    tokens = np.arange(16 * 500 + 1) % 257
    data = TokenData(_Disk(tokens), 16)
    assert data.num_sequences == 500 and data.randperm_limit == 100
    epoch = torch.cat([data.indices(s, 50, seed=4) for s in range(10)])
    assert sorted(epoch.tolist()) == list(range(500))  # every sequence once per epoch
    assert not torch.equal(epoch, data.permutation(0, 4))  # not torch.randperm's order
    assert not torch.equal(epoch, torch.cat([data.indices(s, 50, seed=4) for s in range(10, 20)]))  # epoch 1 differs
    assert torch.equal(data.indices(3, 50, seed=4), data.indices(3, 50, seed=4))


def test_rank_rows_are_the_strided_rows_of_the_global_batch():
    tokens = torch.arange(2000, dtype=torch.int32) % 257
    for data in (TokenData(tokens, 8), TokenData(_Disk(tokens.numpy()), 8)):
        x, y = data.batch(5, 6, seed=1)
        for rank in range(3):
            xr, yr = data.batch(5, 6, seed=1, rank=rank, world=3)
            assert torch.equal(xr, x[rank::3]) and torch.equal(yr, y[rank::3])


def test_epochs():
    data = TokenData(torch.zeros(1001, dtype=torch.int32), 10)
    assert data.num_sequences == 100 and data.tokens == 1000
    assert data.epochs(50, 4) == 2.0
