"""RoPE, position interpolation and YaRN against their definitions."""

import math

import pytest
import torch

from firepe import positions as P


def reference_inv_freq(d, base=10000.0):
    return torch.tensor([base ** (-2 * k / d) for k in range(d // 2)], dtype=torch.float64)


def rotate_pairs(x, pos, inv_freq):
    """Rotate pairs (x_k, x_{k+d/2}) by pos * inv_freq[k], written with complex numbers."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2], x[..., d // 2:])
    z = z * torch.polar(torch.ones_like(inv_freq), pos * inv_freq)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("name,opts", [("rope", {}), ("rope_pi", {"factor": 4.0}), ("yarn", {"factor": 8.0})])
def test_rotated_dot_product_depends_on_distance_only(name, opts):
    torch.manual_seed(0)
    enc = P.build(name, num_heads=2, head_dim=16, **opts).double()
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(i, j):
        cq, sq = enc.angles(torch.tensor([i]))
        ck, sk = enc.angles(torch.tensor([j]))
        return (P.apply_rotary_one(q[None], cq, sq) @ P.apply_rotary_one(k[None], ck, sk).T).item()

    for i, j in [(5, 2), (100, 3), (7, 7)]:
        for shift in (1, 31, 5000):
            assert score(i + shift, j + shift) == pytest.approx(score(i, j), rel=1e-6, abs=1e-6)


def test_rope_matches_pairwise_rotation():
    torch.manual_seed(1)
    enc = P.build("rope", num_heads=1, head_dim=8).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    pos = torch.arange(10, 15)
    cos, sin = enc.angles(pos)
    got, _ = P.apply_rotary(x, x, cos, sin)
    want = rotate_pairs(x, pos.double()[:, None], reference_inv_freq(8))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_pi_equals_rope_at_divided_positions():
    pi = P.build("rope_pi", num_heads=1, head_dim=16, factor=4.0)
    pos = torch.arange(0, 4096, 37)
    cos, sin = pi.angles(pos)
    angle = (pos.double() / 4.0)[:, None] * reference_inv_freq(16)[None]
    torch.testing.assert_close(cos.double(), torch.cat([angle, angle], -1).cos(), rtol=0, atol=1e-4)
    torch.testing.assert_close(sin.double(), torch.cat([angle, angle], -1).sin(), rtol=0, atol=1e-4)
    # and equals RoPE where positions are multiples of the factor
    rope = P.build("rope", num_heads=1, head_dim=16)
    torch.testing.assert_close(pi.angles(pos * 4)[0], rope.angles(pos)[0])


def test_yarn_factor_one_is_rope():
    yarn = P.build("yarn", num_heads=1, head_dim=64, factor=1.0)
    rope = P.build("rope", num_heads=1, head_dim=64)
    pos = torch.arange(0, 9000, 13)
    for a, b in zip(yarn.angles(pos), rope.angles(pos)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def yarn_reference(d, factor, orig, base=10000.0, beta_fast=32.0, beta_slow=1.0):
    """YaRN as in Peng et al. / HF rope_type='yarn': NTK-by-parts ramp and mscale 0.1 ln(s) + 1."""
    def corr(rot):
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), d - 1)
    out = []
    for k in range(d // 2):
        theta = base ** (-2 * k / d)
        ramp = min(max((k - low) / (high - low), 0.0), 1.0)
        out.append(theta / factor * ramp + theta * (1 - ramp))
    return torch.tensor(out, dtype=torch.float64), 0.1 * math.log(factor) + 1


def test_yarn_matches_reference():
    yarn = P.build("yarn", num_heads=1, head_dim=64, factor=4.0, original_max_position_embeddings=2048)
    inv, mscale = yarn_reference(64, 4.0, 2048)
    torch.testing.assert_close(yarn.inv_freq.double(), inv, rtol=1e-6, atol=0)
    assert yarn.attention_factor == pytest.approx(mscale)
    cos, _ = yarn.angles(torch.tensor([0]))
    torch.testing.assert_close(cos, torch.full_like(cos, mscale))
    # highest frequency kept, lowest interpolated
    assert inv[0] == pytest.approx(1.0)
    assert inv[-1] == pytest.approx(10000 ** (-62 / 64) / 4.0)


def test_rotary_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        P.build("rope", num_heads=1, head_dim=7)
