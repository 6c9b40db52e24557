"""Specs and options: text converted by the constructor's annotations, Python values type-checked."""

import pytest

from firepe import positions as P


@pytest.mark.parametrize("text,value", [("false", False), ("False", False), ("0", False), ("no", False),
                                        ("true", True), ("TRUE", True), ("1", True), ("yes", True)])
def test_bool_options_from_text(text, value):
    spec = P.parse_spec(f"fire:threshold={text}")
    assert spec.options == {"threshold": value} and type(spec.options["threshold"]) is bool


def test_typed_values_and_label():
    spec = P.parse_spec("fire:mlp_layers=1,activation=gelu,init_L=512,init_c=0.25")
    assert spec.options == {"mlp_layers": 1, "activation": "gelu", "init_L": 512, "init_c": 0.25}
    assert spec.label == "fire[mlp_layers=1,activation=gelu,init_L=512,init_c=0.25]"
    assert P.parse_spec("lin=fire:mlp_layers=0") == P.Spec("lin", "fire", {"mlp_layers": 0})
    assert P.parse_spec(" rope ") == P.Spec("rope", "rope", {})
    assert P.parse_spec("kerple_log:init_r1=None,init_r2=2").options == {"init_r1": None, "init_r2": 2}
    assert P.parse_spec("yarn:factor=4,truncate=no").options == {"factor": 4, "truncate": False}


@pytest.mark.parametrize("text,match", [
    ("fire:threshold=maybe", r"option threshold='maybe' of position encoding 'fire' must be a bool"),
    ("fire:threshold=2", "must be a bool"),
    ("kerple_log:init_r1=abc", r"option init_r1='abc' of position encoding 'kerple_log' must be a number or none\."),
    ("fire:mlp_layers=2.5", "mlp_layers='2.5' .* must be an integer"),
    ("fire:init_L=none", "init_L='none' .* must be a number"),
    ("alibi:slopes=[0.5]", r"slopes=.\[0.5\]. .* must be a list written a/b/c, each item a number"),
    ("alibi:slopes=0.5//1", "must be a list written a/b/c"),
    ("fire:mlp_layers=1,mlp_layers=2", "mlp_layers is given twice"),
    ("=fire", "empty label"),
    ("fire:mlp_layers", "must look like key=value"),
    ("fire:depth=3", "unknown option.*depth"),
])
def test_bad_spec_text_is_one_line(text, match):
    with pytest.raises(ValueError, match=match) as err:
        P.parse_spec(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("opts,match", [
    ({"threshold": "maybe"}, r"option threshold of position encoding 'fire' must be a bool \(True or False\), "
                             r"got 'maybe' \(str\)"),
    ({"mlp_layers": 2.5}, "mlp_layers .* must be an integer, got 2.5"),
    ({"mlp_layers": True}, "mlp_layers .* must be an integer, got True"),
    ({"init_L": "512"}, "init_L .* must be a number, got '512'"),
    ({"init_L": False}, "init_L .* must be a number"),
    ({"activation": 3}, "activation .* must be a string"),
])
def test_python_values_are_type_checked(opts, match):
    with pytest.raises(ValueError, match=match):
        P.build("fire", num_heads=2, head_dim=8, **opts)
    with pytest.raises(ValueError, match=match):
        P.validate("fire", opts)


def test_python_values_of_the_right_type_pass():
    assert P.build("fire", num_heads=2, head_dim=8, init_L=100, eps=0).L.item() == 100  # ints are fine for floats
    assert P.build("fire_s", num_heads=2, head_dim=8, threshold=False).threshold is False  # parent's annotations
    assert P.build("kerple_log", num_heads=2, head_dim=8, init_r1=1, init_r2=None).r1_raw.dtype.is_floating_point
    assert P.build("alibi", num_heads=2, head_dim=8, slopes=[0.5, 1]).slopes.tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="slopes .* must be a list or None"):
        P.build("alibi", num_heads=2, head_dim=8, slopes=["a", "b"])


@pytest.mark.parametrize("name", P.available())
@pytest.mark.parametrize("field", ["num_heads", "head_dim"])
@pytest.mark.parametrize("bad", [True, 2.0, 0, "4"])
def test_common_sizes_must_be_positive_ints(name, field, bad):
    sizes = {"num_heads": 2, "head_dim": 8, field: bad}
    extra = {"factor": 2.0} if name in ("rope_pi", "yarn", "longrope") else {}
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got {bad!r}"):
        P.build(name, **sizes, **extra)


def test_training_options():
    fire = P.training_options("fire", {"mlp_layers": 1}, seq_len=256)
    assert fire == {"mlp_layers": 1, "init_L": 64.0, "bias_mode": "table"}
    assert "init_L" not in P.training_options("fire_s", P.parse_spec("fire_s:threshold=false").options, 256)
    assert P.training_options("fire", {"init_L": 8.0}, 256)["init_L"] == 8.0
    # T5: the paper's 64 buckets per head (Appendix C.1) unless given; the library default stays 32
    assert P.training_options("t5", {}, 256) == {"num_buckets": 64}
    assert P.training_options("t5", {"num_buckets": 16}, 256) == {"num_buckets": 16}
    assert P.build("t5", num_heads=2, head_dim=8, **P.training_options("t5", {}, 256)).num_buckets == 64
    assert P.build("t5", num_heads=2, head_dim=8).num_buckets == 32
    assert P.training_options("alibi", {}, 256) == {}
