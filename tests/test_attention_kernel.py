"""The fused CPU attention-with-bias kernel against an independent formula, its variants, threads and
routing from the ``blocked`` backend."""

import shutil

import pytest
import torch

from firepe import attention, attention_kernel
from firepe.attention import attend_blocked

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler on this machine")


def _reference(q, k, v, bias, q_pos, k_pos):
    """softmax(q k^T / sqrt(D) + bias) v over the keys with k_pos <= q_pos, float64; rows with no key: 0."""
    q, k, v, bias = (t.double() for t in (q, k, v, bias))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
    seen = k_pos[None, :] <= q_pos[:, None]
    scores = scores.masked_fill(~seen, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    return probs @ v


CASES = {  # B, H, D, q_pos, k_pos
    "square": (2, 4, 32, torch.arange(37), torch.arange(37)),
    "odd_head_dim": (1, 3, 12, torch.arange(29), torch.arange(29)),
    "tiny_head_dim": (2, 1, 5, torch.arange(9), torch.arange(9)),
    "cache_rows": (2, 2, 16, torch.arange(50, 61), torch.arange(61)),
    "one_query": (3, 2, 8, torch.tensor([20]), torch.arange(21)),
    "shifted_keys": (1, 2, 16, torch.arange(40, 70), torch.arange(30, 70)),
    "random_positions": (2, 2, 16, torch.tensor([3, 9, 10, 31, 50]), torch.tensor([3, 9, 10, 31, 50])),
}


def _inputs(B, H, D, Q, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (Q, K, K))
    bias = torch.randn(H, Q, K, generator=g)
    return [t.requires_grad_() for t in (q, k, v, bias)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_equal_the_formula(case):
    B, H, D, q_pos, k_pos = CASES[case]
    q, k, v, bias = _inputs(B, H, D, len(q_pos), len(k_pos))
    assert attention_kernel.supports(q, k, v, bias)
    out = attention_kernel.fused_bias_attention(q, k, v, bias, q_pos, k_pos)
    ref = _reference(q, k, v, bias, q_pos, k_pos)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, (q, k, v, bias), cot)
    want = torch.autograd.grad(ref, (q, k, v, bias), cot.double())
    for name, a, b in zip("q k v bias".split(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    seen = k_pos[None, :] <= q_pos[:, None]
    assert (got[3][:, ~seen] == 0).all()  # no gradient where a key is not visible


def test_bias_past_the_visible_keys_is_never_read():
    q, k, v, bias = _inputs(2, 2, 8, 16, 16)
    pos = torch.arange(16)
    out = attention_kernel.fused_bias_attention(q, k, v, bias, pos, pos)
    poisoned = bias.detach().clone()
    poisoned[:, ~(pos[None, :] <= pos[:, None])] = float("nan")
    assert torch.equal(out, attention_kernel.fused_bias_attention(q, k, v, poisoned, pos, pos))


def test_a_query_that_sees_no_key_gets_zeros():
    q, k, v, bias = _inputs(1, 2, 8, 3, 4)
    out = attention_kernel.fused_bias_attention(q, k, v, bias, torch.tensor([0, 5, 9]), torch.tensor([2, 3, 6, 9]))
    assert (out[:, :, 0] == 0).all() and out[:, :, 1:].abs().sum() > 0
    grads = torch.autograd.grad(out.sum(), (q, bias))
    assert (grads[0][:, :, 0] == 0).all() and (grads[1][:, 0] == 0).all()


def _run(q, k, v, bias, pos):
    out = attention_kernel.fused_bias_attention(q, k, v, bias, pos, pos)
    grads = torch.autograd.grad((out * out).sum(), (q, k, v, bias))
    return [out.detach(), *grads]


def test_bitwise_the_same_for_every_thread_count_and_run():
    q, k, v, bias = _inputs(3, 4, 32, 70, 70)
    pos = torch.arange(70)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 1):
            torch.set_num_threads(n)
            results.append(_run(q, k, v, bias, pos))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_instruction_set_variants_are_bitwise_equal():
    lib = attention_kernel._load()
    q, k, v, bias = _inputs(2, 3, 24, 45, 45)
    pos = torch.arange(45)
    best = attention_kernel.simd_level()
    try:
        levels = sorted({lib.bias_attention_select(cap) for cap in (0, 3, 4)})
        results = {}
        for cap in levels:
            assert lib.bias_attention_select(cap) == cap
            results[cap] = _run(q, k, v, bias, pos)
    finally:
        lib.bias_attention_select(best)
    for cap in levels[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[levels[0]], results[cap])), cap


def test_without_grad_the_output_is_the_same():
    q, k, v, bias = _inputs(2, 2, 16, 33, 33)
    pos = torch.arange(33)
    with torch.no_grad():
        plain = attention_kernel.fused_bias_attention(q, k, v, bias, pos, pos)
    assert torch.equal(plain, attention_kernel.fused_bias_attention(q, k, v, bias, pos, pos).detach())


def test_blocked_backend_routes_float32_cpu_to_the_kernel_and_matches_the_pytorch_path(monkeypatch):
    q, k, v, bias = _inputs(2, 4, 16, 40, 40)
    pos = torch.arange(40)
    calls = []
    real = attention_kernel.fused_bias_attention
    monkeypatch.setattr(attention_kernel, "fused_bias_attention", lambda *a: calls.append(1) or real(*a))
    fused = attend_blocked(q, k, v, bias, pos, pos, True)
    assert calls == [1]
    torch_path = attention._BlockedAttention.apply(q, k, v, bias, None, None, pos, pos, 16)
    torch.testing.assert_close(fused, torch_path, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(fused.sum(), (q, k, v, bias))
    want = torch.autograd.grad(torch_path.sum(), (q, k, v, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # double precision, bf16 and per-row biases keep the PyTorch implementation
    assert not attention_kernel.supports(q.double(), k.double(), v.double(), bias.double())
    assert not attention_kernel.supports(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias.bfloat16())
    assert not attention_kernel.supports(q, k, v, bias.expand(2, -1, -1, -1))


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(attention_kernel, "_LIB", [])
    monkeypatch.setenv("FIREPE_KERNEL", "0")
    assert not attention_kernel.available() and attention_kernel.simd_level() is None
    q, k, v, bias = _inputs(1, 2, 8, 12, 12)
    pos = torch.arange(12)
    assert not attention_kernel.supports(q, k, v, bias)
    out = attend_blocked(q, k, v, bias, pos, pos, True)  # the PyTorch path
    torch.testing.assert_close(out.double(), _reference(q, k, v, bias, pos, pos), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="float32 CPU tensors"):
        attention_kernel.fused_bias_attention(q, k, v, bias, pos, pos)


def test_unsorted_keys_take_the_pytorch_path_with_the_same_result():
    q, k, v, bias = _inputs(2, 2, 8, 20, 20)
    pos = torch.arange(20)
    keys = torch.randperm(20, generator=torch.Generator().manual_seed(7))
    assert not attention_kernel.supports(q, k, v, bias, keys)
    out = attend_blocked(q, k, v, bias, pos, keys, False)
    torch.testing.assert_close(out.double(), _reference(q, k, v, bias, pos, keys), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="keys sorted by position"):
        attention_kernel.fused_bias_attention(q, k, v, bias, pos, keys)


def test_mismatched_positions_are_refused():
    q, k, v, bias = _inputs(1, 2, 8, 12, 12)
    with pytest.raises(ValueError, match="one entry per query and key"):
        attention_kernel.fused_bias_attention(q, k, v, bias, torch.arange(11), torch.arange(12))


@pytest.mark.parametrize("value, cap", [("0", 0), ("3", 3), ("4", 4), ("  2 ", 2), ("4294967295", 4),
                                        ("99999999999999999999", 4)])
def test_simd_cap_is_clamped_not_wrapped(monkeypatch, value, cap):
    monkeypatch.setenv("FIREPE_SIMD", value)
    assert attention_kernel.simd_cap() == cap


@pytest.mark.parametrize("value", ["garbage", "-1", "3.5", ""])
def test_simd_cap_that_is_not_an_integer_warns_and_is_ignored(monkeypatch, value):
    monkeypatch.setenv("FIREPE_SIMD", value)
    with pytest.warns(UserWarning, match="FIREPE_SIMD"):
        assert attention_kernel.simd_cap() == 4
