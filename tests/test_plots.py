import matplotlib.image as mpimg
import pytest

from firepe import positions as P
from firepe.plots import bias_curves, bias_values


def test_bias_curves_writes_png(tmp_path):
    fire = P.build("fire", num_heads=4, head_dim=8)
    out = bias_curves(fire, query_pos=128, path=tmp_path / "fig" / "bias.png")
    img = mpimg.imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert bias_values(fire, 128).shape == (4, 129)


def test_bias_curves_many_panels(tmp_path):
    mods = {f"layer {i}": P.build("alibi", num_heads=3, head_dim=8) for i in range(5)}
    assert bias_curves(mods, query_pos=20, path=tmp_path / "b.png").exists()


def test_bias_curves_rejects_nope(tmp_path):
    with pytest.raises(ValueError, match="no additive bias"):
        bias_curves(P.build("nope", num_heads=2, head_dim=8), path=tmp_path / "x.png")
