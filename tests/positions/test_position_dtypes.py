"""Any integer dtype is a vector of positions: uint8 is never a boolean mask and never wraps around."""

import pytest
import torch

from firepe import positions as P

OPTIONS = {
    "rope_pi": {"factor": 2.0},
    "yarn": {"factor": 2.0},
    "longrope": {"factor": 2.0},
    "fire": {"init_L": 3.0},
    "fire_s": {"init_L": 3.0},
}


POSITIONAL = [n for n in P.available() if P.get(n).kind not in ("data", "context")]  # FoX, CoPE take no positions


@pytest.mark.parametrize("name", POSITIONAL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_integer_dtypes_give_the_int64_result(name, dtype):
    torch.manual_seed(0)
    enc = P.build(name, num_heads=3, head_dim=8, **OPTIONS.get(name, {}))
    q, k = torch.tensor([0, 1, 2, 5, 6]), torch.arange(7)  # 0/1 values: a uint8 mask would select, not index
    if enc.kind == "rotary":
        for got, want in zip(enc.angles(k.to(dtype)), enc.angles(k)):
            assert torch.equal(got, want)
        return
    want = enc.bias(q, k)
    got = enc.bias(q.to(dtype), k.to(dtype))
    if want is None:
        assert got is None
    else:
        assert got.shape == (3, 5, 7) and torch.equal(got, want)


def test_uint8_positions_do_not_wrap_in_fire():
    fire = P.build("fire", num_heads=2, head_dim=8, init_L=3.0, bias_mode="exact")
    q, k = torch.tensor([1, 4]), torch.tensor([0, 1, 2, 3, 4])  # k > q: uint8 q - k would be 255, 254, ...
    assert torch.equal(fire.bias(q.to(torch.uint8), k.to(torch.uint8)), fire.bias(q, k))
