"""FIRE's bias modes agree with the reference (also at i == L), in every backend; the table cache is fresh."""

import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from firepe import positions as P
from firepe.positions import fire_kernel


def test_table_is_the_default_mode():
    assert P.build("fire", num_heads=2, head_dim=8).bias_mode == "table"
    assert P.build("fire_s", num_heads=2, head_dim=8).bias_mode == "table"
    assert P.options("fire")["bias_mode"] == "table"


def _bias_and_grads(mode, dtype, kernel=True, monkeypatch=None):
    torch.manual_seed(0)
    fire = P.build("fire", num_heads=2, head_dim=8, mlp_width=4, init_L=6.0, activation="gelu", bias_mode=mode)
    fire = fire.to(dtype)  # init_L = 6, L_multiplier = 1: L is exactly 6, the row i = 6 is at the kink of max(L, i)
    if not kernel:
        monkeypatch.setattr(fire_kernel, "_LIB", [None])
    q = torch.arange(12)
    cotangent = torch.randn(2, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64).tril()
    cotangent[:, 6] *= 20  # weight the row i = L
    bias = fire.bias(q, q)
    (bias * cotangent.to(dtype)).sum().backward()
    return bias.detach().double(), {n: p.grad.double() for n, p in fire.named_parameters()}


@pytest.mark.parametrize("mode,dtype,kernel", [("exact", torch.float64, True), ("table", torch.float64, True),
                                               ("table", torch.float32, True), ("table", torch.float32, False),
                                               ("exact", torch.float32, True)])
def test_every_mode_matches_the_reference_at_i_equal_L(mode, dtype, kernel, monkeypatch):
    """torch.maximum (Appendix E) splits the subgradient of max(L, i) half-half at i == L: every mode must."""
    ref_bias, ref_grads = _bias_and_grads("reference", dtype)
    bias, grads = _bias_and_grads(mode, dtype, kernel, monkeypatch)
    # exact: rounding only; table: interpolation slopes stand in for f' (relative 1e-5 at the default size),
    # and in float32 those slopes are differences of neighbouring table entries (relative ~1e-3 for c)
    tol = {torch.float64: 1e-9, torch.float32: 1e-5}[dtype] if mode == "exact" else {
        torch.float64: 1e-4, torch.float32: 2e-2}[dtype]
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert (bias - ref_bias)[:, causal].abs().max() <= tol
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=tol, atol=tol * max(1.0, g.abs().max().item()), msg=name)


@pytest.mark.parametrize("mode", ["exact", "reference", "table"])
def test_score_mod_gives_the_bias_of_the_chosen_mode(mode):
    """FlexAttention's score_mod reads the bias of ``bias_mode`` (exact/reference: the materialized bias)."""
    torch.manual_seed(0)
    fire = P.build("fire", num_heads=3, head_dim=8, init_L=5.0, table_size=4, bias_mode=mode)  # coarse table
    q_pos, k_pos = torch.arange(4, 20), torch.arange(20)
    mod = fire.score_mod(q_pos, k_pos)
    h, qi, ki = torch.arange(3)[:, None, None], torch.arange(16)[None, :, None], torch.arange(20)[None, None, :]
    with torch.no_grad():
        got = mod(torch.zeros(()), 0, h, qi, ki)
        want = fire.bias(q_pos, k_pos)
    causal = k_pos[None, :] <= q_pos[:, None]
    torch.testing.assert_close(got[:, causal], want[:, causal], rtol=0, atol=1e-6)
    if mode != "table":  # the coarse table is far from the exact values: a table-based score_mod would fail above
        table = P.build("fire", num_heads=3, head_dim=8, init_L=5.0, table_size=4)
        table.load_state_dict(fire.state_dict())
        with torch.no_grad():
            assert (table.bias(q_pos, k_pos) - want)[:, causal].abs().max() > 1e-3


def _interpolating(fire):
    with torch.no_grad():
        return fire.bias(torch.arange(30), torch.arange(30))


@pytest.mark.parametrize("how", ["data", "vector_to_parameters", "data_inplace", "buffer"])
def test_table_cache_sees_updates_that_bypass_the_version_counter(how):
    fire = P.build("fire", num_heads=2, head_dim=8, init_L=4.0, activation="power" if how == "buffer" else "relu",
                   mlp_layers=1, mlp_width=3)
    with torch.no_grad():
        for p in fire.mlp.parameters():
            p.uniform_(0.1, 1.0)  # positive pre-activations: the power neurons are not all zero
    before = _interpolating(fire)
    last = fire.mlp[-1]
    if how == "data":
        last.bias.data = last.bias.data + 1.0
    elif how == "vector_to_parameters":
        vector_to_parameters(parameters_to_vector(fire.mlp.parameters()) * 2, fire.mlp.parameters())
    elif how == "data_inplace":
        last.bias.data.add_(1.0)
    else:
        fire.mlp[1].exponent.data.fill_(2.0)
    after = _interpolating(fire)
    with torch.enable_grad():
        fresh = fire.bias(torch.arange(30), torch.arange(30)).detach()  # with autograd: never cached
    causal = torch.ones(30, 30, dtype=torch.bool).tril()
    torch.testing.assert_close(after[:, causal], fresh[:, causal])
    assert (after - before)[:, causal].abs().max() > 0.1


def test_table_cache_is_reused_when_nothing_changed():
    fire = P.build("fire", num_heads=2, head_dim=8, init_L=4.0)
    with torch.no_grad():
        assert fire.interpolation_table() is fire.interpolation_table()
