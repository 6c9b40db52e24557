"""Attention backends agree; KV-cache decoding equals full forward for every encoding."""

import warnings

import pytest
import torch

from firepe import attention, attention_flash, bench, kinds, positions
from firepe.attention import AttentionInputs, attend_blocked, resolve_backend
from firepe.config import GPTConfig, preset
from firepe.kinds import kind_of
from firepe.model import GPT

ALL = [("nope", {}), ("rope", {}), ("rope_pi", {"factor": 2.0}),
       ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}), ("alibi", {}), ("kerple_log", {}),
       ("kerple_power", {}), ("t5", {}), ("sandwich", {}), ("fire", {"init_L": 8.0}),
       ("fire", {"init_L": 8.0, "bias_mode": "table"}), ("fire_s", {"init_L": 8.0, "threshold": False}),
       ("p_rope", {"fraction": 0.5}),
       ("longrope", {"factor": 4.0, "original_max_position_embeddings": 16, "factors": "long"}), ("fox", {}),
       ("cope", {"npos_max": 16})]


def tiny(name, opts, **kw):
    torch.manual_seed(0)
    return GPT(preset("tiny", position=name, position_options=opts, vocab_size=64, **kw))


@pytest.mark.parametrize("backend", ["chunked", "blocked", "auto"])
@pytest.mark.parametrize("name,opts", ALL)
def test_backends_equal_dense_forward_and_backward(name, opts, backend):
    model = tiny(name, opts, attention="dense")
    x = torch.randint(0, 64, (2, 45))
    y = torch.randint(0, 64, (2, 45))
    _, loss_dense = model(x, y)
    loss_dense.backward()
    dense_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    if name == "cope" and backend == "chunked":  # CoPE reads every logit: refused, the model left as it was
        with pytest.raises(ValueError, match="cope runs on a dense path of its own"):
            model.set_attention(backend, block=7)
        assert model.cfg.attention == "dense"
        return
    model.set_attention(backend, block=7)
    _, loss_other = model(x, y)
    loss_other.backward()
    torch.testing.assert_close(loss_other, loss_dense, rtol=1e-5, atol=1e-5)
    for a, b in zip(dense_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_auto_backend_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, has_bias=True) == "blocked"
    assert resolve_backend("auto", cpu, has_bias=False) == "dense"
    assert resolve_backend("auto", cuda, has_bias=True) == "dense"
    assert resolve_backend("chunked", cpu, has_bias=True) == "chunked"
    assert resolve_backend("auto", cuda, has_bias=True, bias_elements=12 * 32768**2) == "chunked"
    assert resolve_backend("auto", cpu, has_bias=False, bias_elements=12 * 32768**2) == "dense"
    assert resolve_backend("dense", cpu, has_bias=True, bias_elements=12 * 32768**2) == "dense"
    assert GPTConfig().attention == "auto"


def _reference_attention(q, k, v, bias, q_pos, k_pos):
    """softmax(q k^T / sqrt(D) + bias, causal) v, written out."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias
    scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("case", ["square", "cache_rows", "unsorted_keys"])
def test_blocked_attention_formula_and_gradcheck(case):
    torch.manual_seed(0)
    k_pos = torch.arange(23)
    q_pos = {"square": k_pos, "cache_rows": k_pos[-6:], "unsorted_keys": k_pos}[case]
    if case == "unsorted_keys":
        k_pos = torch.randperm(23, generator=torch.Generator().manual_seed(2))
    B, H, D = 2, 3, 4
    q = torch.randn(B, H, len(q_pos), D, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, H, 23, D, dtype=torch.float64, requires_grad=True) for _ in range(2))
    bias = torch.randn(H, len(q_pos), 23, dtype=torch.float64, requires_grad=True)

    def blocked(q, k, v, bias):
        return attend_blocked(q, k, v, bias, q_pos, k_pos, same_positions=case == "square", block=5)

    torch.testing.assert_close(blocked(q, k, v, bias), _reference_attention(q, k, v, bias, q_pos, k_pos))
    assert torch.autograd.gradcheck(blocked, (q, k, v, bias))
    grad_bias = torch.autograd.grad(blocked(q, k, v, bias).sum(), bias)[0]
    assert torch.all(grad_bias[:, k_pos[None, :] > q_pos[:, None]] == 0)


@pytest.mark.parametrize("flash", [True, False])
def test_chunked_never_builds_full_bias(monkeypatch, flash):
    """With the flash kernel no [H, Q, K] bias is built at all; without it (or on other devices) chunked builds
    one query block's bias at a time."""
    if flash and not attention_flash.available():
        pytest.skip("the flash kernel is not available on this CPU")
    if not flash:
        monkeypatch.setattr(attention_flash, "supports", lambda *a: False)
    model = tiny("fire", {"init_L": 8.0}).set_attention("chunked", block=16)
    shapes = []
    for enc in model.position_modules():
        original = enc.compute_bias

        def spy(q, k, original=original):
            out = original(q, k)
            shapes.append(tuple(out.shape))
            return out

        enc.compute_bias = spy
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 100)))
    if flash:
        assert shapes == []
        return
    assert shapes and max(s[1] for s in shapes) <= 16
    assert min(s[2] for s in shapes) == 16  # the first block sees only its own 16 keys


