"""Position encodings behind one interface and one registry.

>>> from firepe import positions
>>> fire = positions.build("fire", num_heads=4, head_dim=16)
>>> import torch
>>> fire.bias(torch.arange(8), torch.arange(8)).shape
torch.Size([4, 8, 8])

The package is a leaf: it imports nothing from ``firepe`` outside ``firepe.positions``, so it can be
copied into another project as is (the fused FIRE kernel looks for ``fire_table.c`` next to
``fire_kernel.py`` or in ``firepe/csrc``, and FIRE uses PyTorch ops without it).
"""

from . import convert, fire_kernel
from .alibi import ALiBi, alibi_slopes
from .base import BiasEncoding, DataBiasEncoding, PositionEncoding, RotaryEncoding, causal_row_blocks, check_positions
from .cope import CoPE
from .fire import FIRE, FIREHeads, FIREShared, load_appendix_e
from .fox import FoX
from .kerple import KerpleLog, KerplePower
from .longrope import LongRoPE
from .nope import NoPE
from .p_rope import PRoPE
from .registry import Spec, available, build, check, get, options, parse_spec, register, training_options, validate
from .rope import RoPE, RoPEPositionInterpolation, YaRN, apply_rotary, apply_rotary_one, rotate_half
from .sandwich import Sandwich
from .t5 import T5Bias, t5_bucket

__all__ = [
    "ALiBi", "CoPE", "BiasEncoding", "DataBiasEncoding", "FIRE", "FoX", "FIREHeads", "FIREShared", "KerpleLog",
    "KerplePower", "LongRoPE", "NoPE", "PRoPE", "PositionEncoding", "RoPE", "RoPEPositionInterpolation",
    "RotaryEncoding", "Sandwich", "Spec", "T5Bias", "YaRN", "alibi_slopes", "apply_rotary", "apply_rotary_one",
    "available", "build", "causal_row_blocks", "check", "check_positions", "convert", "fire_kernel", "get",
    "load_appendix_e", "options", "parse_spec", "register", "rotate_half", "t5_bucket", "training_options", "validate",
]
