"""The flash-style CPU kernel (``csrc/flash_attention.c``) against an independent float64 formula: every bias
form (distance table, FIRE's interpolating rows, FoX's data bias), lengths that are not multiples of the
64-wide blocks, head sizes that are not multiples of 16, cached keys; its variants and thread counts; its
argument checks; and every bias encoding through the model's default CPU path."""

import shutil

import pytest
import torch

from firepe import attention_flash
from firepe.positions.base import FlashBias

pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"),
    pytest.mark.skipif(not attention_flash.available(), reason="the flash kernel does not run on this CPU"),
]


def _formula(q, k, v, q0, k0, table=None, base=0, grid=0, psi=None, inv=None, long_row=None, cq=None, ck=None):
    """softmax over visible keys of q.k / sqrt(D) + bias, @ v; written from the definitions, any dtype."""
    B, H, Q, D = q.shape
    K = k.shape[2]
    d = (q0 + torch.arange(Q))[:, None] - (k0 + torch.arange(K))[None, :]
    seen, dc = d >= 0, d.clamp(min=0)
    s = q @ k.transpose(-1, -2) / D ** 0.5
    if table is not None:
        bias = torch.zeros(H, Q, K, dtype=q.dtype)
        rows = torch.ones(Q, dtype=torch.bool) if long_row is None else ~long_row
        for i in torch.nonzero(rows).flatten().tolist():
            bias[:, i] = table[:, dc[i].clamp(max=max(base - 1, 0))] if base else 0
        if long_row is not None:
            for i in torch.nonzero(long_row).flatten().tolist():
                x = psi[dc[i]] * inv[i]
                p = x.clamp(0, 1) * (grid - 1)
                kb = p.detach().floor().clamp(max=grid - 2).long()
                t = table[:, base:base + grid]
                bias[:, i] = t[:, kb] + (t[:, kb + 1] - t[:, kb]) * (p - kb)
        s = s + bias
    if cq is not None:
        s = s + cq[..., :, None] - ck[..., None, :]
    probs = torch.softmax(s.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)
    return probs @ v