@pytest.mark.parametrize("name,opts", ALL)
def test_kv_cache_logits_equal_full_forward(name, opts):
    model = tiny(name, opts).eval()
    x = torch.randint(0, 64, (2, 70))  # > 4x the training-scale positions used by rope/yarn/fire L
    with torch.no_grad():
        full, _ = model(x)
        from firepe.attention import KVCache

        cache = KVCache.empty(model.cfg.n_layer)
        pieces = [model(x[:, :10], cache=cache)[0]]
        for t in range(10, 70):
            pieces.append(model(x[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


def test_generate_greedy_and_top_k():
    model = tiny("fire", {"init_L": 8.0})
    prompt = torch.randint(0, 64, (1, 5))
    a = model.generate(prompt, 20, temperature=0)
    b = model.generate(prompt, 20, temperature=1.0, top_k=1)
    assert a.shape == (1, 25) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    # greedy generation equals argmax of the full forward at every step
    with torch.no_grad():
        logits, _ = model(a[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), a[:, 5:])
    g = torch.Generator().manual_seed(3)
    c = model.generate(prompt, 10, temperature=0.8, top_k=5, generator=g)
    assert c.shape == (1, 15)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 1, temperature=-1)


@pytest.mark.slow
def test_flex_forward_on_cpu_matches_dense_and_falls_back_for_training():
    pytest.importorskip("torch.nn.attention.flex_attention")
    for name, opts in [("fire", {"init_L": 40.0, "bias_mode": "table"}), ("alibi", {}), ("t5", {}), ("kerple_log", {}),
                       ("sandwich", {})]:
        model = tiny(name, opts, n_layer=1).eval()
        x = torch.randint(0, 64, (1, 128))
        with torch.no_grad():
            dense, _ = model(x)
            model.set_attention("flex")
            flex, _ = model(x)
        torch.testing.assert_close(flex, dense, rtol=2e-4, atol=2e-4)
    model = tiny("fire", {"init_L": 40.0, "bias_mode": "table"}, n_layer=1, attention="flex").train()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        _, loss = model(x, x)
        loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_auto_backend_chunks_long_inputs(monkeypatch):
    """Above the size limit ``auto`` never materializes the full bias, and the output is unchanged (the path
    without the flash kernel, which builds no bias at all: test_chunked_never_builds_full_bias)."""
    monkeypatch.setattr(attention_flash, "supports", lambda *a: False)
    model = tiny("fire", {"init_L": 8.0, "bias_mode": "table"}).eval()
    x = torch.randint(0, 64, (1, 60))
    with torch.no_grad():
        reference = model(x)[0]
    monkeypatch.setattr(attention, "AUTO_CHUNK_ELEMENTS", 4 * 30 * 30)
    shapes = []
    for enc in model.position_modules():
        original = enc.compute_bias

        def spy(q, k, original=original):
            shapes.append(len(q))
            return original(q, k)

        enc.compute_bias = spy
    with torch.no_grad():
        chunked = model.set_attention("auto", block=16)(x)[0]
    assert shapes and max(shapes) <= 16
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-5)


class _Fake(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind


def test_encoding_kind_decides_what_an_encoding_contributes():
    build = {n: positions.build(n, num_heads=2, head_dim=8) for n in ("nope", "rope", "alibi", "fire", "t5", "fox")}
    assert [kind_of(build[n]).name for n in build] == ["none", "rotary", "bias", "bias", "bias", "data"]
    assert kind_of(positions.build("cope", num_heads=2, head_dim=8)).name == "context"
    assert kind_of(build["fox"]).bias_module(build["fox"]) is None
    assert kind_of(None).name == "none" and kind_of(None).bias_module(None) is None
    assert kind_of(build["nope"]).bias_module(build["nope"]) is None
    assert kind_of(build["rope"]).bias_module(build["rope"]) is None
    assert kind_of(build["fire"]).bias_module(build["fire"]) is build["fire"]
    assert kind_of(_Fake("none")).name == "none" and kind_of(_Fake("bias")).bias_module(_Fake("bias")).kind == "bias"
    with pytest.raises(ValueError, match="_Fake has kind 'additive'; valid: bias, rotary, data, context, none"):
        kind_of(_Fake("additive"))


@pytest.mark.parametrize("name,want", [("nope", None), ("rope", None), ("alibi", "alibi"), ("fire", "fire")])
def test_model_and_bench_pass_the_bias_encoding_only(monkeypatch, name, want):
    """The model and the layer benchmark hand ``attend_backend`` the encoding only when it adds a bias."""
    seen = []
    original = attention.attend_backend

    def spy(backend, q, k, v, enc, *args, **kwargs):
        seen.append(enc)
        return original(backend, q, k, v, enc, *args, **kwargs)

    monkeypatch.setattr(kinds, "attend_backend", spy)
    model = tiny(name, {})
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 6)))
    args = dict(heads=2, head_dim=8, batch=1, attention="auto", block=4)
    run, _ = bench._layer_fn(name, {}, 6, args, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        assert run().shape == (1, 2, 6, 8)
    assert len(seen) == model.cfg.n_layer + 1
    assert all((e is None) if want is None else (e.name == want) for e in seen)


def test_attention_inputs_carry_the_rotary_angles():
    model = tiny("rope", {})
    attn, enc = model.blocks[0].attn, model.position_for(0)
    x, pos = torch.randn(1, 5, 64), torch.arange(5)
    inputs = AttentionInputs(q_pos=pos, k_pos=pos, same_positions=True, backend="dense")
    with pytest.raises(ValueError, match="RoPE is a rotary encoding but AttentionInputs.angles is None"):
        attn(x, enc, inputs, 0, None)
    inputs.angles = enc.compute_angles(pos)
    with torch.no_grad():
        assert attn(x, enc, inputs, 0, None).shape == (1, 5, 64)
    assert inputs.biases == {}  # rotary: no bias was materialized
