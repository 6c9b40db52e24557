"""Any firepe encoding inside a Hugging Face Llama-family model: :func:`with_position`.

``with_position(model_or_config, "fire")`` turns a ``transformers`` Llama, Mistral, Qwen2 or Qwen3 model (these
share one attention code in transformers 5.x: ``q, k, v`` projections, rotary applied to ``q, k``, the cache
updated, then the function ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``) into the same architecture
with its rotary embedding replaced by a firepe encoding:

* the rotary embedding returns ``cos = 1, sin = 0`` (the rotation is the identity, bit for bit), so ``q, k``
  and the cached keys stay unrotated;
* every attention module holds its encoding as ``self_attn.firepe_position`` (its parameters are the model's:
  optimizers, ``Trainer``, DDP and FSDP see them; they stay float32 in a bf16 model);
* attention is the function registered as ``attn_implementation="firepe"``: it repeats the key/value heads
  (grouped-query attention), reads each row's padding from transformers' mask (its last query row) and calls
  :func:`firepe.attend` -- the same paths, KV-cache rule and per-row positions as firepe's own GPT;
* the model's class and ``model_type`` become firepe's (``FirePELlamaForCausalLM``, ``"firepe_llama"``, ...),
  registered with ``AutoConfig``/``AutoModelForCausalLM`` and named in the saved ``auto_map``, so
  ``save_pretrained``/``from_pretrained`` round-trip with firepe installed (lm-evaluation-harness:
  ``trust_remote_code=True``, the folder's ``modeling_firepe_hf.py`` only imports this module).

The encoding is per layer: ``position`` may be a list with one name per layer (``"nope"`` on every fourth
layer, as SmolLM3 does, is ``["fire", "fire", "fire", "nope"] * (n // 4)``).

Not supported, refused with a ``ValueError``: sliding-window attention (Mistral's ``sliding_window``, Qwen's
``use_sliding_window``: set them off), attention dropout, ``position_ids`` other than each row's real-token
positions (packed sequences), and FoX with a cache (its per-token gates are not in transformers' caches:
generate with ``use_cache=False``).
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from . import positions
from .config import BACKENDS
from .kinds import attend, kind_of
from .positions.base import PositionEncoding

__all__ = ["with_position", "FAMILIES", "CACHE_KEYWORD", "ATTRIBUTE", "CLASSES", "IMPLEMENTATION", "SHIM_NAME",
           "firepe_attention", "IdentityRotary"]

IMPLEMENTATION = "firepe"           # the attn_implementation name
ATTRIBUTE = "firepe_position"       # each attention module's encoding
SHIM_NAME = "modeling_firepe_hf.py"  # the auto_map module of a saved folder


def _families() -> dict[str, tuple[type, type]]:
    """model_type -> (config class, causal-LM class) of the installed transformers' Llama-family models."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    return {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
            "qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}


FAMILIES = _families()
#: the keyword transformers' models take their cache under (``cache`` from 5.24, ``past_key_values`` before)
CACHE_KEYWORD = "cache" if "cache" in inspect.signature(FAMILIES["llama"][1].forward).parameters else "past_key_values"


