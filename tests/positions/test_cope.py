"""CoPE (contextual position encoding): counted positions, interpolated embeddings, gradients, the model's
dense path, the KV cache, padded rows and the refusals."""

import math

import pytest
import torch

from firepe import positions
from firepe.attention import attend_context
from firepe.config import GPTConfig
from firepe.model import GPT
from firepe.positions import cope as cope_module
from tests.helpers import cached_logits


def cope(npos_max=6, head_dim=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    enc = positions.build("cope", num_heads=2, head_dim=head_dim, npos_max=npos_max).to(dtype)
    with torch.no_grad():
        enc.pos_emb.normal_()
    return enc


def masked_logits(B=1, H=2, T=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, T, generator=g, dtype=dtype)
    return s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))


def test_positions_count_the_gates_from_the_key_to_the_query():
    enc = cope(npos_max=100)
    s = masked_logits()
    p = enc.positions(s)
    for h in range(2):
        for i in range(5):
            for j in range(i + 1):
                want = sum(1 / (1 + math.exp(-s[0, h, i, t].item())) for t in range(j, i + 1))
                assert p[0, h, i, j].item() == pytest.approx(want, abs=1e-5)
            for j in range(i + 1, 5):
                assert p[0, h, i, j].item() == 0.0  # masked keys count nothing


def test_positions_are_clamped_to_the_last_embedding():
    enc = cope(npos_max=3)
    s = torch.full((1, 2, 8, 8), 10.0).masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    p = enc.positions(s)
    assert p.max().item() == 2.0 and p[0, 0, 7, 7].item() == pytest.approx(1.0, abs=1e-4)


def test_logit_bias_is_q_dot_the_interpolated_embedding():
    enc = cope(npos_max=4)
    s = masked_logits(T=6)
    q = torch.randn(1, 2, 6, 4)
    got = enc.logit_bias(q, s)
    E = enc.pos_emb.detach()
    for h in range(2):
        for i in range(6):
            for j in range(i + 1):
                p = min(sum(1 / (1 + math.exp(-s[0, h, i, t].item())) for t in range(j, i + 1)), 3.0)
                lo, frac = math.floor(p), p - math.floor(p)
                emb = E[lo] * (1 - frac) + E[min(lo + 1, 3)] * frac
                assert got[0, h, i, j].item() == pytest.approx(float(q[0, h, i] @ emb), abs=1e-5)


def test_logit_bias_passes_gradcheck_in_float64():
    enc = cope(npos_max=8, dtype=torch.float64)
    s = masked_logits(T=4, dtype=torch.float64).requires_grad_()
    q = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    emb = enc.pos_emb.detach().clone().requires_grad_()

    def f(q, s, emb):  # masked entries are never used: compare the causal ones
        out = torch.func.functional_call(enc, {"pos_emb": emb}, (q, s))
        return out.masked_fill(torch.isinf(s), 0.0)

    assert torch.autograd.gradcheck(f, (q, s, emb))


def test_attend_context_is_softmax_of_logits_plus_the_counted_bias():
    enc = cope(npos_max=8)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    s = (q @ k.transpose(-1, -2) / 2).masked_fill(~allowed, float("-inf"))
    want = torch.softmax(s + enc.logit_bias(q, s), -1) @ v
    torch.testing.assert_close(attend_context(q, k, v, enc, allowed), want)


def model(**kw):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, position="cope",
                      position_options={"npos_max": 8}, **kw))
    for enc in m.position_modules():
        with torch.no_grad():
            enc.pos_emb.normal_()
    return m.eval()


def test_an_untrained_cope_is_nope():
    torch.manual_seed(0)
    zero = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, position="cope")).eval()
    torch.manual_seed(0)
    nope = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, d_model=16, position="nope")).eval()
    idx = torch.randint(0, 40, (2, 9))
    torch.testing.assert_close(zero(idx)[0], nope(idx)[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model()(idx)[0], nope(idx)[0], atol=1e-3)  # trained E changes the output


def test_kv_cache_and_padded_rows_match_the_full_forward():
    m = model()
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full, _ = m(idx)
    torch.testing.assert_close(cached_logits(m, idx, 5)[0], full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), idx], 1)
        mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 12, dtype=torch.long)], 1)
        torch.testing.assert_close(m(padded, attention_mask=mask)[0][:, 3:], full, rtol=1e-5, atol=1e-5)


def test_training_defaults_and_bad_options():
    assert positions.training_options("cope", {}, 128) == {"npos_max": 128}
    assert positions.training_options("cope", {"npos_max": 16}, 128) == {"npos_max": 16}
    for bad in (1, 0, -3, 2**21, 2.5, True):
        with pytest.raises(ValueError, match="npos_max"):
            positions.build("cope", num_heads=2, head_dim=4, npos_max=bad)


@pytest.mark.parametrize("backend", ["chunked", "flex"])
def test_backends_that_promise_no_square_are_refused(backend):
    with pytest.raises(ValueError, match=f"attention '{backend}' is refused for it: use auto, dense or blocked"):
        GPTConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16, position="cope", attention=backend)


def test_logits_past_the_limit_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(cope_module, "MAX_ELEMENTS", 1000)
    m = model()
    with pytest.raises(ValueError, match=r"cope needs the \(1, 2, 30, 30\) attention logits \(1,800 entries"):
        m(torch.zeros(1, 30, dtype=torch.long))


def test_plot_bias_draws_what_the_layer_adds_to_its_logits():
    from firepe.attention import AttentionInputs

    m = model()
    idx = torch.randint(0, 40, (1, 10))
    x = m.attention_inputs(idx)[1]
    attn, enc = m.blocks[1].attn, m.position_for(1)
    bias = m.input_biases(idx)[1]
    q, k, v = attn.qkv(x).view(1, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    s = (q @ k.transpose(-1, -2) / math.sqrt(8) + bias).masked_fill(~causal, float("-inf"))
    want = attn.proj((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(1, 10, 16))
    pos = torch.arange(10)
    with torch.no_grad():
        got = attn(x, enc, AttentionInputs(q_pos=pos, k_pos=pos, same_positions=True), 1, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert bias.abs().sum() > 0
