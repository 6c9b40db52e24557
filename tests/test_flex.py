"""FlexAttention inputs, checked on CPU where only its forward runs.

FlexAttention's backward (GPU only) fails on a captured grad-requiring 0-D tensor and on one
grad-requiring tensor read twice before torch 2.14, and a Python int in a closure recompiles the kernel
for every offset. So every bias encoding's ``score_mod`` is evaluated here eagerly on the whole grid:
its values and gradients must be those of ``compute_bias``, and its captures must be flex-safe.
"""

import pytest
import torch

from firepe import attention, positions
from tests.test_model import ALL

BIAS = [(n, o) for n, o in ALL if positions.build(n, num_heads=2, head_dim=16, **o).kind == "bias"]
BIAS += [("fire", {"init_L": 40.0, "bias_mode": "exact"}), ("fire", {"init_L": 40.0, "threshold": False}),
         ("kerple_power", {})]


def _grid(mod, heads, n_q, n_k):
    h = torch.arange(heads)[:, None, None]
    q = torch.arange(n_q)[None, :, None]
    k = torch.arange(n_k)[None, None, :]
    return mod(torch.zeros(heads, n_q, n_k), torch.tensor(0), h, q, k)


def _captured(fn):
    return [c.cell_contents for c in (fn.__closure__ or ())]


@pytest.mark.parametrize("name,opts", BIAS, ids=[f"{n}{o}" for n, o in BIAS])
def test_score_mod_values_and_gradients_are_compute_bias(name, opts):
    torch.manual_seed(0)
    enc = positions.build(name, num_heads=3, head_dim=16, **{"init_L": 40.0, **opts} if name == "fire" else opts)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    q_pos, k_pos = torch.arange(25, 84), torch.arange(5, 84)  # rows on both sides of FIRE's L
    causal = k_pos[None, :] <= q_pos[:, None]
    weight = torch.randn(3, 59, 79) * causal
    learned = list(enc.parameters())
    ref = enc.compute_bias(q_pos, k_pos)
    expected = torch.autograd.grad((ref * weight).sum(), learned) if learned else []
    mod = enc.score_mod(q_pos, k_pos)
    got = _grid(mod, 3, 59, 79)
    torch.testing.assert_close(got[:, causal], ref[:, causal], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((got * weight).sum(), learned) if learned else []
    for a, b in zip(expected, grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for value in _captured(mod):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            assert value.dim() >= 1, f"{name}: score_mod captures a grad-requiring 0-D tensor"
        assert not (isinstance(value, int) and not isinstance(value, bool) and value in (25, 5)), \
            f"{name}: a position offset captured as a Python int recompiles flex for every offset"
    tensors = [id(v) for v in _captured(mod) if isinstance(v, torch.Tensor) and v.requires_grad]
    assert len(tensors) == len(set(tensors))


@pytest.mark.parametrize("name", ["t5", "kerple_log", "sandwich", "alibi"])
def test_translation_invariant_encodings_never_materialize_the_square(name, monkeypatch):
    enc = positions.build(name, num_heads=2, head_dim=16)
    assert enc.translation_invariant
    seen = []
    real = type(enc).compute_bias
    monkeypatch.setattr(type(enc), "compute_bias", lambda self, q, k: seen.append((len(q), len(k))) or real(self, q, k))
    enc.score_mod(torch.arange(1000, 1500), torch.arange(1500))
    assert all(q == 1 for q, _ in seen)  # at most one row (the per-distance table)


def test_fire_is_not_translation_invariant():
    assert not positions.build("fire", num_heads=2, head_dim=16).translation_invariant


def test_block_masks_are_built_once_per_shape_and_decoding_skips_flex(monkeypatch):
    pytest.importorskip("torch.nn.attention.flex_attention")
    built, flexed = [], []
    monkeypatch.setattr(attention, "_BLOCK_MASKS", {})
    monkeypatch.setitem(attention._FLEX, "mask", lambda *a, **k: built.append(k["Q_LEN"]) or object())
    monkeypatch.setitem(attention._FLEX, "attn", lambda q, k, v, **kw: flexed.append(q.shape[2]) or q)
    q = k = v = torch.randn(1, 2, 32, 8)
    pos = torch.arange(32)
    for _ in range(3):  # three layers, one mask
        attention.attend_flex(q, k, v, None, pos, pos)
    assert built == [32] and flexed == [32] * 3
    one = torch.randn(1, 2, 1, 8)
    enc = positions.build("alibi", num_heads=2, head_dim=8)
    out = attention.attend_flex(one, k, v, None, pos[-1:], pos, enc.compute_bias)
    assert flexed == [32] * 3  # a one-token decoding step took the dense path
    torch.testing.assert_close(out, attention.attend(one, k, v, enc.compute_bias(pos[-1:], pos), pos[-1:], pos,
                                                     False))


def test_fox_score_mod_reads_the_cumulative_sums_of_its_batch_row():
    g = torch.Generator().manual_seed(0)
    c = torch.randn(2, 3, 9, generator=g).cumsum(-1)
    cq, ck = c[..., 4:], c
    mod = attention.data_score_mod(cq, ck)
    b = torch.arange(2)[:, None, None, None]
    h = torch.arange(3)[None, :, None, None]
    q = torch.arange(5)[None, None, :, None]
    k = torch.arange(9)[None, None, None, :]
    got = mod(torch.zeros(2, 3, 5, 9), b, h, q, k)
    torch.testing.assert_close(got, cq[..., :, None] - ck[..., None, :])


def test_fox_on_the_flex_backend_matches_dense_forward():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 32, 16, generator=g) for _ in range(3))
    c = torch.nn.functional.logsigmoid(torch.randn(1, 2, 32, generator=g)).cumsum(-1)
    pos = torch.arange(32)
    with torch.no_grad():
        flex = attention.attend_data("flex", q, k, v, c, c, pos, pos)
        dense = attention.attend_data("dense", q, k, v, c, c, pos, pos)
    torch.testing.assert_close(flex, dense, rtol=1e-4, atol=1e-4)