class IdentityRotary(nn.Module):
    """Stands in for the model's rotary embedding: ``cos = 1, sin = 0`` of the shape transformers expects
    (``[B, T, head_dim]``), so ``q cos + rotate_half(q) sin == q`` exactly."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return x.new_ones(shape), x.new_zeros(shape)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _per_layer(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} lists {len(value)} entries; the model has {n} layers (give one per layer, "
                             "or a single value for all).")
        return list(value)
    return [value] * n


def _spec_key(name: str, options: dict) -> str:
    return json.dumps([name, options], sort_keys=True, default=str)


def check_config(config) -> None:
    """``ValueError`` (one sentence) for a firepe config this integration cannot run correctly."""
    names, opts, n = config.firepe_position, config.firepe_position_options, config.num_hidden_layers
    if not isinstance(names, list) or not isinstance(opts, list) or len(names) != n or len(opts) != n:
        raise ValueError(f"{type(config).__name__}: firepe_position and firepe_position_options must list one entry "
                         f"per layer ({n}); got {names!r} and {opts!r}. Convert with firepe.hf.with_position.")
    heads, head_dim = config.num_attention_heads, _head_dim(config)
    checked = set()
    for layer, (name, o) in enumerate(zip(names, opts)):
        if not isinstance(name, str) or not isinstance(o, dict):
            raise ValueError(f"layer {layer}: the encoding must be a name and a dict of options, got {name!r}, {o!r}.")
        spec = _spec_key(name, o)
        if spec in checked:  # each distinct spec is built once here, not once per layer
            continue
        checked.add(spec)
        try:
            positions.check(name, heads, head_dim, o)
            kind_of(positions.get(name)).check_backend(name, config.firepe_backend)
        except ValueError as e:
            raise ValueError(f"layer {layer}: {e}") from None
        if kind_of(positions.get(name)).needs_layer_input and config.hidden_size != heads * head_dim:
            raise ValueError(f"layer {layer}: {name!r} gates each head from the layer input of heads x head_dim = "
                             f"{heads * head_dim} features; this model's hidden_size is {config.hidden_size}.")
    if getattr(config, "sliding_window", None) is not None:
        raise ValueError(f"sliding_window={config.sliding_window}: firepe's attention has no sliding window; "
                         "set sliding_window=None (Qwen: use_sliding_window=False) before converting.")
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) != 0.0:
        raise ValueError(f"attention_dropout={config.attention_dropout}: firepe's attention has no dropout; "
                         "set attention_dropout=0.")
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}.")
    if config.firepe_backend not in BACKENDS:
        raise ValueError(f"firepe_backend {config.firepe_backend!r}; valid: {', '.join(BACKENDS)}.")
    block = config.firepe_block
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise ValueError(f"firepe_block must be a positive integer (query rows per chunk), got {block!r}.")


def _make_classes(family: str, base_config: type, base_model: type) -> tuple[type, type]:
    prefix = f"FirePE{base_model.__name__.removesuffix('ForCausalLM')}"

    @strict(accept_kwargs=True)
    class Config(base_config):
        model_type = f"firepe_{family}"
        firepe_position: list | None = None
        firepe_position_options: list | None = None
        firepe_backend: str = "auto"
        firepe_block: int = 1024

        def __post_init__(self, **kwargs):
            super().__post_init__(**kwargs)
            if self.firepe_position is None:
                raise ValueError(f"{type(self).__name__} without firepe_position: a {self.model_type!r} config "
                                 "needs the firepe fields; convert a model or config with firepe.hf.with_position.")
            self.auto_map = {"AutoConfig": f"{SHIM_NAME[:-3]}.{prefix}Config",
                             "AutoModelForCausalLM": f"{SHIM_NAME[:-3]}.{prefix}ForCausalLM"}
            check_config(self)

    Config.__name__ = Config.__qualname__ = f"{prefix}Config"

    class Model(base_model):
        config_class = Config
        # the encodings stay float32 when the model is loaded in bf16/fp16 (positions past 256 are not bf16 ints)
        _keep_in_fp32_modules_strict = [ATTRIBUTE]

        def __init__(self, config):
            super().__init__(config)
            install(self)

        def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False,
                                                  allow_all_kernels=False):
            if attn_implementation not in (None, IMPLEMENTATION):
                raise ValueError(f"attn_implementation={attn_implementation!r}: this model's position encoding lives "
                                 f"in attention; only {IMPLEMENTATION!r} runs it.")
            return IMPLEMENTATION

        def _init_weights(self, module):
            if not getattr(module, "firepe_owned", False):  # the encodings initialize themselves
                super()._init_weights(module)

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            """transformers' ``from_pretrained``; then the encodings' non-persistent buffers (RoPE frequencies,
            not in the file) are rebuilt, and a folder whose encoding weights are missing, unexpected or
            non-finite is refused (one ``ValueError``)."""
            want_info = kwargs.pop("output_loading_info", False)
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
            wrong = sorted(k for what in ("missing_keys", "unexpected_keys") for k in info.get(what) or ()
                           if ATTRIBUTE in k)
            if wrong:
                raise ValueError(f"{args[0] if args else 'the folder'}: its encoding weights do not match "
                                 f"firepe_position ({', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}); the "
                                 "folder is damaged or its config.json was edited.")
            for module in model.modules():
                if isinstance(module, PositionEncoding):
                    _rebuild_buffers(module)
                    bad = [n for n, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
                    if bad:
                        raise ValueError(f"{args[0] if args else 'the folder'}: non-finite encoding weights "
                                         f"({', '.join(bad[:4])}).")
            return (model, info) if want_info else model

        @functools.wraps(base_model.forward)  # Trainer reads the signature to keep its columns
        def forward(self, *args, **kwargs):
            if self.config._attn_implementation != IMPLEMENTATION:
                raise ValueError(f"attn_implementation is {self.config._attn_implementation!r}; this model's "
                                 f"position encoding lives in attention: set it back to {IMPLEMENTATION!r}.")
            return base_model.forward(self, *args, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            """transformers' ``save_pretrained``, plus the ``auto_map`` module (it imports firepe). An encoding
            shared by several layers (FIRE-S, T5) is written under each layer's names (copies of one tensor);
            loading shares it again."""
            if kwargs.get("state_dict") is None:
                state, seen = self.state_dict(), set()
                for name, t in state.items():
                    if ATTRIBUTE in name:
                        if t.data_ptr() in seen:
                            state[name] = t.clone()
                        seen.add(t.data_ptr())
                kwargs["state_dict"] = state
            out = super().save_pretrained(save_directory, *args, **kwargs)
            (Path(save_directory) / SHIM_NAME).write_text(SHIM_TEXT)
            return out

    Model.__name__ = Model.__qualname__ = f"{prefix}ForCausalLM"
    return Config, Model


def _rebuild_buffers(module: PositionEncoding) -> None:
    non_persistent = set(dict(module.named_buffers(recurse=False))) - set(module.state_dict())
    if not non_persistent:
        return
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        fresh = positions.build(module.name, module.num_heads, module.head_dim, **module.firepe_options)
    with torch.no_grad():
        for name in non_persistent:
            buf = getattr(module, name)
            setattr(module, name, getattr(fresh, name).to(device=buf.device, dtype=buf.dtype))


def install(model: nn.Module) -> None:
    """Build each layer's encoding as ``self_attn.firepe_position`` and make the rotary embedding the identity."""
    config = model.config
    inner = model.model
    params = next(iter(inner.layers[0].self_attn.q_proj.parameters()))
    device = params.device
    shared: dict[str, PositionEncoding] = {}
    for layer, name, opts in zip(inner.layers, config.firepe_position, config.firepe_position_options):
        attn = layer.self_attn
        key = _spec_key(name, opts)
        if key in shared:  # FIRE-S, T5: one module for every layer with this spec, as in firepe's GPT
            setattr(attn, ATTRIBUTE, shared[key])
            _hook(attn)
            continue
        with torch.device(device):
            enc = positions.build(name, config.num_attention_heads, _head_dim(config), **opts)
        if enc.layer_shared:
            shared[key] = enc
        enc.firepe_options = dict(opts)
        for m in enc.modules():
            m.firepe_owned = True
            for pname, p in list(m.named_parameters(recurse=False)):
                if p.dim() == 0:  # FSDP2's fully_shard refuses 0-dim parameters (FIRE's c and L): the same as [1]
                    setattr(m, pname, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))
        setattr(attn, ATTRIBUTE, enc)
        _hook(attn)
    inner.rotary_emb = IdentityRotary(_head_dim(config))


