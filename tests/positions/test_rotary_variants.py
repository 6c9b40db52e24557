"""p-RoPE and LongRoPE against formulas written here and against Hugging Face's ``longrope``."""

import math

import pytest
import torch

from firepe import positions as P


def rotate_pairs(x, pos, inv_freq, scale=1.0):
    """Rotate pairs (x_k, x_{k+d/2}) by pos * inv_freq[k] (complex numbers), times ``scale``."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2], x[..., d // 2:])
    z = z * torch.polar(torch.ones_like(inv_freq), pos * inv_freq) * scale
    return torch.cat([z.real, z.imag], dim=-1)


def rotated(enc, x, pos):
    cos, sin = enc.angles(pos)
    return P.apply_rotary_one(x, cos, sin)


# -- p-RoPE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,kept", [(0.25, 2), (0.5, 4), (0.75, 6), (1.0, 8), (0.0, 0), (0.3, 2)])
def test_p_rope_keeps_the_highest_frequencies(fraction, kept):
    d, base = 16, 10000.0
    enc = P.build("p_rope", num_heads=1, head_dim=d, fraction=fraction).double()
    want = torch.tensor([base ** (-2 * k / d) if k < kept else 0.0 for k in range(d // 2)], dtype=torch.float64)
    want = want.float().double()  # frequencies are float32, as RoPE's and Hugging Face's
    torch.manual_seed(0)
    x = torch.randn(7, d, dtype=torch.float64)
    pos = torch.tensor([0, 1, 5, 99, 1000, 4095, 70000])
    torch.testing.assert_close(rotated(enc, x, pos), rotate_pairs(x, pos.double()[:, None], want), rtol=1e-6, atol=1e-6)
    assert enc.kept() == kept


def test_p_rope_ends_are_rope_and_nope():
    pos = torch.arange(0, 5000, 13)
    rope, full = P.build("rope", num_heads=2, head_dim=8), P.build("p_rope", num_heads=2, head_dim=8, fraction=1)
    for a, b in zip(full.angles(pos), rope.angles(pos)):
        assert torch.equal(a, b)
    cos, sin = P.build("p_rope", num_heads=2, head_dim=8, fraction=0).angles(pos)
    assert torch.equal(cos, torch.ones_like(cos)) and torch.equal(sin, torch.zeros_like(sin))  # NoPE: no rotation


def test_p_rope_dot_product_depends_on_distance_only_and_unrotated_pairs_ignore_it():
    torch.manual_seed(1)
    enc = P.build("p_rope", num_heads=1, head_dim=16, fraction=0.5).double()
    q, k = torch.randn(1, 16, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)

    def score(i, j, dims=slice(None)):
        a, b = rotated(enc, q, torch.tensor([i])), rotated(enc, k, torch.tensor([j]))
        return (a[:, dims] * b[:, dims]).sum().item()

    for i, j in [(5, 2), (300, 3)]:
        assert score(i + 1000, j + 1000) == pytest.approx(score(i, j), abs=1e-9)
    low = [4, 5, 6, 7, 12, 13, 14, 15]  # pairs k = 4..7 (x_k, x_{k+8}): frequencies removed
    assert score(900, 0, low) == pytest.approx((q[0, low] * k[0, low]).sum().item(), abs=1e-12)


@pytest.mark.parametrize("bad,match", [(-0.1, r"p_rope fraction must be a number in \[0, 1\], got -0.1"),
                                       (1.5, r"in \[0, 1\], got 1.5"), (float("nan"), "got nan"),
                                       (float("inf"), "got inf"), (True, "fraction .* must be a number")])
def test_p_rope_refuses_a_fraction_outside_0_1(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        P.build("p_rope", num_heads=1, head_dim=8, fraction=bad)
    assert "\n" not in str(err.value)


def test_p_rope_spec_and_odd_head_dim():
    assert P.parse_spec("p_rope:fraction=0.25").options == {"fraction": 0.25}
    with pytest.raises(ValueError, match="fraction='x' .* must be a number"):
        P.parse_spec("p_rope:fraction=x")
    with pytest.raises(ValueError, match="even head_dim"):
        P.build("p_rope", num_heads=1, head_dim=7)


# -- LongRoPE -------------------------------------------------------------------------------------


def longrope_reference(d, ext, base=10000.0):
    return torch.tensor([1.0 / (ext[k] * base ** (2 * k / d)) for k in range(d // 2)], dtype=torch.float64)


SHORT = [1.0 + 0.01 * k for k in range(16)]
LONG = [1.0 + 0.25 * k for k in range(16)]


def test_longrope_uses_short_factors_within_and_long_factors_past_the_original_length():
    enc = P.build("longrope", num_heads=1, head_dim=32, factor=4.0, short_factor=SHORT, long_factor=LONG,
                  original_max_position_embeddings=64).double()
    scale = math.sqrt(1 + math.log(4.0) / math.log(64))
    assert enc.attention_factor == pytest.approx(scale)
    torch.manual_seed(2)
    x = torch.randn(64, 32, dtype=torch.float64)
    short_pos, long_pos = torch.arange(64), torch.arange(1, 65)  # largest position 63 (64 tokens) vs 64
    for pos, ext in ((short_pos, SHORT), (long_pos, LONG)):
        want = rotate_pairs(x, pos.double()[:, None], longrope_reference(32, ext), scale)
        torch.testing.assert_close(rotated(enc, x, pos), want, rtol=1e-5, atol=1e-5)
    fixed = P.build("longrope", num_heads=1, head_dim=32, factor=4.0, short_factor=SHORT, long_factor=LONG,
                    original_max_position_embeddings=64, factors="short")
    assert not fixed.uses_long(torch.arange(10_000)) and P.build(
        "longrope", num_heads=1, head_dim=32, factor=4.0, factors="long").uses_long(torch.arange(3))


def test_longrope_defaults_short_one_long_geometric_ramp_and_attention_factor_one_at_factor_1():
    enc = P.build("longrope", num_heads=1, head_dim=8, factor=8.0, original_max_position_embeddings=16)
    ramp = [8.0 ** (k / 3) for k in range(4)]  # 1 .. factor over the 4 frequencies
    torch.testing.assert_close(enc.long_inv_freq.double(), longrope_reference(8, ramp), rtol=1e-6, atol=0)
    torch.testing.assert_close(enc.short_inv_freq.double(), longrope_reference(8, [1.0] * 4), rtol=1e-6, atol=0)
    one = P.build("longrope", num_heads=1, head_dim=8, factor=1, long_factor=[1, 2, 3, 4])
    assert one.attention_factor == 1.0


def test_longrope_matches_hugging_face():
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import LlamaConfig

    params = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": SHORT, "long_factor": LONG,
              "original_max_position_embeddings": 2048, "factor": 4.0}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=8192, rope_parameters=params)
    enc = P.build("longrope", num_heads=2, head_dim=32, factor=4.0, short_factor=SHORT, long_factor=LONG,
                  original_max_position_embeddings=2048)
    init = rope_utils.ROPE_INIT_FUNCTIONS["longrope"]
    for seq_len, ours in ((None, enc.short_inv_freq), (4096, enc.long_inv_freq)):
        inv, scale = init(cfg, None, seq_len=seq_len)
        assert torch.equal(ours, inv.float())
        assert enc.attention_factor == scale
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = LlamaRotaryEmbedding(cfg)
    for n in (1000, 3000):  # within 2048: short factors; past it: long factors (HF's dynamic update)
        pos = torch.arange(n)
        cos, sin = hf(torch.zeros(1, n, 32), pos[None])
        mine = enc.angles(pos)
        torch.testing.assert_close(mine[0], cos[0], rtol=0, atol=2e-6)
        torch.testing.assert_close(mine[1], sin[0], rtol=0, atol=2e-6)


def test_longrope_spec_lists_and_gradients_through_the_rotation():
    spec = P.parse_spec("longrope:long_factor=1/2/3/4,factor=4")  # factor: the attention scale
    assert spec.options == {"long_factor": [1, 2, 3, 4], "factor": 4}
    assert spec.label == "longrope[long_factor=1/2/3/4,factor=4]"
    enc = P.build("longrope", num_heads=1, head_dim=8, **spec.options).double()
    cos, sin = enc.angles(torch.arange(3000, 3005))
    q = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: P.apply_rotary(a, b, cos, sin), (q, k))


@pytest.mark.parametrize("opts,match", [
    ({}, "position encoding 'longrope' needs option.*factor"),
    ({"factor": 0.5}, "longrope factor must be >= 1, got 0.5"),
    ({"factor": float("nan")}, "factor must be a finite positive number"),
    ({"factor": 2, "long_factor": [1, 2, 3]}, r"long_factor must be a list of head_dim/2 = 4 numbers, got 3"),
    ({"factor": 2, "long_factor": [1, 2, 3, -4]}, "long_factor must hold finite positive numbers, got -4"),
    ({"factor": 2, "short_factor": [1, 1, float("inf"), 1]}, "short_factor must hold finite positive numbers"),
    ({"factor": 2, "original_max_position_embeddings": 1}, "original_max_position_embeddings must be an integer >= 2"),
    ({"factor": 2, "factors": "medium"}, "factors must be one of auto, short, long, got 'medium'"),
    ({"factor": 2, "attention_factor": 0}, "attention_factor must be a finite positive number"),
    ({"factor": 2, "long_factor": ["a", 1, 1, 1]}, "long_factor .* must be a list"),
])
def test_longrope_bad_options_are_one_line(opts, match):
    with pytest.raises(ValueError, match=match) as err:
        P.build("longrope", num_heads=1, head_dim=8, **opts)
    assert "\n" not in str(err.value)


def test_longrope_training_defaults_set_the_original_length_to_the_training_length():
    assert P.training_options("longrope", {"factor": 4}, 256) == {"factor": 4, "original_max_position_embeddings": 256}
    assert P.training_options("longrope", {"factor": 4, "original_max_position_embeddings": 64}, 256)[
        "original_max_position_embeddings"] == 64
