"""The model of a :class:`~firepe.config.GPTConfig`: :func:`build_model` -- firepe's :class:`~firepe.model.GPT`
(``arch="gpt"``) or :class:`LlamaGPT` (``arch="llama"``).

:class:`LlamaGPT` is transformers' ``LlamaForCausalLM`` (RMSNorm, SwiGLU feed-forward, no biases, Llama's
initialization) at the config's sizes -- ``d_model``, ``n_layer``, ``n_head`` (as many key/value heads),
``d_ff`` (default ``4 d_model``), ``norm_eps``, tied embeddings -- turned into the config's encoding by
:func:`firepe.hf.with_position`, behind the GPT's interface (``forward(idx, targets, cache)``, ``generate``,
``position_for``, ``set_attention``), so ``train``, ``compare``, ``synth``, ``eval`` and ``score`` run it unchanged
(``--arch llama``). Encodings shared across layers (FIRE-S, T5) are one module for every layer, as in the
GPT. Not available for it: randomized positions (``positions=``) and plotting FoX/CoPE biases for a
text. ``firepe export`` writes the transformers model itself (``model_type: "firepe_llama"``; load it with firepe
installed, or ``trust_remote_code=True``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import config
from .attention import KVCache
from .config import GPTConfig
from .kinds import kind_of
from .model import GPT

__all__ = ["build_model", "LlamaGPT", "check_arch"]


def build_model(cfg: GPTConfig) -> GPT:
    """The model ``cfg.arch`` names, freshly initialized."""
    return LlamaGPT(cfg) if cfg.arch == "llama" else GPT(cfg)


def _transformers():
    try:
        from . import hf_position
    except ImportError as e:  # transformers missing or too old (firepe.hf's check)
        raise ValueError(f"arch 'llama' needs transformers: pip install 'firepe[hf]' ({e}).") from None
    return hf_position


def _llama_config(cfg: GPTConfig):
    """The firepe Llama config of ``cfg`` (ValueError, one sentence, for sizes transformers refuses)."""
    from huggingface_hub.errors import StrictDataclassError

    hp = _transformers()
    try:
        llama_config = hp.FAMILIES["llama"][0](
            vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff or 4 * cfg.d_model,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
            rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0,
            max_position_embeddings=1 << 20, bos_token_id=None, eos_token_id=None, pad_token_id=None,
            use_cache=False)
    except StrictDataclassError as e:
        last = str(e).splitlines()[-1].strip().removeprefix("ValueError: ")
        raise ValueError(f"arch 'llama' (transformers' LlamaConfig) refuses this model: {last}") from None
    return hp.with_position(llama_config, cfg.position, cfg.position_options, backend=cfg.attention,
                            block=cfg.attention_block)


def check_arch(cfg: GPTConfig) -> None:
    """Every :class:`GPTConfig`'s architecture check (registered in :data:`firepe.config.MODEL_CHECKS`): a llama
    config is built once, so a missing transformers or sizes it refuses fail before anything is written."""
    if cfg.arch == "llama":
        _llama_config(cfg)


if check_arch not in config.MODEL_CHECKS:
    config.MODEL_CHECKS.append(check_arch)


class LlamaGPT(GPT):
    """transformers' Llama with the config's encoding, called as firepe's :class:`GPT` is."""

    def __init__(self, cfg: GPTConfig):
        nn.Module.__init__(self)
        hp = _transformers()
        self.cfg = cfg
        self.llama = hp.CLASSES["FirePELlamaForCausalLM"](_llama_config(cfg))  # shares FIRE-S/T5 across layers
        self.lm_head = self.llama.lm_head
        self.cache_keyword = hp.CACHE_KEYWORD
        # FoX's gates are not in transformers' cache: decoding recomputes the whole sequence
        self.recompute_decoding = any(kind_of(self.position_for(i)).needs_layer_input for i in range(cfg.n_layer))
        self.position_shared = None
        self.position_layers = None

    def position_for(self, layer: int):
        return self.llama.model.layers[layer].self_attn.firepe_position

    def set_attention(self, backend: str, block: int | None = None) -> GPT:
        super().set_attention(backend, block)
        self.llama.config.firepe_backend = self.cfg.attention
        self.llama.config.firepe_block = self.cfg.attention_block
        return self

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, attention_mask: torch.Tensor | None = None,
               check: bool = True, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, d_model]``; ``cache`` a :class:`KVCache` (transformers' own cache
        is kept in its ``extra``), ``attention_mask`` ``[B, cache.length + T]`` as for the GPT."""
        if positions is not None:
            raise ValueError("randomized positions (positions=) are not available for the llama architecture.")
        if check:
            self._check_inputs(idx, None, cache)
        if cache is not None and self.recompute_decoding:  # keep the ids and recompute (decoding stays correct)
            ids = idx if cache.extra is None else torch.cat([cache.extra, idx], 1)
            cache.extra = ids
            out = self.llama.model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
            cache.length += idx.shape[1]
            return out.last_hidden_state[:, -idx.shape[1]:]
        hf_cache = None
        if cache is not None:
            if cache.extra is None:
                from transformers import DynamicCache

                cache.extra = DynamicCache(config=self.llama.config)
            hf_cache = cache.extra
        out = self.llama.model(input_ids=idx, attention_mask=attention_mask, use_cache=cache is not None,
                               **{self.cache_keyword: hf_cache})
        if cache is not None:
            cache.length += idx.shape[1]
        return out.last_hidden_state

    def llama_for_export(self):
        """The transformers model, in eval mode with its cache on, for ``firepe export`` (its ``save_pretrained``
        writes a shared encoding under each layer's names; loading shares it again)."""
        self.llama.eval().config.use_cache = True
        return self.llama

    def attention_inputs(self, idx: torch.Tensor) -> list[torch.Tensor]:
        raise ValueError("the llama architecture does not plot input-dependent biases (FoX, CoPE) for a text.")
