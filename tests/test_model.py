import pytest
import torch

from firepe import positions
from firepe.model import GPT, GPTConfig, preset

ALL = [("nope", {}), ("rope", {}), ("rope_pi", {"factor": 2.0}),
       ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}), ("alibi", {}), ("kerple_log", {}),
       ("kerple_power", {}), ("t5", {}), ("sandwich", {}), ("fire", {}), ("fire_s", {})]


def tiny(position, opts=None, **kw):
    return GPT(preset("tiny", position=position, position_options=opts or {}, vocab_size=50, **kw))


@pytest.mark.parametrize("name,opts", ALL)
def test_causal_for_every_encoding(name, opts):
    model = tiny(name, opts).eval()
    x = torch.randint(0, 50, (2, 24))
    y = x.clone()
    y[:, 15:] = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :15], b[:, :15], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("name,opts", ALL)
def test_runs_at_16x_training_length(name, opts):
    model = tiny(name, opts).eval()
    with torch.no_grad():
        logits, loss = model(torch.randint(0, 50, (1, 16 * 32)), torch.randint(0, 50, (1, 16 * 32)))
    assert logits.shape == (1, 512, 50) and torch.isfinite(logits).all() and torch.isfinite(loss)


def test_bias_models_match_explicit_attention():
    """The model's attention equals softmax(QK^T/sqrt(d) + B + causal) V written out by hand."""
    model = tiny("alibi").eval()
    attn = model.blocks[0].attn
    x = torch.randn(1, 10, 64)
    B, T = 1, 10
    q, k, v = attn.qkv(x).view(B, T, 3, 4, 16).permute(2, 0, 3, 1, 4)
    bias = model.position_for(0).bias(torch.arange(T), torch.arange(T))
    logits = q @ k.transpose(-1, -2) / 4 + bias
    logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    want = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
    ctx = {"q_pos": torch.arange(T), "k_pos": torch.arange(T), "same_positions": True, "biases": {},
           "backend": "dense", "block": 1024}
    got = attn(x, model.position_for(0), ctx, 0, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_position_sharing():
    assert tiny("fire").position_layers is not None and len(tiny("fire").position_layers) == 2
    assert tiny("fire_s").position_shared is not None
    assert tiny("alibi").position_shared is not None  # no parameters: one module
    assert tiny("t5").position_shared is not None     # T5 shares its bias across layers
    assert tiny("t5", {"layer_shared": False}).position_layers is not None


def test_tied_and_untied_embeddings():
    m = tiny("nope")
    assert m.lm_head.weight is m.wte.weight
    u = tiny("nope", tie_embeddings=False)
    assert u.lm_head.weight is not u.wte.weight


def test_paper_presets_have_paper_sizes():
    with torch.device("meta"):
        base = GPT(preset("base", vocab_size=50257, position="fire"))
        large = GPT(preset("large", vocab_size=50257, position="fire"))
    assert 120e6 < base.num_params() < 130e6          # "125M"
    assert 340e6 < large.num_params() < 365e6         # "350M"
    assert large.cfg.head_dim == 64 and base.cfg.head_dim == 64


def test_config_errors():
    with pytest.raises(ValueError, match="unknown position encoding 'sinus'"):
        GPTConfig(position="sinus")
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(d_model=100, n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown GPTConfig key.*n_layers"):
        GPTConfig.from_dict({"n_layers": 3})
    assert positions.available()
