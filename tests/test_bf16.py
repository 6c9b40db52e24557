"""bf16 autocast: position encodings compute in float32 outside it; FIRE trains in bf16 with its fp32 bias.

Under autocast a ``Linear`` runs in bf16, so FIRE's MLP would see ~128 distinct table coordinates
instead of 16384 (and the fused CPU kernel refused the bf16 table); rotary angles from a bf16 matmul
would lose every position above 256. The encodings' methods run with autocast disabled.
"""

import pathlib

import pytest
import torch

from firepe import positions
from firepe.attention import attend, attend_blocked
from firepe.cli import main
from firepe.loading import load_run
from tests.helpers import TINY
from tests.test_model import ALL

Q, K = torch.arange(2000, 2064), torch.arange(0, 2064)


def _output(enc):
    if enc.kind == "bias":
        return enc.bias(Q, K)
    if enc.kind == "rotary":
        return torch.stack(enc.angles(K))
    return None


@pytest.mark.parametrize("name,opts", ALL)
def test_every_encoding_gives_its_fp32_values_under_bf16_autocast(name, opts):
    enc = positions.build(name, num_heads=4, head_dim=16, **opts)
    ref = _output(enc)
    if ref is None:
        pytest.skip("NoPE has nothing to compute")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _output(enc)
    assert got.dtype == torch.float32
    assert torch.equal(got, ref)


@pytest.mark.parametrize("mode", ["table", "exact", "reference"])
def test_fire_gradients_to_mlp_c_and_L_are_the_fp32_ones_under_autocast(mode):
    fire = positions.build("fire", num_heads=2, head_dim=16, init_L=64.0, bias_mode=mode)
    weight = torch.randn(2, 40, 80)
    grads = []
    for autocast in (False, True):
        fire.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            bias = fire.bias(torch.arange(40, 80), torch.arange(80))  # rows on both sides of L
        (bias * weight).sum().backward()
        grads.append([p.grad.clone() for p in fire.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert fire.c.grad.abs() > 0 and fire.L_multiplier.grad.abs() > 0


def test_blocked_attention_under_autocast_matches_dense():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 96, 16, requires_grad=True) for _ in range(3))
    bias = torch.randn(4, 96, 96, requires_grad=True)
    pos = torch.arange(96)
    outs = []
    for fn in (attend, attend_blocked):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v, bias, pos, pos, True)
        out.float().square().sum().backward()
        outs.append([out.float(), *(t.grad.clone() for t in (q, k, v, bias))])
        for t in (q, k, v, bias):
            t.grad = None
    for a, b in zip(*outs):
        assert (a - b).abs().max() <= 0.05 * a.abs().max() + 1e-3


def test_fire_trains_in_bf16_on_cpu_with_the_fp32_bias_within_the_bound(tmp_path: pathlib.Path):
    """The bound (also in the README): after 20 steps at lr 3e-3 from the same initialization, bf16 autocast
    training gives FIRE's bias within 0.05 of fp32 training (measured 0.012, on a bias of magnitude ~0.2),
    and ``c``, ``L`` within 1%."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(40):
        (corpus / f"f{k}.py").write_text(f"def f(x):\n    return x * {k} + {k}\n" * 30)
    trained = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["train", "--out", str(out), "--position", "fire", "--steps", "20", "--seq-len", "128",
                     "--corpus", str(corpus), *TINY[:-2], "--val-tokens", "512", "--precision", precision,
                     "--lr", "3e-3", "--batch-size", "4"]) == 0
        model, _ = load_run(out)
        enc = model.position_modules()[0]
        with torch.no_grad():
            trained[precision] = enc.bias(torch.arange(512), torch.arange(512)), enc.c.item(), enc.L.item()
    (b32, c32, l32), (b16, c16, l16) = trained["fp32"], trained["bf16"]
    assert (b32 - b16).abs().max() <= 0.05
    assert abs(c16 - c32) <= 0.01 * abs(c32) and abs(l16 - l32) <= 0.01 * abs(l32)