def _hook(attn: nn.Module) -> None:
    if not getattr(attn, "firepe_hooked", False):
        attn.register_forward_pre_hook(_keep_input, with_kwargs=True)
        attn.firepe_hooked = True


def _keep_input(module, args, kwargs):
    """Keeps the attention module's input for the encodings that read it (FoX's gates)."""
    enc = getattr(module, ATTRIBUTE, None)
    if enc is not None and kind_of(enc).needs_layer_input:
        module.firepe_input = kwargs.get("hidden_states", args[0] if args else None)
    return None


def firepe_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, position_ids: torch.Tensor | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over :func:`firepe.attend`: ``query`` ``[B, H, Q, D]``, ``key``
    and ``value`` ``[B, H_kv, K, D]`` (every cached key and the new ones; the queries are the last ``Q``), the
    boolean mask ``[B, 1, Q, K]`` of :func:`transformers.masking_utils.sdpa_mask` or None; returns
    ``([B, Q, H, D], None)``."""
    enc = getattr(module, ATTRIBUTE, None)
    if enc is None:
        raise ValueError(f"attn_implementation={IMPLEMENTATION!r} is for models converted by "
                         "firepe.hf.with_position; this attention module has no firepe encoding.")
    if dropout:
        raise ValueError(f"attention dropout {dropout}: firepe's attention has no dropout; set attention_dropout=0.")
    if sliding_window is not None:
        raise ValueError(f"sliding_window={sliding_window}: firepe's attention has no sliding window.")
    b, h, nq, d = query.shape
    nk = key.shape[2]
    # under autocast the identity rotary's float32 cos/sin promote q and k (exactly: q * 1 + r * 0 == q)
    query, key = query.to(value.dtype), key.to(value.dtype)
    if key.shape[1] != h:
        groups = h // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if scaling is not None and abs(scaling - d ** -0.5) > 1e-12 * d ** -0.5:
        query = query * (scaling * d ** 0.5)
    padding = None
    if attention_mask is not None:
        if attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[-1] != nk:
            raise ValueError(f"firepe attention takes transformers' boolean [B, 1, Q, K] mask; got "
                             f"{attention_mask.dtype} {tuple(attention_mask.shape)}.")
        padding = attention_mask[:, 0, -1, :].expand(b, nk)  # the last query sees every real key
        _check_mask(attention_mask, padding, nq, nk)
    if position_ids is not None:
        _check_positions(position_ids, padding, b, nq, nk)
    x = getattr(module, "firepe_input", None)
    module.firepe_input = None
    if kind_of(enc).needs_layer_input and nk != nq:
        raise ValueError(f"{enc.name!r} keeps a per-token gate beside each key, which transformers' caches do not "
                         "carry: run it without a cache (generate(..., use_cache=False)).")
    out = attend(query, key, value, enc, key_padding_mask=padding, x=x, backend=module.config.firepe_backend,
                 block=module.config.firepe_block)
    return out.transpose(1, 2).contiguous(), None


def _check_mask(mask: torch.Tensor, padding: torch.Tensor, nq: int, nk: int) -> None:
    """``ValueError`` unless every real query's row of ``mask`` is ``causal & key padding`` with the queries at the
    end of the keys: what a dynamic cache and padding give. A static cache (queries in its first slots),
    packed sequences or a hand-made 4-D mask would otherwise be reduced to their last row."""
    idx = torch.arange(nk, device=mask.device)
    causal = idx[None, :] <= idx[nk - nq:, None]                          # [Q, K]
    want = causal[None] & padding[:, None, :]                             # [B, Q, K]
    got = mask[:, 0].expand_as(want)
    # a padding query that sees no real key may also see every key (some releases unmask such rows for softmax)
    free = ~padding[:, nk - nq:] & (~want.any(-1)) & got.all(-1)
    if not torch.equal(got[~free], want[~free]):
        raise ValueError("firepe attention takes transformers' causal mask with key padding only (the queries at "
                         "the end of the keys, as DynamicCache gives them); a static cache, packed sequences or a "
                         "custom 4-D mask are not supported.")


def _check_positions(position_ids: torch.Tensor, padding: torch.Tensor | None, b: int, nq: int, nk: int) -> None:
    """``ValueError`` unless ``position_ids`` are each real query's position (padding counted out) or
    transformers' default ``arange`` (what the model computes when none are given; the positions then come from
    the mask, as in firepe's own model)."""
    if position_ids.shape[-1] != nq:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} for {nq} queries.")
    given = position_ids.expand(b, nq)
    default = torch.arange(nk - nq, nk, device=position_ids.device).expand(b, nq)
    if torch.equal(given, default):
        return
    if padding is not None:
        valid = padding.to(position_ids.device)
        want = (valid.long().cumsum(-1) - 1)[:, nk - nq:]
        real = valid[:, nk - nq:]
        if torch.equal(given[real], want[real]):
            return
    raise ValueError("position_ids other than each row's real-token positions (packed sequences, offsets) are "
                     "not supported by firepe attention: leave position_ids out.")


