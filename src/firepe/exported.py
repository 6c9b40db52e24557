"""Exported model folders (``firepe export``), read without transformers.

An export is a Hugging Face model folder: ``config.json`` (``model_type: "firepe"``, every
:class:`~firepe.model.GPTConfig` field at the top level, ``tie_embeddings`` spelled
``tie_word_embeddings`` as transformers expects, and a ``firepe`` object holding the run's ``train`` and
``data`` sections and where it came from), ``model.safetensors`` (the GPT's tensors under
``transformer.``, the tied output embedding stored once), ``generation_config.json``, the tokenizer
files and ``modeling_firepe.py``. :mod:`firepe.hf` writes and loads it through transformers; this
module maps its config to a :class:`GPTConfig` and loads the weights with safetensors alone, so
``firepe eval``, ``generate`` and ``plot-bias`` take an exported folder like a run folder.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .arch import build_model
from .checkpoint import load_model_weights
from .config import DataConfig, GPTConfig, TrainConfig, check_fields, dataclass_from_dict
from .devices import resolve_device
from .model import GPT
from .runs import read_json

__all__ = ["MODEL_TYPE", "LLAMA_TYPE", "llama_gpt_config", "PREFIX", "SHIM", "AUTO_MAP", "is_export", "hf_fields",
           "gpt_config", "load_export"]

MODEL_TYPE = "firepe"
LLAMA_TYPE = "firepe_llama"      # firepe.hf.with_position's Llama: what `firepe export` writes for --arch llama
PREFIX = "transformer"           # attribute of the GPT inside FirePEForCausalLM, so tensors are "transformer.*"
SHIM = "modeling_firepe.py"      # the module auto_map names; it imports firepe.hf
AUTO_MAP = {"AutoConfig": "modeling_firepe.FirePEConfig",
            "AutoModelForCausalLM": "modeling_firepe.FirePEForCausalLM"}
EOS = "<|endoftext|>"            # end of document, also BOS and padding of exported tokenizers
#: GPTConfig fields renamed in the Hugging Face config (transformers reads ``tie_word_embeddings``)
RENAMED = {"tie_embeddings": "tie_word_embeddings"}
#: GPTConfig fields added after exports were first written: a folder without them has the default
ADDED_LATER = {"arch"}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (what the ByteLevel
    pre-tokenizer emits), written from its definition: printable Latin-1 bytes map to themselves, the
    others to U+0100 onwards in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def check_byte_tokenizer(file: Path) -> None:
    """``ValueError`` unless ``file`` is the byte tokenizer ``firepe export`` writes: a byte-level BPE
    with byte ``b`` as id ``b`` (through :func:`bytes_to_unicode`), no merges and ``<|endoftext|>`` as the one
    added token, id 256. firepe decodes a byte export with its own byte tokenizer, but transformers reads
    this file, so a damaged or edited copy must not pass as the run's."""
    tok = read_json(file)
    model = tok.get("model") if isinstance(tok, dict) else None
    added = tok.get("added_tokens") if isinstance(tok, dict) else None
    ok = (isinstance(model, dict) and model.get("type") == "BPE" and not model.get("merges")
          and model.get("vocab") == {ch: b for b, ch in bytes_to_unicode().items()}
          and isinstance(added, list) and [(a.get("id"), a.get("content")) for a in added if isinstance(a, dict)]
          == [(256, EOS)] and len(added) == 1)
    if not ok:
        raise ValueError(f"{file} is not firepe's byte tokenizer (byte b = id b, {EOS} = 256); the exported "
                         "folder is damaged: export the run again.")


