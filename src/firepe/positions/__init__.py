"""Position encodings behind one interface and one registry.

>>> from firepe import positions
>>> fire = positions.build("fire", num_heads=4, head_dim=16)
>>> import torch
>>> fire.bias(torch.arange(8), torch.arange(8)).shape
torch.Size([4, 8, 8])
"""

from . import convert
from .alibi import ALiBi, alibi_slopes
from .base import BiasEncoding, PositionEncoding, RotaryEncoding, check_positions
from .fire import FIRE, FIREHeads, FIREShared, load_appendix_e
from .kerple import KerpleLog, KerplePower
from .nope import NoPE
from .registry import available, build, get, options, register, validate
from .rope import RoPE, RoPEPositionInterpolation, YaRN, apply_rotary, apply_rotary_one, rotate_half
from .sandwich import Sandwich
from .t5 import T5Bias, t5_bucket

__all__ = [
    "ALiBi", "BiasEncoding", "FIRE", "FIREHeads", "FIREShared", "KerpleLog", "KerplePower", "NoPE",
    "PositionEncoding", "RoPE", "RoPEPositionInterpolation", "RotaryEncoding", "Sandwich", "T5Bias", "YaRN",
    "alibi_slopes", "apply_rotary", "apply_rotary_one", "available", "build", "check_positions", "convert",
    "get", "load_appendix_e", "options", "register", "rotate_half", "t5_bucket", "validate",
]
