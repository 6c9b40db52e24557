"""The fused CPU kernel of FIRE's table mode equals the PyTorch implementation (values and gradients)."""

import os
import shutil
import time
import warnings

import pytest
import torch

from firepe import cbuild, kernels
from firepe import positions as P
from firepe.positions import fire_kernel

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler on this machine")


@pytest.fixture
def pytorch_path(monkeypatch):
    """Run FIRE with the kernel switched off (as on a machine without a C compiler)."""
    monkeypatch.setattr(fire_kernel, "_LIB", [None])


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
    monkeypatch.setattr(fire_kernel, "_LIB", [None])
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
    rows = q < 20  # rows i >= L = 20 interpolate
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
    monkeypatch.setattr(fire_kernel, "_LIB", [])
    monkeypatch.setenv("FIREPE_KERNEL", "0")
    assert not kernels.available()
    monkeypatch.setattr(fire_kernel, "_LIB", [])
    monkeypatch.delenv("FIREPE_KERNEL")
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert not kernels.available()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


@needs_cc
def test_kernel_compiles_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(fire_kernel, "_LIB", [])
    monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
    assert kernels.available()
    # the library and the record of its size and sha256 (checked before every load)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".sha256", ".so"]


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
        monkeypatch.setattr(fire_kernel, "_LIB", [scalar])
        single, single_grads = _bias_and_grads(fire, q_pos, k_pos, cotangent)
        monkeypatch.undo()
        monkeypatch.setenv("FIREPE_CACHE", str(tmp_path))
        assert torch.equal(grouped, single)
        for name, g in single_grads.items():
            torch.testing.assert_close(grouped_grads[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=name)


def _lookup_args(**change):
    """Valid arguments (2 heads, 3 queries at 4..6 over keys 0..6, rows 5 and 6 interpolate) with changes."""
    args = dict(table=torch.zeros(2, 7 + 8), psi_d=torch.zeros(7), inv_norm=torch.ones(3), q_pos=torch.arange(4, 7),
                k_pos=torch.arange(7), long_row=torch.tensor([False, True, True]), base=7, grid=8)
    args.update(change)
    return args


@pytest.mark.parametrize("change,match", [
    ({"psi_d": torch.zeros(6)}, "psi_d has 6 entries but interpolating rows reach distance 6"),
    ({"base": 4, "grid": 11}, "rows that read the distance table reach distance 4, past its 4 columns"),
    ({"base": 8}, "base \\+ grid = 16 exceeds the table's 15 columns"),
    ({"base": 2**40}, "base \\+ grid = .* exceeds"),
    ({"base": -1}, "base must be an integer >= 0"),
    ({"grid": 1}, "grid must be an integer >= 2"),
    ({"grid": 8.0}, "grid must be an integer"),
    ({"table": torch.zeros(2, 15, dtype=torch.float64)}, "table must be a 2-D float32 CPU tensor"),
    ({"table": torch.zeros(30)}, "table must be a 2-D"),
    ({"table": torch.zeros(0, 15)}, "at least one head"),
    ({"psi_d": torch.zeros(7, 1)}, "psi_d must be a 1-D float32"),
    ({"inv_norm": torch.ones(2)}, "inv_norm \\(2\\) and long_row \\(3\\) need one entry per query \\(3\\)"),
    ({"long_row": torch.ones(2, dtype=torch.bool)}, "need one entry per query"),
    ({"long_row": torch.ones(3, dtype=torch.uint8)}, "long_row must be a 1-D bool"),
    ({"q_pos": torch.arange(4, 7).float()}, "q_pos must be a 1-D integer CPU tensor"),
    ({"k_pos": torch.tensor([-1, 0, 1])}, "k_pos must be non-negative"),
    ({"q_pos": torch.arange(4, 7, device="meta")}, "q_pos must be a 1-D integer CPU tensor"),
])
def test_table_lookup_refuses_arguments_that_would_read_out_of_bounds(change, match):
    kernels.check_lookup_args(**_lookup_args())  # the unchanged arguments are fine
    with pytest.raises(ValueError, match=match):
        kernels.table_lookup(**_lookup_args(**change))


@needs_cc
def test_table_lookup_at_the_bounds():
    table = torch.randn(2, 15)
    out = kernels.table_lookup(**_lookup_args(table=table))
    assert torch.equal(out[:, 0, :5], table[:, [4, 3, 2, 1, 0]])  # row 4 reads distances 4..0
    assert torch.equal(out[:, 1:, 0], table[:, [7, 7]])  # psi_d = 0: interpolating rows read f(0)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """An empty private kernel cache and no loaded kernel."""
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("FIREPE_CACHE", str(folder))
    monkeypatch.setattr(fire_kernel, "_LIB", [])
    return folder


@needs_cc
@pytest.mark.parametrize("where", ["folder", "library"])
@pytest.mark.parametrize("bits", [0o020, 0o002])
def test_kernel_cache_writable_by_others_is_refused(cache, where, bits):
    target = cbuild.target_path("fire_table.c")
    target.write_bytes(b"not a library")  # never loaded: the checks come first
    path = cache if where == "folder" else target
    path.chmod(path.stat().st_mode | bits)
    with pytest.warns(UserWarning, match="writable by group or others.*using PyTorch ops"):
        assert not fire_kernel.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not fire_kernel.available()  # warned once: the result is remembered


@needs_cc
@pytest.mark.parametrize("where", ["folder", "library"])
def test_kernel_cache_owned_by_someone_else_is_refused(cache, where, monkeypatch):
    target = cbuild.target_path("fire_table.c")
    target.write_bytes(b"not a library")
    owner = (cache if where == "folder" else target).stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.warns(UserWarning, match=f"is owned by uid {owner}, not by the current user"):
        assert fire_kernel.build() is None


@needs_cc
def test_broken_cached_library_falls_back_with_a_warning(cache, tmp_path):
    target = cbuild.target_path("fire_table.c")
    target.write_bytes(b"garbage, not an ELF file")
    target.chmod(0o755)
    cbuild.record_path(target).write_text(f"{len(b'garbage, not an ELF file')} "
                                           f"{__import__('hashlib').sha256(b'garbage, not an ELF file').hexdigest()}\n")
    with pytest.warns(UserWarning, match="could not load .*delete it to rebuild"):
        assert fire_kernel.build() is None
    other = tmp_path / "other.c"
    other.write_text("int something_else(void) { return 1; }\n")
    assert cbuild.compile_library(cbuild.compiler(), other, target)  # a real library without the symbols
    with pytest.warns(UserWarning, match="could not load .*fire_table_forward"):
        assert fire_kernel.build() is None


@needs_cc
def test_stale_build_temporaries_are_removed(cache):
    old, fresh = cache / "tmpk1lled0.so", cache / "tmpbuilding.so"
    for f in (old, fresh):
        f.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    assert fire_kernel.available()
    assert not old.exists() and fresh.exists()  # a build running elsewhere keeps its file
    assert cbuild.target_path("fire_table.c").stat().st_mode & 0o022 == 0