def is_export(path: str | Path) -> bool:
    """True when ``path/config.json`` is a JSON object with ``"model_type": "firepe"`` (or ``"firepe_llama"``,
    the export of an ``--arch llama`` run)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    try:
        cfg = read_json(file)
    except ValueError:
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") in (MODEL_TYPE, LLAMA_TYPE)


def hf_fields(cfg: GPTConfig) -> dict[str, Any]:
    """The Hugging Face config keys of a model configuration (``GPTConfig`` fields, renamed per :data:`RENAMED`)."""
    return {RENAMED.get(k, k): v for k, v in cfg.to_dict().items()}


def gpt_config(hf: dict[str, Any], where: str = "config.json") -> GPTConfig:
    """Inverse of :func:`hf_fields`: ``ValueError`` naming ``where`` for a missing or bad field (an unknown
    encoding included)."""
    data = {}
    for f in fields(GPTConfig):
        key = RENAMED.get(f.name, f.name)
        if key not in hf and key in ADDED_LATER:
            continue
        if key not in hf:
            raise ValueError(f"{where} has no {key!r}; it is not a firepe export or it is damaged.")
        data[f.name] = hf[key]
    if data.get("arch", "gpt") != "gpt":
        raise ValueError(f"{where}: arch {data['arch']!r}; a model_type 'firepe' folder holds firepe's GPT (a llama "
                         "run is exported as model_type 'firepe_llama').")
    try:
        return dataclass_from_dict(GPTConfig, data, where)
    except ValueError as e:  # GPTConfig's own checks (encoding options ...) do not know the file
        raise ValueError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def llama_gpt_config(hf: dict[str, Any], where: str) -> GPTConfig:
    """The :class:`GPTConfig` (``arch="llama"``) of a ``firepe_llama`` folder that ``firepe export`` wrote: one
    encoding for every layer, as many key/value heads as heads; ``ValueError`` naming ``where`` otherwise (such a
    folder -- e.g. a converted pretrained model -- loads with transformers, not as a firepe run)."""
    names, opts = hf.get("firepe_position"), hf.get("firepe_position_options")
    heads = hf.get("num_attention_heads")
    if not isinstance(names, list) or not names or not isinstance(opts, list) or len(opts) != len(names) \
            or any(n != names[0] for n in names) or any(o != opts[0] for o in opts) \
            or hf.get("num_key_value_heads", heads) != heads or not isinstance(hf.get("firepe"), dict):
        raise ValueError(f"{where}: a {LLAMA_TYPE!r} folder that firepe export did not write (per-layer encodings, "
                         "grouped-query attention or no firepe section); load it with transformers' "
                         "AutoModelForCausalLM.")
    try:
        return GPTConfig(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=heads,
                         d_model=hf["hidden_size"], d_ff=hf["intermediate_size"], position=names[0],
                         position_options=opts[0], tie_embeddings=hf.get("tie_word_embeddings", True),
                         norm_eps=hf["rms_norm_eps"], attention=hf.get("firepe_backend", "auto"),
                         attention_block=hf.get("firepe_block", 1024), arch="llama")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _load_llama_weights(model, file: Path) -> None:
    """The transformers model's tensors of a ``firepe_llama`` export (an encoding shared by several layers is
    stored once per layer) into ``model.llama``; ``ValueError`` for a damaged file or other names and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file))
        missing, unexpected = model.llama.load_state_dict(tensors, strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{file} is corrupt, truncated or of another model ({str(e).splitlines()[0]}).") from None
    missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{file} does not hold this model's tensors (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); export the run again.")


class _Holder(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        setattr(self, PREFIX, model)


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Model (eval mode, weights checked finite) and a run-style config dict (``model``, ``train``,
    ``data``, plus ``export``: the source run and step) of an exported folder."""
    path = Path(path)
    file = path / "config.json"
    hf = read_json(file)
    if not isinstance(hf, dict) or hf.get("model_type") not in (MODEL_TYPE, LLAMA_TYPE):
        raise ValueError(f"{file} is not a firepe export (model_type must be {MODEL_TYPE!r} or {LLAMA_TYPE!r}).")
    llama = hf["model_type"] == LLAMA_TYPE
    model_cfg = llama_gpt_config(hf, str(file)) if llama else gpt_config(hf, str(file))
    extra = hf.get("firepe")
    if not isinstance(extra, dict) or not isinstance(extra.get("train"), dict) or not isinstance(extra.get("data"),
                                                                                                  dict):
        raise ValueError(f"{file} has no \"firepe\" object with \"train\" and \"data\"; re-export the run.")
    check_fields(TrainConfig, extra["train"], f"{file} [firepe.train]")
    check_fields(DataConfig, extra["data"], f"{file} [firepe.data]")
    try:
        model = build_model(model_cfg)  # an encoding checks its option values when built
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    if extra["data"].get("tokenizer", "byte") == "byte":
        check_byte_tokenizer(path / "tokenizer.json")
    if llama:
        _load_llama_weights(model, path / "model.safetensors")
    else:
        load_model_weights(_Holder(model), path)
    try:
        model.check_finite()
    except ValueError as e:
        raise ValueError(f"{path / 'model.safetensors'} holds non-finite weights: {e}") from None
    device = resolve_device(device) if isinstance(device, str) else device
    cfg = {"model": model_cfg.to_dict(), "train": extra["train"], "data": extra["data"],
           "export": {k: v for k, v in extra.items() if k not in ("train", "data")}}
    return model.to(device).eval(), cfg
