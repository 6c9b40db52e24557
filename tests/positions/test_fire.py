"""FIRE against Eq. (4)/(21)-(23) and the paper's Appendix E module."""

import math

import pytest
import torch
from torch import nn

from firepe import positions as P
from firepe.positions.fire import appendix_e_key_map, load_appendix_e


class AppendixEFIRE(nn.Module):
    """The paper's Appendix E formulation (the MLP may be replaced to compare deeper MLPs)."""

    def __init__(self, num_heads=12, mlp_width=32, init_c=0.1, init_L=512.0, eps=1e-6, mlp=None):
        super().__init__()
        self.mlp = mlp or nn.Sequential(nn.Linear(1, mlp_width), nn.ReLU(), nn.Linear(mlp_width, num_heads))
        self.c = nn.Parameter(torch.tensor(init_c))
        self.init_L = nn.Parameter(torch.tensor(init_L), requires_grad=False)
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.eps = eps

    def forward(self, seq_length):
        positions = torch.arange(seq_length, dtype=self.c.dtype)
        rel_distance = positions[:, None] - positions[None, :]
        threshold = torch.abs(self.L_multiplier * self.init_L)
        pos_normalizer = torch.max(positions, threshold)[:, None]
        rel_distance = torch.log(torch.abs(self.c * rel_distance) + 1)
        pos_normalizer = torch.log(torch.abs(self.c * pos_normalizer) + 1) + self.eps
        return self.mlp((rel_distance / pos_normalizer).unsqueeze(-1)).unsqueeze(0).permute(0, 3, 1, 2)


def mlp_reference(fire, x):
    """The MLP applied by hand, layer by layer, to a python float."""
    h = torch.tensor([x], dtype=torch.float64)
    for m in fire.mlp:
        if isinstance(m, nn.Linear):
            h = m.weight.detach() @ h + m.bias.detach()
        elif isinstance(m, nn.ReLU):
            h = h.clamp(min=0)
        elif isinstance(m, nn.GELU):
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return h