CLASSES: dict[str, type] = {}
_BY_FAMILY: dict[str, tuple[type, type]] = {}
for _family, (_cfg, _model) in FAMILIES.items():
    _c, _m = _make_classes(_family, _cfg, _model)
    _BY_FAMILY[_family] = (_c, _m)
    CLASSES[_c.__name__], CLASSES[_m.__name__] = _c, _m
    AutoConfig.register(_c.model_type, _c, exist_ok=True)
    AutoModelForCausalLM.register(_c, _m, exist_ok=True)
globals().update(CLASSES)
__all__ += list(CLASSES)
AttentionInterface.register(IMPLEMENTATION, firepe_attention)
SHIM_TEXT = ("\"\"\"firepe encodings inside transformers models (pip install 'firepe[hf]'); this module only "
             "imports them.\"\"\"\n\nfrom firepe.hf_position import (  # noqa: F401\n"
             + "".join(f"    {name},\n" for name in CLASSES) + ")\n")
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def _family_of(config) -> str:
    kind = getattr(config, "model_type", None)
    if isinstance(kind, str) and kind.startswith("firepe_") and kind[7:] in FAMILIES:
        return kind[7:]
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not supported by firepe.hf.with_position; supported: "
                         f"{', '.join(FAMILIES)} (transformers' Llama-family attention).")
    return kind


