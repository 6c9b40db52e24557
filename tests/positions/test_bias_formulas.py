"""Each bias encoding against the paper's formula, written out independently here (float64)."""

import math

import pytest
import torch

from firepe import positions as P

torch.manual_seed(0)


def pairs(n):
    return [(i, j) for i in range(n) for j in range(i + 1)]


def test_alibi_slopes_power_of_two():
    assert P.alibi_slopes(8) == pytest.approx([2.0 ** -(k + 1) for k in range(8)])
    assert P.alibi_slopes(16) == pytest.approx([2.0 ** -(0.5 * (k + 1)) for k in range(16)])


def test_alibi_slopes_not_power_of_two():
    # 12 heads: the 8-head slopes, then slopes 1, 3, 5, 7 (1-based) of the 16-head sequence.
    expected = [2.0 ** -(k + 1) for k in range(8)] + [2.0 ** -(0.5 * k) for k in (1, 3, 5, 7)]
    assert P.alibi_slopes(12) == pytest.approx(expected)
    assert len(P.alibi_slopes(6)) == 6
    assert P.alibi_slopes(6) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])


def test_alibi_bias_formula():
    enc = P.build("alibi", num_heads=12, head_dim=8).double()
    n = 20
    b = enc.bias(torch.arange(n), torch.arange(n))
    slopes = P.alibi_slopes(12)
    for h in range(12):
        for i, j in pairs(n):
            assert b[h, i, j].item() == pytest.approx(-slopes[h] * (i - j), rel=1e-7)  # float32 slopes


@pytest.mark.parametrize("variant", ["kerple_log", "kerple_power"])
def test_kerple_formula(variant):
    enc = P.build(variant, num_heads=3, head_dim=8).double()
    with torch.no_grad():
        enc.r1_raw.copy_(torch.tensor([0.5, 1.3, 2.0], dtype=torch.float64))
        enc.r2_raw.copy_(torch.tensor([0.2, 1.0, 1.7], dtype=torch.float64))
    n = 30
    b = enc.bias(torch.arange(n), torch.arange(n))
    for h, (r1, r2) in enumerate([(0.5, 0.2), (1.3, 1.0), (2.0, 1.7)]):
        for i, j in pairs(n):
            d = i - j
            want = -r1 * math.log(1 + r2 * d) if variant == "kerple_log" else -r1 * d**r2
            assert b[h, i, j].item() == pytest.approx(want, abs=1e-10)


def test_kerple_parameters_stay_positive():
    enc = P.build("kerple_power", num_heads=2, head_dim=8)
    with torch.no_grad():
        enc.r1_raw.fill_(-3.0)
        enc.r2_raw.fill_(5.0)
    assert (enc.r1 > 0).all() and (enc.r2 > 0).all() and (enc.r2 <= 2).all()


def t5_bucket_reference(n, num_buckets=32, max_distance=128):
    """Eq. (6) with K + 1 = num_buckets, L1 = max_distance."""
    half = num_buckets // 2
    if n < half:
        return n
    if n >= max_distance:
        return num_buckets - 1
    return min(num_buckets - 1, half + math.floor(half * math.log(2 * n / num_buckets)
                                                   / math.log(2 * max_distance / num_buckets)))


@pytest.mark.parametrize("nb,md", [(32, 128), (64, 256), (8, 20)])
def test_t5_buckets_match_eq6(nb, md):
    d = torch.arange(0, 3000)
    got = P.t5_bucket(d, nb, md).tolist()
    assert got == [t5_bucket_reference(n, nb, md) for n in range(3000)]


def test_t5_bias_formula():
    enc = P.build("t5", num_heads=4, head_dim=8).double()
    n = 200
    b = enc.bias(torch.arange(n), torch.arange(n))
    table = enc.relative_attention_bias.weight
    for i, j in pairs(n)[::7]:
        assert torch.equal(b[:, i, j], table[t5_bucket_reference(i - j)])


def test_sandwich_formula():
    enc = P.build("sandwich", num_heads=4, head_dim=16).double()
    dprime = 8
    n = 40
    b = enc.bias(torch.arange(n), torch.arange(n))
    for h in range(4):
        r1 = 4 / (8 * (h + 1))
        for i, j in pairs(n):
            s = sum(math.cos((i - j) / 10000 ** (k / dprime)) for k in range(1, dprime + 1))
            assert b[h, i, j].item() == pytest.approx(r1 * (s - dprime), rel=1e-6, abs=1e-9)  # float32 scales


def test_nope_has_no_bias():
    assert P.build("nope", num_heads=2, head_dim=4).bias(torch.arange(3), torch.arange(3)) is None


@pytest.mark.parametrize("name", ["alibi", "kerple_log", "kerple_power", "t5", "sandwich"])
def test_distance_only_biases_are_shift_invariant(name):
    enc = P.build(name, num_heads=4, head_dim=16).double()
    q, k = torch.arange(50), torch.arange(50)
    for shift in (1, 17, 1000):
        torch.testing.assert_close(enc.bias(q + shift, k + shift), enc.bias(q, k), rtol=0, atol=1e-9)


def test_kv_cache_row_equals_full_row():
    for name in ["alibi", "kerple_log", "t5", "sandwich", "fire"]:
        enc = P.build(name, num_heads=3, head_dim=8).double()
        full = enc.bias(torch.arange(40), torch.arange(40))
        row = enc.bias(torch.tensor([33]), torch.arange(34))
        torch.testing.assert_close(row[:, 0], full[:, 33, :34], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant,field,value,bound", [
    ("kerple_log", "r1_raw", -3.0, 1e-2), ("kerple_log", "r2_raw", 1e-4, 1e-2),
    ("kerple_power", "r1_raw", 0.0, 1e-2), ("kerple_power", "r2_raw", 5.0, 2.0),
])
def test_kerple_parameter_out_of_range_is_clamped_in_place_and_keeps_a_gradient(variant, field, value, bound):
    """As the Kerple reference: clamp the stored value, then use it, so the gradient is not 0 forever."""
    enc = P.build(variant, num_heads=2, head_dim=8, init_r1=0.5, init_r2=0.5)
    with torch.no_grad():
        getattr(enc, field).fill_(value)  # e.g. an optimizer step pushed it out of range
    q = torch.arange(6)
    enc.bias(q, q).sum().backward()
    param = getattr(enc, field)
    assert torch.all(param == bound)
    assert torch.all(param.grad != 0)
    enc.zero_grad()
    for _ in range(2):  # several bias calls before one backward (chunked attention) stay valid
        out = enc.bias(q[:3], q[:3]).sum() + enc.bias(q[3:], q).sum()
    out.backward()


def test_kerple_small_init_gets_a_gradient():
    enc = P.build("kerple_log", num_heads=2, head_dim=8, init_r1=1e-3, init_r2=0.5)
    enc.bias(torch.arange(5), torch.arange(5)).sum().backward()
    assert torch.all(enc.r1_raw == 1e-2) and torch.all(enc.r1_raw.grad != 0)