@pytest.mark.parametrize("log_transform,threshold", [(True, True), (True, False), (False, False), (False, True)])
def test_fire_matches_eq_21_to_23(log_transform, threshold):
    fire = P.build("fire", num_heads=3, head_dim=8, log_transform=log_transform, threshold=threshold,
                   init_L=6.0, init_c=0.3, bias_mode="exact").double()
    n = 14
    b = fire.bias(torch.arange(n), torch.arange(n))
    c = fire.c.item() if log_transform else None  # 0.3 rounded to float32 at construction

    def psi(x):
        return math.log(c * x + 1) if log_transform else x

    for i in range(n):
        for j in range(i + 1):
            norm = psi(max(6.0, i) if threshold else i) + 1e-6
            want = mlp_reference(fire, psi(i - j) / norm)
            torch.testing.assert_close(b[:, i, j], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_mlp_depth_and_activation(layers, activation):
    fire = P.build("fire", num_heads=2, head_dim=8, mlp_layers=layers, activation=activation, mlp_width=5).double()
    linears = [m for m in fire.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == layers + 1
    b = fire.bias(torch.arange(9), torch.arange(9))
    c = fire.c.item()
    x = math.log(c * 3 + 1) / (math.log(c * 512 + 1) + 1e-6)
    torch.testing.assert_close(b[:, 7, 4], mlp_reference(fire, x))


def test_final_activation_applies_to_output():
    fire = P.build("fire", num_heads=4, head_dim=8, final_activation=True, mlp_layers=1)
    with torch.no_grad():
        fire.mlp[2].bias.fill_(-100.0)
    assert (fire.bias(torch.arange(5), torch.arange(5)) == 0).all()


def test_default_matches_appendix_e_at_2048():
    torch.manual_seed(1)
    fire = P.build("fire", num_heads=12, head_dim=64)  # default: 2 hidden layers of width 32
    assert fire.mlp_layers == 2 and fire.mlp_width == 32
    ref = AppendixEFIRE(num_heads=12, mlp=fire.mlp)
    with torch.no_grad():
        fire.c.fill_(0.37)
        fire.L_multiplier.fill_(1.9)
        ref.c.fill_(0.37)
        ref.L_multiplier.fill_(1.9)
        n = 2048
        ours = fire.bias(torch.arange(n), torch.arange(n))
        theirs = ref(n)[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    assert (ours - theirs)[:, causal].abs().max().item() <= 1e-6


def test_appendix_e_state_dict_loads():
    torch.manual_seed(2)
    ref = AppendixEFIRE(num_heads=6, mlp_width=16).double()
    with torch.no_grad():
        ref.c.fill_(0.25)
        ref.L_multiplier.fill_(0.7)
    sd = {"layer3.attn.fire." + k: v for k, v in ref.state_dict().items()}
    fire = load_appendix_e(sd, prefix="layer3.attn.fire.", bias_mode="exact").double()
    assert fire.num_heads == 6 and fire.mlp_width == 16 and fire.mlp_layers == 1
    assert fire.L.item() == pytest.approx(0.7 * 512)
    assert fire.c.item() == pytest.approx(0.25)
    causal = torch.ones(600, 600, dtype=torch.bool).tril()  # entries with k > q are unspecified
    torch.testing.assert_close(fire.bias(torch.arange(600), torch.arange(600))[:, causal], ref(600)[0][:, causal])
    # the same module also loads the state dict directly: the names coincide
    plain = P.build("fire", num_heads=6, head_dim=8, mlp_layers=1, mlp_width=16).double()
    plain.load_state_dict(ref.state_dict())
    assert set(appendix_e_key_map()) == set(ref.state_dict())
    with pytest.raises(ValueError, match="missing"):
        load_appendix_e({"mlp.0.weight": torch.zeros(3, 1)})


@pytest.mark.parametrize("mode", ["reference", "exact", "table"])
def test_gradcheck_through_mlp_c_and_L(mode):
    torch.manual_seed(3)
    # L = 5.5 keeps every row away from the kink of max(L, i); gelu keeps f smooth for the table too
    fire = P.build("fire", num_heads=2, head_dim=8, mlp_width=4, init_L=5.5, activation="gelu",
                   bias_mode=mode, table_size=64).double()
    names = [n for n, _ in fire.named_parameters()]
    assert {"c", "L_multiplier"} <= set(names)
    params = tuple(p.detach().clone().requires_grad_(True) for p in fire.parameters())
    q = torch.arange(12)

    def fn(*ps):
        out = torch.func.functional_call(fire, dict(zip(names, ps)), (q, q))
        return out

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5)


def test_fire_shift_invariance_below_threshold_only():
    fire = P.build("fire", num_heads=3, head_dim=8, init_L=100.0).double()
    q = torch.arange(40)
    # rows i <= L: depends on i - j only
    torch.testing.assert_close(fire.bias(q + 50, q + 50), fire.bias(q, q), rtol=0, atol=1e-12)
    # past L, progressive interpolation makes the bias depend on i as well
    assert not torch.allclose(fire.bias(q + 500, q + 500), fire.bias(q, q))
    no_thr = P.build("fire", num_heads=3, head_dim=8, threshold=False).double()
    assert not torch.allclose(no_thr.bias(q + 5, q + 5), no_thr.bias(q, q))


def test_fire_inputs_lie_in_unit_interval_at_any_length():
    fire = P.build("fire", num_heads=2, head_dim=8, init_L=16.0)
    q = torch.arange(5000)
    x = fire.normalized_distance(q[-50:], q)
    causal = q[None, :] <= q[-50:, None]
    assert x[causal].min() >= 0 and x[causal].max() <= 1


def test_fire_s_registry_name_shares():
    assert P.build("fire_s", num_heads=2, head_dim=8).layer_shared
    assert not P.build("fire", num_heads=2, head_dim=8).layer_shared
    assert P.build("fire_s", num_heads=2, head_dim=8, mlp_layers=1).mlp_layers == 1


def test_table_mode_error_and_gradients_fp32():
    """Table mode vs the exact formula in fp32 at n = 2048 (rows past L interpolate)."""
    torch.manual_seed(4)
    exact = P.build("fire", num_heads=12, head_dim=64, init_L=512.0, bias_mode="exact")
    table = P.build("fire", num_heads=12, head_dim=64, init_L=512.0)  # table: the default
    table.load_state_dict(exact.state_dict())
    with torch.no_grad():
        for a, b in zip(exact.mlp.parameters(), table.mlp.parameters()):
            a.mul_(3)
            b.mul_(3)
    n = 2048
    q = torch.arange(n)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    be, bt = exact.bias(q, q), table.bias(q, q)
    assert (be - bt)[:, causal].abs().max().item() <= 1e-4
    # rows i < L are exact in table mode too (gathered from per-distance MLP values)
    assert torch.equal(be[:, :512][:, causal[:512]], bt[:, :512][:, causal[:512]])
    g = torch.randn(12, n, n) * causal
    be.backward(g)
    bt.backward(g)
    for (name, a), b in zip(exact.named_parameters(), table.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=2e-2, atol=1e-2 * a.grad.abs().max().item(), msg=name)


def test_table_cache_without_autograd_follows_parameter_updates():
    fire = P.build("fire", num_heads=2, head_dim=8, init_L=4.0, bias_mode="table")
    q = torch.arange(30)
    with torch.no_grad():
        first = fire.bias(q, q)
        assert fire.interpolation_table() is fire.interpolation_table()  # cached
        fire.mlp[-1].bias.add_(1.0)                                       # in-place update
        second = fire.bias(q, q)
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    torch.testing.assert_close(second[:, causal], first[:, causal] + 1.0)
    fresh = fire.bias(q, q)  # with autograd: never cached
    assert fresh.requires_grad
    torch.testing.assert_close(fresh.detach(), second)
