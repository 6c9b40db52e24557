"""firepe.attend, the function for a model of one's own, and the nanoGPT-style model in docs/own_model.py."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import firepe
from firepe import positions
from firepe.config import preset
from firepe.model import GPT as FirepeGPT

ROOT = Path(__file__).resolve().parent.parent
H, D = 4, 8
ALL = [("nope", {}), ("rope", {}), ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}),
       ("p_rope", {"fraction": 0.5}), ("alibi", {}), ("kerple_log", {}), ("t5", {}), ("sandwich", {}),
       ("fire", {"init_L": 8.0}), ("fire_s", {"init_L": 8.0, "threshold": False}), ("fox", {}),
       ("cope", {"npos_max": 16})]


def own_model():
    spec = importlib.util.spec_from_file_location("own_model", ROOT / "docs" / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def enc(name, opts):
    torch.manual_seed(0)
    return positions.build(name, H, D, **opts)


def qkv(b=2, n=21, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, H, n, D, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]


def extra(e, b, n, seed=2):
    """FoX reads the layer input of every key."""
    if e is not None and e.name == "fox":
        return {"x": torch.randn(b, n, H * D, generator=torch.Generator().manual_seed(seed))}
    return {}


def reference(q, k, v, bias=None):
    """softmax(q k^T / sqrt(D) + bias) v over j <= i, written here."""
    n_q, n_k = q.shape[2], k.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    i = torch.arange(n_k - n_q, n_k)[:, None]
    j = torch.arange(n_k)[None, :]
    return s.masked_fill(j > i, float("-inf")).softmax(-1) @ v


def test_nope_is_causal_softmax_attention():
    q, k, v = qkv()
    torch.testing.assert_close(firepe.attend(q, k, v), reference(q, k, v))
    torch.testing.assert_close(firepe.attend(q, k, v, enc("nope", {})),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_alibi_is_the_papers_bias():
    q, k, v = qkv()
    n = q.shape[2]
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)])
    dist = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
    want = reference(q, k, v, -slopes[:, None, None] * dist)
    for backend in ("auto", "dense", "blocked", "chunked"):
        torch.testing.assert_close(firepe.attend(q, k, v, enc("alibi", {}), backend=backend), want)


def test_rope_rotates_q_and_k_by_their_positions():
    q, k, v = qkv()
    n = q.shape[2]
    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()

    def rot(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    torch.testing.assert_close(firepe.attend(q, k, v, enc("rope", {})), reference(rot(q), rot(k), v))


@pytest.mark.parametrize("name,opts", ALL)
def test_every_backend_equals_dense_forward_and_backward(name, opts):
    e = enc(name, opts)
    backends = ("auto", "blocked") if name == "cope" else ("auto", "blocked", "chunked")
    q, k, v = qkv()
    kw = extra(e, 2, q.shape[2])
    want = firepe.attend(q, k, v, e, backend="dense", block=8, **kw)
    params = [p for p in e.parameters() if p.requires_grad]
    g_want = torch.autograd.grad(want.square().sum(), [q, k, v, *params], allow_unused=True)
    for backend in backends:
        got = firepe.attend(q, k, v, e, backend=backend, block=8, **kw)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5, msg=f"{name} {backend}")
        g_got = torch.autograd.grad(got.square().sum(), [q, k, v, *params], allow_unused=True)
        for a, b in zip(g_got, g_want):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"{name} {backend} grad")


@pytest.mark.parametrize("name,opts", ALL)
def test_cached_queries_are_the_last_rows_of_the_full_attention(name, opts):
    """The KV-cache rule: the last Q queries over every key equal the last Q rows of the full attention."""
    e = enc(name, opts)
    q, k, v = qkv()
    kw = extra(e, 2, q.shape[2])
    full = firepe.attend(q, k, v, e, **kw)
    for tail in (1, 5):
        got = firepe.attend(q[:, :, -tail:], k, v, e, **kw)
        torch.testing.assert_close(got, full[:, :, -tail:], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name,opts", ALL)
def test_a_left_padded_row_gets_what_it_gets_alone(name, opts):
    e = enc(name, opts)
    q, k, v = qkv(b=2, n=15)
    pad = 4
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, :pad] = False
    kw = extra(e, 2, 15)
    got = firepe.attend(q, k, v, e, key_padding_mask=mask, **kw)
    alone_kw = {"x": kw["x"][1:, pad:]} if kw else {}
    alone = firepe.attend(q[1:, :, pad:], k[1:, :, pad:], v[1:, :, pad:], e, **alone_kw)
    torch.testing.assert_close(got[1:, :, pad:], alone, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got[:1], firepe.attend(q[:1], k[:1], v[:1], e, **(
        {"x": kw["x"][:1]} if kw else {})), rtol=2e-5, atol=2e-5)


def test_fox_takes_log_forget_instead_of_x():
    e = enc("fox", {})
    q, k, v = qkv()
    x = extra(e, 2, q.shape[2])["x"]
    torch.testing.assert_close(firepe.attend(q, k, v, e, x=x), firepe.attend(q, k, v, e, log_forget=e.log_forget(x)))


@pytest.mark.parametrize("name,opts", [("fire", {"init_L": 8.0}), ("rope", {}), ("fox", {}), ("alibi", {})])
def test_attend_equals_firepe_gpts_attention_layer(name, opts):
    """Layer 0 of firepe's own GPT: its output equals attend() on that layer's q, k, v (and input, for FoX)."""
    torch.manual_seed(0)
    model = FirepeGPT(preset("tiny", position=name, position_options=opts, vocab_size=64)).eval()
    attn, e = model.blocks[0].attn, model.position_for(0)
    seen = {}
    handle = attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model(torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(5)))
        handle.remove()
        q, k, v = attn.heads(seen["x"])
        mine = attn.merge(firepe.attend(q, k, v, e, x=seen["x"]))
    torch.testing.assert_close(mine, seen["out"], rtol=1e-5, atol=1e-6)


# -- errors ---------------------------------------------------------------------------------------------------


def _q(n=5, dtype=torch.float32):
    return torch.zeros(1, 4, n, 8, dtype=dtype)


@pytest.mark.parametrize("kwargs, match", [
    ({"k_pos": torch.arange(4)}, "k_pos must be a 1-D integer tensor of 5"),
    ({"k_pos": [0, 1, 2, 3, 4]}, "k_pos must be a 1-D integer tensor"),
    ({"k_pos": torch.arange(5)[None]}, "k_pos must be a 1-D"),
    ({"k_pos": torch.tensor([0, 0, 1, 1, 2])}, "strictly increasing"),
    ({"k_pos": torch.arange(5.0)}, "integer tensor"),
    ({"q_pos": torch.arange(3)}, "q_pos must be a 1-D integer tensor of 5"),
    ({"q_pos": torch.arange(5) + 3}, "last Q entries of k_pos"),
    ({"key_padding_mask": torch.tensor([[0, 1, 1, 1, 1]]), "k_pos": torch.arange(5)}, "not both"),
    ({"key_padding_mask": torch.zeros(1, 5)}, "bool or 0/1 integers"),
    ({"block": 0}, "block must be a positive integer"),
    ({"block": 2.5}, "block must be a positive integer"),
    ({"encoding": "class"}, "module from firepe.positions.build"),
    ({"encoding": "fox", "x": torch.zeros(1, 3, 32)}, r"x must be every key's layer input \[B, K, H \* D\]"),
    ({"encoding": "fox", "log_forget": torch.zeros(1, 1, 5)}, r"log_forget must be \[B, H, K\]"),
])
def test_bad_positions_and_inputs_are_refused(kwargs, match):
    if kwargs.get("encoding") == "class":
        kwargs["encoding"] = positions.get("fire")
    elif isinstance(kwargs.get("encoding"), str):
        kwargs["encoding"] = enc(kwargs["encoding"], {})
    with pytest.raises(ValueError, match=match):
        firepe.attend(_q(), _q(), _q(), **kwargs)


def test_mixed_dtypes_are_refused():
    with pytest.raises(ValueError, match="share one dtype"):
        firepe.attend(_q(), _q(dtype=torch.float64), _q())


def test_explicit_increasing_positions_are_used_by_every_kind():
    """Gaps between positions matter for every encoding with a position signal (the bias or the rotation)."""
    q, k, v = qkv(b=1, n=6)
    gaps = torch.tensor([0, 3, 4, 10, 11, 20])
    for name, opts in (("alibi", {}), ("rope", {}), ("fire", {"init_L": 8.0})):
        e = enc(name, opts)
        dense = firepe.attend(q, k, v, e, k_pos=gaps, backend="dense")
        assert not torch.allclose(dense, firepe.attend(q, k, v, e, backend="dense")), name
        for backend in ("auto", "blocked", "chunked"):
            torch.testing.assert_close(firepe.attend(q, k, v, e, k_pos=gaps, backend=backend, block=2), dense,
                                       rtol=2e-5, atol=2e-5)


def test_flex_on_cpu_with_only_the_encoding_trainable():
    """A frozen backbone (q, k, v without gradients) training only the encoding: flex has no CPU backward, so
    the call takes the chunked path, and the encoding gets its gradients."""
    import warnings

    e = enc("fire", {"init_L": 8.0})
    q, k, v = (t.detach() for t in qkv(b=1, n=20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = firepe.attend(q, k, v, e, backend="flex")
    out.sum().backward()
    assert e.mlp[0].weight.grad is not None and torch.isfinite(e.mlp[0].weight.grad).all()
    torch.testing.assert_close(out, firepe.attend(q, k, v, e, backend="dense"), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.zeros(2, 4, 5),) * 3, {}, "q must be a .B, H, T, D. floating-point tensor"),
    ((torch.zeros(1, 4, 5, 8), torch.zeros(1, 4, 3, 8), torch.zeros(1, 4, 3, 8)), {}, "K >= Q"),
    ((torch.zeros(1, 2, 5, 8),) * 3, {"encoding": "enc"}, "built for 4 heads of 8"),
    ((torch.zeros(1, 4, 5, 8),) * 3, {"backend": "fast"}, "unknown attention backend 'fast'"),
    ((torch.zeros(1, 4, 5, 8),) * 3, {"encoding": "fox"}, "pass x"),
    ((torch.zeros(1, 4, 5, 8),) * 3, {"key_padding_mask": torch.ones(1, 4)}, r"key_padding_mask must be \[B, K\]"),
    ((torch.zeros(1, 4, 5, 8),) * 3, {"encoding": "cope", "backend": "chunked"}, "chunked"),
])
def test_bad_inputs_are_one_clear_error(args, kwargs, match):
    if kwargs.get("encoding") == "enc":
        kwargs["encoding"] = enc("alibi", {})
    elif isinstance(kwargs.get("encoding"), str):
        kwargs["encoding"] = enc(kwargs["encoding"], {})
    with pytest.raises(ValueError, match=match):
        firepe.attend(*args, **kwargs)


# -- the documented model ---------------------------------------------------------------------------------------


def _pattern_batch(g, b=16, n=24, vocab=32):
    motif = torch.randint(0, vocab, (b, 3), generator=g)
    return motif.repeat(1, n // 3)


@pytest.mark.parametrize("position", ["fire", "alibi", "rope", "fox"])
def test_the_documented_model_trains(position):
    m = own_model()
    torch.manual_seed(0)
    model = m.GPT(vocab=32, d=32, heads=4, layers=2, position=position)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        idx = _pattern_batch(g)
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 32), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    enc_params = [p for blk in model.blocks for p in blk.position.parameters()]
    assert all(p.grad is not None for p in enc_params if p.requires_grad)


@pytest.mark.parametrize("position", ["fire", "alibi", "rope", "fox", "cope", "nope"])
def test_the_documented_models_cache_equals_the_full_forward(position):
    m = own_model()
    torch.manual_seed(0)
    model = m.GPT(vocab=32, d=32, heads=4, layers=2, position=position).eval()
    idx = torch.randint(0, 32, (2, 9))
    out = model.generate(idx, 6)
    full = idx
    for _ in range(6):
        with torch.no_grad():
            nxt = model(full)[:, -1:].argmax(-1)
        full = torch.cat([full, nxt], 1)
    assert torch.equal(out, full)
    caches = [{} for _ in model.blocks]
    with torch.no_grad():
        step = torch.cat([model(idx[:, :5], caches), model(idx[:, 5:], caches)], 1)
        torch.testing.assert_close(step, model(idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["blocked", "chunked", "auto"])
@pytest.mark.parametrize("position", ["fire", "alibi", "rope", "fox"])
def test_the_documented_model_agrees_with_dense_on_every_backend(position, backend):
    m = own_model()
    idx = torch.randint(0, 32, (2, 19), generator=torch.Generator().manual_seed(3))
    outs = []
    for be in ("dense", backend):
        torch.manual_seed(0)
        model = m.GPT(vocab=32, d=32, heads=4, layers=2, position=position, backend=be)
        logits = model(idx)
        logits.square().mean().backward()
        outs.append((logits, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=2e-5, atol=2e-5)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
