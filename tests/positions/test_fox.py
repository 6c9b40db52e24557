"""FoX (Forgetting Transformer): the forget gate, the bias ``sum_{l=j+1..i} log f_l``, every attention
backend against attention written out by hand, gradients, the KV cache and padded rows."""

import math

import pytest
import torch

from firepe import positions
from firepe.attention import KVCache, attend_data
from firepe.config import GPTConfig
from firepe.model import GPT
from tests.helpers import cached_logits


def fox(heads=2, head_dim=4, seed=0):
    torch.manual_seed(seed)
    enc = positions.build("fox", num_heads=heads, head_dim=head_dim)
    with torch.no_grad():
        enc.gate.weight.normal_(std=0.5)
        enc.gate.bias.uniform_(-1, 2)
    return enc


def test_log_forget_is_log_sigmoid_of_a_per_head_linear_gate():
    enc = fox()
    x = torch.randn(2, 5, 8)
    w, b = enc.gate.weight.double().tolist(), enc.gate.bias.double().tolist()
    got = enc.log_forget(x)
    assert got.shape == (2, 2, 5) and got.dtype == torch.float32
    for bi in range(2):
        for h in range(2):
            for t in range(5):
                z = sum(wi * xi for wi, xi in zip(w[h], x[bi, t].double().tolist())) + b[h]
                assert got[bi, h, t].item() == pytest.approx(math.log(1 / (1 + math.exp(-z))), abs=1e-6)


def test_bias_is_the_sum_of_log_gates_strictly_after_the_key_up_to_the_query():
    enc = fox()
    x = torch.randn(1, 7, 8)
    log_f = enc.log_forget(x)[0].double()
    bias = enc.bias_for(x)[0]
    assert bias.shape == (2, 7, 7)
    for h in range(2):
        for i in range(7):
            for j in range(i + 1):
                want = sum(log_f[h, l].item() for l in range(j + 1, i + 1))
                assert bias[h, i, j].item() == pytest.approx(want, abs=1e-5)
            assert bias[h, i, i].item() == 0.0  # a token never forgets itself
    assert (bias <= 0).all()


def test_fox_defaults_follow_the_reference_initialization():
    enc = positions.build("fox", num_heads=4, head_dim=16)
    assert torch.equal(enc.gate.bias, torch.zeros(4))
    assert 0.01 < enc.gate.weight.std().item() < 0.03
    assert positions.options("fox") == {"bias_init": 0.0, "init_std": 0.02}
    assert positions.build("fox", num_heads=2, head_dim=4, bias_init=3.0).gate.bias.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("bad", [{"bias_init": float("nan")}, {"init_std": -1.0}, {"init_std": float("inf")},
                                 {"bias_init": "high"}])
def test_bad_options_are_value_errors(bad):
    with pytest.raises(ValueError, match="(bias_init|init_std)"):
        positions.build("fox", num_heads=2, head_dim=4, **bad)


def test_bias_for_checks_its_input():
    enc = fox()
    with pytest.raises(ValueError, match=r"hidden states \[batch, tokens, 8\], got \(5, 8\)"):
        enc.bias_for(torch.randn(5, 8))


def reference(q, k, v, cq, ck):
    """softmax(q k^T / sqrt(D) + cq_i - ck_j, causal) v, written out."""
    n_q, n_k = q.shape[2], k.shape[2]
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + cq[..., :, None] - ck[..., None, :]
    i = torch.arange(n_k - n_q, n_k)[:, None]
    logits = logits.masked_fill(torch.arange(n_k)[None, :] > i, float("-inf"))
    return torch.softmax(logits, -1) @ v


def inputs(n_q=9, n_k=9, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n_q, 4, generator=g, dtype=dtype)
    k = torch.randn(2, 3, n_k, 4, generator=g, dtype=dtype)
    v = torch.randn(2, 3, n_k, 4, generator=g, dtype=dtype)
    c = torch.log(torch.sigmoid(torch.randn(2, 3, n_k, generator=g, dtype=dtype))).cumsum(-1)
    return q, k, v, c[..., n_k - n_q:].clone(), c


