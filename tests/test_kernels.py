"""The fused CPU kernel of FIRE's table mode equals the PyTorch implementation (values and gradients)."""

import shutil

import pytest
import torch

from firepe import kernels
from firepe import positions as P

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler on this machine")


@pytest.fixture
def pytorch_path(monkeypatch):
    """Run FIRE with the kernel switched off (as on a machine without a C compiler)."""
    monkeypatch.setattr(kernels, "_LIB", [None])


def _fire(threshold=True, log_transform=True, table_size=512):
    torch.manual_seed(0)
    fire = P.build("fire", num_heads=5, head_dim=8, init_L=20.0, threshold=threshold, log_transform=log_transform,
                   bias_mode="table", table_size=table_size)
    with torch.no_grad():
        for p in fire.mlp.parameters():
            p.mul_(3)  # a wiggly f, so interpolation and its gradients matter
    return fire


def _bias_and_grads(fire, q_pos, k_pos, cotangent):
    bias = fire.bias(q_pos, k_pos)
    bias.backward(cotangent)
    grads = {name: p.grad.clone() for name, p in fire.named_parameters()}
    fire.zero_grad(set_to_none=True)
    return bias.detach(), grads


POSITIONS = {
    "square": (torch.arange(90), torch.arange(90)),
    "cache_rows": (torch.arange(70, 90), torch.arange(90)),     # queries are the last rows (KV cache)
    "one_row": (torch.tensor([123]), torch.arange(124)),         # one decoding step past L
    "shifted_keys": (torch.arange(40, 80), torch.arange(30, 80)),
    "unsorted_keys": (torch.arange(60), torch.randperm(60, generator=torch.Generator().manual_seed(1))),
}


@needs_cc
@pytest.mark.parametrize("where", sorted(POSITIONS))
@pytest.mark.parametrize("threshold,log_transform", [(True, True), (True, False), (False, True)])
def test_kernel_equals_pytorch_ops(where, threshold, log_transform, monkeypatch):
    assert kernels.available()
    q_pos, k_pos = POSITIONS[where]
    visible = k_pos[None, :] <= q_pos[:, None]
    fire = _fire(threshold, log_transform)
    cotangent = torch.randn(5, len(q_pos), len(k_pos)) * visible
    fused, fused_grads = _bias_and_grads(fire, q_pos, k_pos, cotangent)
    assert torch.all(fused[:, ~visible] == 0)  # hidden entries are 0 (callers mask them)
    monkeypatch.setattr(kernels, "_LIB", [None])
    plain, plain_grads = _bias_and_grads(fire, q_pos, k_pos, cotangent)
    torch.testing.assert_close(fused[:, visible], plain[:, visible], rtol=0, atol=2e-6)
    for name, g in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)


@needs_cc
def test_kernel_rows_below_threshold_are_the_exact_formula():
    fire = _fire(table_size=16384)
    q = torch.arange(200)
    fused = fire.bias(q, q)
    fire.bias_mode = "exact"
    exact = fire.bias(q, q)
    causal = torch.ones(200, 200, dtype=torch.bool).tril()
    rows = q <= 20
    assert torch.equal(fused[:, rows][:, causal[rows]], exact[:, rows][:, causal[rows]])
    assert (fused - exact)[:, causal].abs().max() <= 1e-4


def test_without_kernel_fire_still_works(pytorch_path):
    assert not kernels.available()
    with pytest.raises(RuntimeError, match="not available"):
        kernels.table_lookup(torch.zeros(1, 4), torch.zeros(3), torch.ones(2), torch.arange(2), torch.arange(2),
                             torch.ones(2, dtype=torch.bool), 0, 4)
    fire = _fire(table_size=16384)
    q = torch.arange(50)
    bias = fire.bias(q, q)
    fire.bias_mode = "exact"
    causal = torch.ones(50, 50, dtype=torch.bool).tril()
    assert (bias - fire.bias(q, q))[:, causal].abs().max() <= 1e-4


def test_kernel_switched_off_by_environment_or_broken_compiler(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.setenv("FIREPE_KERNEL", "0")
    assert not kernels.available()
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.delenv("FIREPE_KERNEL")
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert not kernels.available()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@needs_cc
def test_kernel_compiles_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_LIB", [])
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
    assert kernels.available()
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]


@needs_cc
def test_kernel_gradients_are_deterministic():
    """Same inputs, same thread count -> bitwise the same gradients (resumed runs stay identical)."""
    fire = _fire()
    q = torch.arange(300)
    cotangent = torch.randn(5, 300, 300)
    runs = [_bias_and_grads(fire, q, q, cotangent)[1] for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(runs[0][name], other[name]) for name in runs[0])


@needs_cc
@pytest.mark.parametrize("heads", [4, 5, 8, 3])
def test_kernel_head_groups_equal_the_scalar_build(heads, monkeypatch, tmp_path):
    """Four heads at a time (SSE2 path) == one head at a time (a build with -DFIREPE_NO_SIMD): the
    same values bit for bit (same operations per entry), gradients up to summation order. A small
    table, so that every layout here has enough lookups per table entry to take the grouped path."""
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
    scalar = kernels.build(("FIREPE_NO_SIMD",))
    assert scalar is not None
    torch.manual_seed(0)
    fire = P.build("fire", num_heads=heads, head_dim=8, init_L=20.0, bias_mode="table", table_size=64)
    with torch.no_grad():
        for p in fire.mlp.parameters():
            p.mul_(3)
    for q_pos, k_pos in (POSITIONS["square"], POSITIONS["cache_rows"], POSITIONS["shifted_keys"]):
        cotangent = torch.randn(heads, len(q_pos), len(k_pos)) * (k_pos[None, :] <= q_pos[:, None])
        grouped, grouped_grads = _bias_and_grads(fire, q_pos, k_pos, cotangent)
        monkeypatch.setattr(kernels, "_LIB", [scalar])
        single, single_grads = _bias_and_grads(fire, q_pos, k_pos, cotangent)
        monkeypatch.undo()
        monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
        assert torch.equal(grouped, single)
        for name, g in single_grads.items():
            torch.testing.assert_close(grouped_grads[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)