def _case(B, H, Q, K, D, q0, k0, form, seed=0):
    """float64 leaves for the formula and the kernel's kwargs built from float32 copies of them."""
    g = torch.Generator().manual_seed(seed)
    x = dict(q=torch.randn(B, H, Q, D, generator=g), k=torch.randn(B, H, K, D, generator=g),
             v=torch.randn(B, H, K, D, generator=g))
    span = q0 + Q - 1 - k0
    if form in ("distance", "fire", "fire_all", "fire_fine"):
        # fire_fine: a grid finer than the distances (as FIRE's 16,384 points), so neighbouring keys fall in
        # different bins and the AVX-512 variant scatters the table's gradient 16 keys at a time
        grid = {"distance": 0, "fire_fine": 4096}.get(form, 9)
        base = 0 if form == "fire_all" else span + 1
        x["table"] = torch.randn(H, base + grid, generator=g)
        if form == "fire_fine":  # a smooth f on the grid, as FIRE's MLP: float32's rounding of the coordinate
            # (~p * 6e-8 of a bin) then moves the bias by rounding, not by a random neighbour's difference
            u = torch.linspace(0, 1, grid)
            x["table"][:, base:] = torch.sin(3 * u[None] + torch.arange(H)[:, None])
        extra = dict(base=base, grid=grid)
        if form != "distance":
            qpos = (q0 + torch.arange(Q)).double()
            x["psi"] = torch.log(0.3 * torch.arange(span + 1).double() + 1)
            # + 1e-3 as FIRE's eps: x = 1 exactly (d = i) would sit on the clamp's edge, where float32 and float64
            # round to different sides
            x["inv"] = 1 / (torch.log(0.3 * qpos.clamp(min=q0 + Q // 2) + 1) + 1e-3)
            extra["long_row"] = qpos >= q0 + Q // 2 if form != "fire_all" else torch.ones(Q, dtype=torch.bool)
    elif form == "fox":
        x["cq"], x["ck"] = torch.randn(B, H, Q, generator=g), torch.randn(B, H, K, generator=g)
        extra = {}
    else:
        extra = {}
    return {n: t.double().requires_grad_() for n, t in x.items()}, extra


def _flash(x, extra, q0, k0):
    f = {n: t.detach().float().requires_grad_() for n, t in x.items()}
    Q, K = f["q"].shape[2], f["k"].shape[2]
    q_pos, k_pos = torch.arange(q0, q0 + Q), torch.arange(k0, k0 + K)
    if "cq" in f:
        out = attention_flash.flash_data_attention(f["q"], f["k"], f["v"], f["cq"], f["ck"], q_pos, k_pos)
    elif "table" in f:
        bias = FlashBias(f["table"], extra["base"], extra["grid"], f.get("psi"), f.get("inv"), extra.get("long_row"))
        out = attention_flash.flash_attention(f["q"], f["k"], f["v"], bias, q_pos, k_pos)
    else:
        out = attention_flash.flash_attention(f["q"], f["k"], f["v"], None, q_pos, k_pos)
    return out, f


CASES = {  # B, H, Q, K, D, q0, k0
    "one_block": (2, 3, 37, 37, 32, 0, 0),
    "past_a_block": (1, 2, 130, 130, 64, 0, 0),
    "odd_head_dim": (2, 2, 65, 65, 40, 0, 0),
    "head_dim_5": (1, 2, 20, 20, 5, 0, 0),
    "wide_head": (1, 1, 70, 70, 136, 0, 0),
    "cached_keys": (2, 2, 11, 140, 16, 129, 0),
    "one_query": (3, 2, 1, 90, 64, 89, 0),
    "shifted": (1, 2, 70, 80, 16, 40, 30),
    "unseen_rows": (1, 2, 30, 20, 16, 0, 10),  # queries 0..9 see no key
    "many_rows": (11, 2, 40, 40, 16, 0, 0),  # two chunks of batch rows in the backward's work items
}


@pytest.mark.parametrize("form", ["none", "distance", "fire", "fire_all", "fire_fine", "fox"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_values_and_gradients_equal_the_formula(case, form):
    B, H, Q, K, D, q0, k0 = CASES[case]
    x, extra = _case(B, H, Q, K, D, q0, k0, form)
    want = _formula(*(x[n] for n in ("q", "k", "v")), q0, k0, x.get("table"), extra.get("base", 0),
                    extra.get("grid", 0), x.get("psi"), x.get("inv"), extra.get("long_row"), x.get("cq"), x.get("ck"))
    got, f = _flash(x, extra, q0, k0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)
    cot = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    names = list(x)
    g_want = torch.autograd.grad(want, [x[n] for n in names], cot.double(), allow_unused=True)
    g_got = torch.autograd.grad(got, [f[n] for n in names], cot, allow_unused=True)
    for n, a, b in zip(names, g_got, g_want):
        b = torch.zeros_like(x[n]) if b is None else b
        a = torch.zeros_like(f[n]) if a is None else a
        # relative to the largest entry; cq's gradient is 0 in exact arithmetic (softmax ignores a per-row
        # shift), so there the float32 sums of +-dS are held to an absolute 1e-5
        scale = max(float(b.abs().max()), 2.0 if n == "cq" else 1e-3)
        # a grid of 4,096 points: float32 places the coordinate p = x (G - 1) to ~2.4e-4 of a bin, and that
        # moves a key's weight between two neighbouring bins by as much (their sum stays exact)
        atol = 5e-4 if form == "fire_fine" and n in ("table", "psi", "inv") else 5e-6
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0, atol=atol, msg=n)


def test_float32_gradcheck_on_a_small_case():
    """The kernel is float32 only, so its gradients meet finite differences at float32 step sizes, for the
    inputs the output is smooth in (``psi`` and ``inv_norm`` move the interpolation across bin edges, where a
    step of 1e-2 is not a derivative: the test above checks them against float64 autograd)."""
    x, extra = _case(1, 2, 9, 9, 5, 0, 0, "fire")
    f = {n: t.detach().float() for n, t in x.items()}
    q_pos = torch.arange(9)

    def fn(q, k, v, table):
        bias = FlashBias(table, extra["base"], extra["grid"], f["psi"], f["inv"], extra["long_row"])
        return attention_flash.flash_attention(q, k, v, bias, q_pos, q_pos)

    args = tuple(f[n].requires_grad_() for n in ("q", "k", "v", "table"))
    with pytest.warns(UserWarning, match="double precision"):
        assert torch.autograd.gradcheck(fn, args, eps=1e-2, atol=2e-2, rtol=2e-2)


def _run(x, extra):
    out, f = _flash(x, extra, 0, 0)
    grads = torch.autograd.grad(out, list(f.values()), torch.ones_like(out))
    return [out, *grads]


@pytest.mark.parametrize("form", ["distance", "fire", "fire_fine", "fox"])
def test_results_do_not_depend_on_threads_or_variant(form):
    x, extra = _case(10, 3, 150, 150, 40, 0, 0, form)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(x, extra)
        torch.set_num_threads(2)
        two = _run(x, extra)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    best = attention_flash.variant()
    if best != 4 or attention_flash.use_variant(3) != 3:
        pytest.skip("this CPU runs one variant only")
    try:
        avx2 = _run(x, extra)
    finally:
        assert attention_flash.use_variant(4) == 4
    for a, b in zip(one, avx2):
        assert torch.equal(a, b)


def test_bias_that_does_not_cover_the_distances_is_refused():
    q = torch.randn(1, 2, 10, 8)
    pos = torch.arange(10)
    with pytest.raises(ValueError, match="distance columns"):
        attention_flash.flash_attention(q, q, q, FlashBias(torch.zeros(2, 5), 5), pos, pos)
    with pytest.raises(ValueError, match="psi has 4 entries"):
        bias = FlashBias(torch.zeros(2, 14), 10, 4, torch.zeros(4), torch.ones(10), torch.ones(10, dtype=torch.bool))
        attention_flash.flash_attention(q, q, q, bias, pos, pos)
    with pytest.raises(ValueError, match=r"\[H=2, M\]"):
        attention_flash.flash_attention(q, q, q, FlashBias(torch.zeros(3, 10), 10), pos, pos)
    with pytest.raises(ValueError, match="contiguous"):
        attention_flash.flash_attention(q, q, q, None, pos * 2, pos * 2)


def test_positions_that_are_not_ranges_take_the_other_kernel():
    q = torch.randn(1, 1, 4, 8)
    assert attention_flash.contiguous_start(torch.arange(3, 7)) == 3
    assert attention_flash.contiguous_start(torch.tensor([0, 2, 3, 4])) is None
    assert attention_flash.contiguous_start(torch.tensor([4, 3, 2, 1])) is None
    assert not attention_flash.supports(q, q, q, torch.tensor([0, 1, 5, 6]), torch.tensor([0, 1, 5, 6]))
    assert not attention_flash.supports(q.double(), q.double(), q.double(), torch.arange(4), torch.arange(4))


BIAS_ENCODINGS = ["alibi", "kerple_log", "kerple_power", "t5", "sandwich", "fire", "fire_s"]


@pytest.mark.parametrize("name", BIAS_ENCODINGS)
def test_every_bias_encoding_takes_the_flash_path_and_matches_the_materialized_bias(name, monkeypatch):
    """The model's default CPU backend runs the flash kernel (no [H, Q, K] bias is computed) and gives the
    materializing path's loss and gradients, the encoding's parameters included."""
    from firepe.config import preset
    from firepe.model import GPT

    torch.manual_seed(0)
    opts = {"init_L": 40.0} if name.startswith("fire") else {}
    model = GPT(preset("tiny", position=name, position_options=opts, vocab_size=64))
    x, y = torch.randint(0, 64, (2, 100)), torch.randint(0, 64, (2, 100))

    def loss_and_grads():
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []  # query rows of every compute_bias call (a per-distance table is one row)
    for enc in model.position_modules():
        monkeypatch.setattr(enc, "compute_bias", lambda q, k, _f=enc.compute_bias: calls.append(len(q)) or _f(q, k))
    flash_loss, flash_grads = loss_and_grads()
    assert set(calls) <= {1}
    calls.clear()
    monkeypatch.setattr(attention_flash, "supports", lambda *a: False)
    ref_loss, ref_grads = loss_and_grads()
    assert max(calls) == 100
    torch.testing.assert_close(flash_loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert flash_grads.keys() == ref_grads.keys()
    learned = {n for n, _ in model.named_parameters() if "position" in n}  # the encoding's own, where it learns
    assert learned <= ref_grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(flash_grads[n], ref_grads[n], rtol=1e-3, atol=1e-5, msg=n)


def test_fox_takes_the_flash_path():
    from firepe.config import preset
    from firepe.model import GPT

    torch.manual_seed(0)
    model = GPT(preset("tiny", position="fox", vocab_size=64))
    x, y = torch.randint(0, 64, (2, 70)), torch.randint(0, 64, (2, 70))
    _, loss = model(x, y)
    loss.backward()
    flash = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []
    real = attention_flash.flash_data_attention
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention_flash, "flash_data_attention", lambda *a: calls.append(1) or real(*a))
        model(x, y)
        assert len(calls) == 2  # both layers of the default forward above took the kernel
        mp.setattr(attention_flash, "supports", lambda *a: False)
        _, loss2 = model(x, y)
        loss2.backward()
        assert len(calls) == 2
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(flash[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)


def test_long_forward_memory_is_linear_in_n():
    """Evaluation of a FIRE layer at 8,192 tokens in a fresh process: its peak grows by far less than one
    [H, Q, K] float32 tensor (1 GiB here) -- the kernel keeps no quadratic tensor."""
    import subprocess
    import sys

    code = (
        "import resource, torch\n"
        "from firepe import attention, positions\n"
        "enc = positions.build('fire', num_heads=4, head_dim=32)\n"
        "n = 8192\n"
        "q = torch.randn(1, 4, n, 32)\n"
        "pos = torch.arange(n)\n"
        "from firepe import attention_flash\n"
        "assert attention_flash.supports(q, q, q, pos, pos) and enc.flash_bias(pos, pos) is not None\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with torch.no_grad():\n"
        "    out = attention.attend_backend('auto', q, q, q, enc, pos, pos, True)\n"
        "assert torch.isfinite(out).all()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    grown_mb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown_mb < 200


def test_strided_inputs_are_read_in_place_and_give_the_contiguous_result():
    """The model's q, k, v are transposed views of [B, T, H, D] (and a shared key head has head stride 0): the
    kernel reads them with their strides, writes token-major outputs, and equals the contiguous call."""
    g = torch.Generator().manual_seed(3)
    B, T, H, D = 2, 90, 3, 24
    q = torch.randn(B, T, H, D, generator=g).transpose(1, 2).requires_grad_()
    k_one = torch.randn(B, T, 1, D, generator=g).requires_grad_()
    k = k_one.transpose(1, 2).expand(B, H, T, D)
    v = torch.randn(B, H, T, D + 8, generator=g)[..., :D].requires_grad_()  # row stride D + 8
    pos = torch.arange(T)
    table = torch.randn(H, T, generator=g, requires_grad=True)
    out = attention_flash.flash_attention(q, k, v, FlashBias(table, T), pos, pos)
    assert out.stride(2) == H * D  # token-major, as q
    cot = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad(out, (q, k_one, v, table), cot)
    leaves = [t.detach().contiguous().requires_grad_() for t in (q, k_one, v, table)]
    ref = attention_flash.flash_attention(leaves[0], leaves[1].transpose(1, 2).expand(B, H, T, D).contiguous(),
                                          leaves[2], FlashBias(leaves[3], T), pos, pos)
    assert torch.equal(out, ref)
    for a, b in zip(grads, torch.autograd.grad(ref, leaves, cot)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_nan_scores_propagate_as_in_the_formula():
    """A NaN in q makes its row NaN (as SDPA and the formula do), not a row of zero probabilities; other rows
    keep their values."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 70, 16, generator=g) for _ in range(3))
    q[0, 1, 40, 3] = float("nan")
    pos = torch.arange(70)
    out = attention_flash.flash_attention(q, k, v, FlashBias(torch.zeros(2, 70), 70), pos, pos)
    assert torch.isnan(out[0, 1, 40]).all()
    assert torch.isfinite(out[0, 0]).all() and torch.isfinite(out[0, 1, :40]).all()


def test_a_second_derivative_raises_instead_of_being_zero():
    q = torch.randn(1, 1, 8, 16, requires_grad=True)
    pos = torch.arange(8)
    out = attention_flash.flash_attention(q, q, q, None, pos, pos)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    (g,) = torch.autograd.grad(out.pow(2).sum(), q)  # the first derivative as always
    assert torch.isfinite(g).all()


def test_minus_infinity_in_the_bias_is_a_masked_key_not_nan():
    """A bias of -inf for far distances (a user's local window): rows whose first key blocks are all -inf are not
    NaN, and equal the formula."""
    g = torch.Generator().manual_seed(7)
    T = 200
    x = {n: torch.randn(1, 2, T, 16, generator=g, dtype=torch.float64) for n in "qkv"}
    table = torch.randn(2, T, generator=g, dtype=torch.float64)
    table[:, 100:] = float("-inf")
    want = _formula(x["q"], x["k"], x["v"], 0, 0, table, T)
    pos = torch.arange(T)
    got = attention_flash.flash_attention(*(x[n].float() for n in "qkv"), FlashBias(table.float(), T), pos, pos)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)


def test_malformed_bias_inputs_are_refused():
    q = torch.randn(1, 2, 20, 8)
    pos = torch.arange(20)
    for bad, match in ((dict(long_row=torch.zeros(1, dtype=torch.bool)), "long_row must be 1-D with one entry"),
                       (dict(long_row=torch.zeros(20)), "long_row must be bool"),
                       (dict(inv_norm=torch.ones(20, 1)), "inv_norm must be 1-D"),
                       (dict(psi=torch.ones(20, 1)), "psi must be 1-D")):
        with pytest.raises(ValueError, match=match):
            attention_flash.flash_attention(q, q, q, FlashBias(torch.zeros(2, 30), 20, 10, **bad), pos, pos)
    empty = torch.randn(1, 2, 4, 0)
    assert not attention_flash.supports(empty, empty, empty, torch.arange(4), torch.arange(4))


def test_bins_that_do_not_fall_along_the_row_take_the_scalar_scatter():
    """The AVX-512 scatter of the grid gradient needs strictly falling bins (FIRE's psi rises with the distance);
    a hand-made psi that alternates must still give the formula's gradient, and the same bits as AVX2."""
    g = torch.Generator().manual_seed(9)
    T, grid = 64, 64
    x = {n: torch.randn(1, 2, T, 16, generator=g, dtype=torch.float64, requires_grad=True) for n in "qkv"}
    table = torch.randn(2, T + grid, generator=g, dtype=torch.float64, requires_grad=True)
    psi = torch.tensor([0.1, 0.5] * (T // 2), dtype=torch.float64)
    inv = torch.ones(T, dtype=torch.float64)
    long_row = torch.ones(T, dtype=torch.bool)
    want = _formula(x["q"], x["k"], x["v"], 0, 0, table, T, grid, psi, inv, long_row)
    (g_want,) = torch.autograd.grad(want.sum(), table)
    pos = torch.arange(T)
    t32 = table.detach().float().requires_grad_()
    got = attention_flash.flash_attention(*(x[n].detach().float() for n in "qkv"),
                                          FlashBias(t32, T, grid, psi.float(), inv.float(), long_row), pos, pos)
    (g_got,) = torch.autograd.grad(got.sum(), t32)
    torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-5)