@pytest.mark.parametrize("backend", ["dense", "blocked", "chunked", "auto"])
@pytest.mark.parametrize("n_q", [9, 3, 1])
def test_every_backend_matches_attention_written_out_values_and_gradients(backend, n_q):
    q, k, v, cq, ck = inputs(n_q=n_q)
    k_pos = torch.arange(9)
    leaves = [t.requires_grad_() for t in (q, k, v, cq, ck)]
    out = attend_data(backend, q, k, v, cq, ck, k_pos[9 - n_q:], k_pos, block=2)
    want = reference(q, k, v, cq, ck)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, leaves, g)
    want_grads = torch.autograd.grad(want, leaves, g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_blocked_backward_passes_gradcheck_in_float64():
    q, k, v, cq, ck = inputs(n_q=6, n_k=6, dtype=torch.float64)
    pos = torch.arange(6)
    leaves = tuple(t.requires_grad_() for t in (q, k, v, cq, ck))
    assert torch.autograd.gradcheck(lambda *t: attend_data("blocked", *t, pos, pos), leaves)


def model(attention="auto", **kw):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, position="fox", attention=attention, **kw))
    for enc in m.position_modules():
        with torch.no_grad():
            enc.gate.weight.normal_(std=0.5)
    return m.eval()


def test_each_layer_has_its_own_gate_and_the_gate_learns():
    m = model().train()
    assert m.position_shared is None and len(m.position_layers) == 2
    idx = torch.randint(0, 40, (2, 12))
    _, loss = m(idx, idx)
    loss.backward()
    for enc in m.position_modules():
        assert enc.gate.weight.grad is not None and enc.gate.weight.grad.abs().sum() > 0


def test_the_model_adds_the_gate_bias_to_the_logits_it_computes():
    # zero gate weights with bias b: log f = logsigmoid(b) everywhere, so FoX is ALiBi with slope -logsigmoid(b)
    torch.manual_seed(0)
    m = model()
    b = 0.7
    for enc in m.position_modules():
        with torch.no_grad():
            enc.gate.weight.zero_()
            enc.gate.bias.fill_(b)
    torch.manual_seed(0)
    twin = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, position="alibi",
                         position_options={"slopes": [-math.log(1 / (1 + math.exp(-b)))] * 2})).eval()
    missing, unexpected = twin.load_state_dict({k: v for k, v in m.state_dict().items() if "position" not in k},
                                               strict=False)
    assert all("position" in k for k in missing) and not unexpected
    idx = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(m(idx)[0], twin(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["dense", "blocked", "chunked"])
def test_kv_cache_matches_the_full_forward(attention):
    m = model(attention, attention_block=4)
    idx = torch.randint(0, 40, (2, 13))
    with torch.no_grad():
        full, _ = m(idx)
    got, cache = cached_logits(m, idx, 6)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert cache.keys[0].shape[-1] == 8 + 2  # the key and its log f, kept as two channels


def test_the_cached_log_gate_keeps_float32_precision_in_bfloat16():
    # the cache stores log f as a bf16 value plus its bf16 remainder: about 16 bits, not bf16's 8
    m = model().to(torch.bfloat16)
    idx = torch.randint(0, 40, (1, 9))
    cache = KVCache.empty(2)
    with torch.no_grad():
        m(idx, cache=cache)
        x = m.blocks[0].ln1(m.wte(idx))
    want = m.position_for(0).log_forget(x)
    stored = cache.keys[0][..., -2].float() + cache.keys[0][..., -1].float()
    assert (stored - want).abs().max() <= want.abs().max() * 2**-14


def test_a_left_padded_row_scores_as_it_would_alone_with_and_without_a_cache():
    m = model()
    row = torch.randint(0, 40, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone, _ = m(row)
        got, _ = m(padded, attention_mask=mask)
        cache = KVCache.empty(2)
        first, _ = m(padded[:, :7], cache=cache, attention_mask=mask[:, :7])
        step, _ = m(padded[:, 7:], cache=cache, attention_mask=mask)
    torch.testing.assert_close(got[:, 3:], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([first, step], 1)[:, 3:], alone, rtol=1e-5, atol=1e-5)


def test_input_biases_are_each_layers_bias_for_its_own_input_and_refused_for_position_biases():
    m = model()
    idx = torch.randint(0, 40, (1, 7))
    inputs = m.attention_inputs(idx)
    for enc, x, got in zip(m.position_modules(), inputs, m.input_biases(idx)):
        torch.testing.assert_close(got, enc.bias_for(x))
    alibi = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16, position="alibi"))
    with pytest.raises(ValueError, match="'alibi' has no data-dependent bias"):
        alibi.input_biases(idx)
