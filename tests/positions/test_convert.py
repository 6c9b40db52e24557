"""Theorem 3.1: FIRE reproduces T5, ALiBi, Kerple and Sandwich exactly up to max_len."""

import pytest
import torch

from firepe import positions as P
from firepe.positions import convert


def max_causal_error(a, b, max_len, rows=None, block=512):
    """max |a.bias - b.bias| over 0 <= j <= i <= max_len, in row blocks (bounded memory)."""
    rows = torch.arange(max_len + 1) if rows is None else rows
    keys = torch.arange(max_len + 1)
    worst = 0.0
    for start in range(0, len(rows), block):
        q = rows[start:start + block]
        with torch.no_grad():
            diff = (a.bias(q, keys) - b.bias(q, keys)).abs()
        causal = keys[None, :] <= q[:, None]
        worst = max(worst, diff[:, causal].max().item())
    return worst


def random_target(name, heads, seed):
    torch.manual_seed(seed)
    enc = P.build(name, num_heads=heads, head_dim=16).double()
    with torch.no_grad():
        if name == "t5":
            enc.relative_attention_bias.weight.normal_(0, 1)
        elif name.startswith("kerple"):
            enc.r1_raw.uniform_(0.05, 3.0)
            enc.r2_raw.uniform_(0.05, 1.95 if name == "kerple_power" else 3.0)
        elif name == "alibi":
            enc.slopes.uniform_(0.001, 1.0)
        elif name == "sandwich":
            enc.scales.uniform_(-2.0, 2.0)
    return enc


NAMES = ["alibi", "t5", "kerple_log", "kerple_power", "sandwich"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_small(name, seed):
    target = random_target(name, heads=3, seed=seed)
    for max_len in (1, 37, 300):
        fire = convert.to_fire(target, max_len, dtype=torch.float64)
        assert max_causal_error(fire, target, max_len) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [7, 8, 9])
def test_exact_at_4096(name, seed):
    target = random_target(name, heads=2, seed=seed)
    fire = convert.to_fire(target, 4096, dtype=torch.float64)
    # every row for the cheap linear constructions, a spread of rows (incl. the last) for the rest
    spread = torch.cat([torch.arange(0, 4097, 61), torch.tensor([4095, 4096])])
    rows = None if name in ("alibi", "kerple_log") else spread
    assert max_causal_error(fire, target, 4096, rows=rows) <= 1e-5


def test_t5_general_eq5():
    values = torch.randn(2, 4, dtype=torch.float64)
    fire = convert.from_buckets([1, 5, 9], values, max_len=50, dtype=torch.float64)
    q = torch.arange(51)
    b = fire.bias(q, q)
    for i in range(51):
        for j in range(i + 1):
            d = i - j
            k = 0 if d < 1 else 1 if d < 5 else 2 if d < 9 else 3
            torch.testing.assert_close(b[:, i, j], values[:, k])


@pytest.mark.parametrize("name", ["alibi", "t5", "kerple_log", "kerple_power"])
def test_mismatch_allowed_past_max_len(name):
    # documented: past max_len the normalizer becomes i and the construction stops being exact
    target = random_target(name, heads=2, seed=3)
    max_len = 40 if name != "t5" else 300
    fire = convert.to_fire(target, max_len, dtype=torch.float64)
    q, k = torch.tensor([4 * max_len]), torch.arange(4 * max_len + 1)
    assert not torch.allclose(fire.bias(q, k), target.bias(q, k), atol=1e-5)


def test_constructions_use_paper_ingredients():
    assert convert.to_fire(random_target("t5", 2, 0), 64).activation == "step"
    assert convert.to_fire(random_target("sandwich", 2, 0), 64).activation == "cos"
    assert convert.to_fire(random_target("kerple_power", 2, 0), 64).activation == "power"
    heads = convert.to_fire(random_target("kerple_log", 2, 0), 64)
    assert all(h.log_transform for h in heads.heads)
    assert not convert.to_fire(random_target("alibi", 2, 0), 64).log_transform


def test_unsupported_module():
    with pytest.raises(ValueError, match="no Theorem 3.1 construction for FIRE"):
        convert.to_fire(P.build("fire", num_heads=2, head_dim=8), 10)
    with pytest.raises(ValueError, match="max_len"):
        convert.from_alibi([0.5], 0)
