"""FIRE's MLP on a grid as a piecewise-linear function (the interpolation table) equals the MLP."""

import pytest
import torch

from firepe import positions as P
from firepe.positions import fire_mlp


def _fire(layers=2, final_activation=False, activation="relu", width=32, heads=4, scale=1.0, seed=0):
    torch.manual_seed(seed)
    fire = P.build("fire", num_heads=heads, head_dim=8, mlp_layers=layers, mlp_width=width,
                   final_activation=final_activation, activation=activation)
    with torch.no_grad():
        for p in fire.mlp.parameters():
            p.mul_(scale)
    return fire


def _values_and_grads(fn, fire, cot):
    out = fn()
    grads = torch.autograd.grad(out, list(fire.mlp.parameters()), cot)
    return out.detach(), grads


@pytest.mark.parametrize("use_kernel", [True, False])
@pytest.mark.parametrize("layers,final_activation,scale", [(1, False, 1.0), (2, False, 1.0), (2, False, 4.0),
                                                           (2, True, 3.0), (3, False, 2.0), (3, True, 1.0)])
def test_values_and_gradients_equal_the_mlp(layers, final_activation, scale, use_kernel):
    fire = _fire(layers, final_activation, scale=scale)
    x = torch.linspace(0, 1, 4099)
    cot = torch.randn(fire.num_heads, len(x), generator=torch.Generator().manual_seed(2))
    want, want_g = _values_and_grads(lambda: fire.f(x).T, fire, cot)  # the MLP run on every point
    got, got_g = _values_and_grads(lambda: fire_mlp.grid_values(fire.mlp, x, use_kernel), fire, cot)
    assert got.shape == (fire.num_heads, len(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4 * b.abs().max().item())


def test_kernel_and_pytorch_cuts_are_identical():
    g = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 1, 2000)
    x = torch.cat([x[:500], x[500:501].repeat(7), x[501:]])  # ascending with ties
    starts = torch.tensor([0, 300, 1200])
    alpha = torch.randn(3, 17, generator=g)
    beta = torch.randn(3, 17, generator=g) * 0.5
    alpha[0, 3] = 0.0  # a neuron constant in x
    beta[1, 5] = -alpha[1, 5] * x[700]  # a kink on a grid point
    a = fire_mlp.split(x, starts, alpha, beta, use_kernel=True)
    b = fire_mlp.split(x, starts, alpha, beta, use_kernel=False)
    assert fire_mlp.available()
    for u, v in zip(a, b):
        assert torch.equal(u.to(v.dtype), v)


def test_every_piece_has_one_mask_and_pieces_cut_at_flips():
    g = torch.Generator().manual_seed(4)
    x = torch.linspace(0, 1, 3001)
    alpha, beta = torch.randn(1, 24, generator=g), torch.randn(1, 24, generator=g) * 0.5
    starts, parent, masks = fire_mlp.split(x, torch.zeros(1, dtype=torch.long), alpha, beta)
    on = (x[:, None] * alpha + beta) > 0  # independent: the mask on every point
    ends = torch.cat([starts[1:], torch.tensor([len(x)])])
    assert starts[0] == 0 and (parent == 0).all()
    for s, e, m in zip(starts.tolist(), ends.tolist(), masks):
        assert (on[s:e] == m.bool()).all()
    for s in starts[1:].tolist():  # a cut only where some mask flips
        assert (on[s] != on[s - 1]).any()
    assert len(starts) <= 25


def test_kink_on_a_grid_point_takes_relu_gradient():
    fire = _fire(layers=1, width=6, heads=2)
    x = torch.linspace(0, 1, 101)
    with torch.no_grad():
        fire.mlp[0].bias[2] = 0.0  # z1 = 0 at x = 0: relu'(0) = 0 there
        fire.mlp[0].weight[3, 0] = 2.0
        fire.mlp[0].bias[3] = -2.0 * float(x[40])  # z1 = 0 (as rounded) at a grid point
    cot = torch.randn(2, 101, generator=torch.Generator().manual_seed(5))
    want, want_g = _values_and_grads(lambda: fire.f(x).T, fire, cot)
    got, got_g = _values_and_grads(lambda: fire_mlp.grid_values(fire.mlp, x), fire, cot)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "identity", "cos"])
def test_other_activations_run_the_mlp_itself(activation):
    fire = _fire(activation=activation)
    x = torch.linspace(0, 1, 300)
    assert torch.equal(fire_mlp.grid_values(fire.mlp, x), fire.f(x).T)


def test_table_mode_bias_still_matches_the_exact_mode():
    fire = _fire(scale=2.0)
    fire.init_L.fill_(20.0)
    q = torch.arange(120)
    table = fire.bias(q, q)
    fire.bias_mode = "exact"
    causal = torch.ones(120, 120, dtype=torch.bool).tril()
    assert (table - fire.bias(q, q))[:, causal].abs().max() <= 1e-4