def firepe_config(config: PreTrainedConfig, position, options=None, backend: str = "auto",
                  block: int = 1024) -> PreTrainedConfig:
    """The firepe config of ``config``'s family with ``position`` (a name, or one per layer) and its options."""
    family = _family_of(config)
    n = config.num_hidden_layers
    names = _per_layer(position, n, "position")
    opts = _per_layer({} if options is None else options, n, "options")
    for layer, o in enumerate(opts):
        if not isinstance(o, dict):
            raise ValueError(f"options for layer {layer} must be a dict of the encoding's options, got {o!r}.")
    fields = config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "firepe_position",
                "firepe_position_options", "firepe_backend", "firepe_block"):
        fields.pop(key, None)
    cls = _BY_FAMILY[family][0]
    return cls(**fields, firepe_position=names, firepe_position_options=[dict(o) for o in opts],
               firepe_backend=backend, firepe_block=block)


def with_position(model_or_config, position="fire", options: dict | list[dict] | None = None, *,
                  backend: str = "auto", block: int = 1024):
    """A Llama-family model (or config) with its rotary embedding replaced by firepe's ``position``.

    Args:
        model_or_config: a ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` /
            ``Qwen3ForCausalLM`` (converted in place and returned: its weights are kept, not copied; the rotary
            embedding has no weights) or one of their configs (a firepe config is returned: build the model
            with ``AutoModelForCausalLM.from_config``). A model converted before is converted again.
        position: a firepe encoding name (``firepe.positions.available()``), or a list of one per layer.
        options: the encoding's options (``{"mlp_width": 32}``), or a list of one dict per layer.
        backend: firepe's attention backend (``auto``: the fused CPU kernel for biases, chunked for long inputs).
        block: query rows per chunk of the ``chunked`` backend.

    Each encoding is freshly initialized as :func:`firepe.positions.build` does (FIRE: Sec. 3.2's init), in
    float32, on the model's device. ``ValueError`` (one sentence) for an unsupported architecture, an unknown
    encoding, options that do not fit the head count or head size, sliding windows or attention dropout.
    """
    if isinstance(model_or_config, PreTrainedConfig):
        return firepe_config(model_or_config, position, options, backend, block)
    model = model_or_config
    config = getattr(model, "config", None)
    if not isinstance(config, PreTrainedConfig) or not hasattr(model, "model") \
            or not hasattr(model.model, "layers"):
        raise ValueError(f"with_position takes a transformers causal LM of the {', '.join(FAMILIES)} families "
                         f"or its config, got {type(model).__name__}.")
    family = _family_of(config)
    if not isinstance(model, FAMILIES[family][1]):
        raise ValueError(f"{type(model).__name__} is not a {FAMILIES[family][1].__name__}: with_position converts "
                         "causal-LM models.")
    new_config = firepe_config(config, position, options, backend, block)
    new_config._attn_implementation = IMPLEMENTATION
    for m in model.modules():
        if getattr(m, "config", None) is config:
            m.config = new_config
    model.__class__ = _BY_FAMILY[family][1]
    install(model)
    return model
