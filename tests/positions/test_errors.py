"""Bad input gets one clear ValueError naming the bad value."""

import pytest
import torch

from firepe import positions as P


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="unknown position encoding 'fyre'.*alibi.*fire"):
        P.build("fyre", num_heads=2, head_dim=8)


def test_unknown_option_lists_valid():
    with pytest.raises(ValueError, match="unknown option.*mlp_depth.*valid options: .*mlp_layers"):
        P.build("fire", num_heads=2, head_dim=8, mlp_depth=3)
    with pytest.raises(ValueError, match="valid options: none"):
        P.build("nope", num_heads=2, head_dim=8, foo=1)


def test_missing_required_option():
    with pytest.raises(ValueError, match="'rope_pi' needs option.*factor"):
        P.build("rope_pi", num_heads=2, head_dim=8)


@pytest.mark.parametrize("q,match", [
    (torch.arange(4).float(), "integer positions"),
    (torch.tensor([0, -1, 2]), "non-negative"),
    (torch.arange(4)[None], "1-D"),
    ([0, 1, 2], "torch.Tensor"),
])
def test_bad_positions(q, match):
    enc = P.build("fire", num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match=match):
        enc.bias(q, torch.arange(4))
    rope = P.build("rope", num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match=match):
        rope.angles(q)


def test_positions_on_different_devices():
    enc = P.build("alibi", num_heads=2, head_dim=8)
    with pytest.raises(ValueError, match="same device"):
        enc.bias(torch.arange(4), torch.arange(4, device="meta"))


@pytest.mark.parametrize("opts,match", [
    ({"mlp_width": 0}, "mlp_width must be a positive integer, got 0"),
    ({"mlp_width": -3}, "mlp_width"),
    ({"activation": "swish"}, "unknown FIRE activation 'swish'; valid: .*relu"),
    ({"init_c": float("nan")}, "init_c must be a finite positive"),
    ({"init_L": float("inf")}, "init_L must be a finite positive"),
    ({"mlp_layers": -1}, "mlp_layers"),
])
def test_bad_fire_options(opts, match):
    with pytest.raises(ValueError, match=match):
        P.build("fire", num_heads=2, head_dim=8, **opts)


def test_non_finite_learned_c_or_L():
    fire = P.build("fire", num_heads=2, head_dim=8)
    with torch.no_grad():
        fire.c.fill_(float("nan"))
    with pytest.raises(ValueError, match="FIRE c is not finite"):
        fire.bias(torch.arange(3), torch.arange(3))
    fire = P.build("fire", num_heads=2, head_dim=8)
    with torch.no_grad():
        fire.L_multiplier.fill_(float("inf"))
    with pytest.raises(ValueError, match="FIRE L is not finite"):
        fire.bias(torch.arange(3), torch.arange(3))


def test_other_option_validation():
    with pytest.raises(ValueError, match="factor"):
        P.build("rope_pi", num_heads=2, head_dim=8, factor=0.0)
    with pytest.raises(ValueError, match="num_buckets"):
        P.build("t5", num_heads=2, head_dim=8, num_buckets=1)
    with pytest.raises(ValueError, match="num_heads"):
        P.build("alibi", num_heads=0, head_dim=8)
