"""Hugging Face ``transformers`` integration: ``FirePEConfig``, ``FirePEForCausalLM``, tokenizers, export.

Importing this module registers ``model_type: "firepe"`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so with firepe installed an exported folder loads without remote code::

    import firepe.hf  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/fire")
    tok = AutoTokenizer.from_pretrained("exported/fire")

Elsewhere ``from_pretrained(..., trust_remote_code=True)`` runs the folder's ``modeling_firepe.py``,
which only imports this module (firepe is the dependency; the model code is not copied).

``FirePEForCausalLM`` wraps :class:`firepe.model.GPT` as ``self.transformer``: logits are firepe's,
bit for bit. It takes transformers' caches (``DynamicCache``; the GPT calls ``cache.update(k, v, layer)``)
and ``attention_mask`` with padding (each row gets the positions of its real tokens, see
:meth:`firepe.model.GPT.hidden`), so ``generate``, pipelines and lm-evaluation-harness work.
``labels`` give the usual shifted next-token loss (``-100`` ignored).

There is no maximum length: ``max_position_embeddings`` records the training length (lm-eval and
other tools read it as the context they keep; pass ``max_length=`` to them to go longer), and the
model runs at any length.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import RowPositions
from .config import GPTConfig
from .exported import AUTO_MAP, EOS, MODEL_TYPE, PREFIX, SHIM, bytes_to_unicode, gpt_config, hf_fields
from .model import GPT, IGNORE_INDEX

#: oldest versions tested (pyproject's ``hf`` extra pins the same)
MIN_VERSIONS = {"transformers": "5.23.0"}


def _check_version(package: str) -> str:
    """The installed version of ``package``; ImportError (one sentence) when it is missing or too old."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(package)
    except PackageNotFoundError:
        raise ImportError(f"this needs {package}>={MIN_VERSIONS[package]}: pip install 'firepe[hf]'.") from None
    from packaging.version import Version  # a dependency of transformers

    if Version(found) < Version(MIN_VERSIONS[package]):
        raise ImportError(f"this needs {package}>={MIN_VERSIONS[package]}, found {found}: "
                          "pip install -U 'firepe[hf]'.")
    return found


_TRANSFORMERS = _check_version("transformers")

from huggingface_hub.dataclasses import strict  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

#: the output's cache field: ``cache`` from transformers 5.24, ``past_key_values`` before
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

__all__ = ["FirePEConfig", "FirePEForCausalLM", "byte_tokenizer", "hf_tokenizer", "export_run", "MIN_VERSIONS"]

SHIM_TEXT = '''"""firepe (FIRE and the other position encodings) for Hugging Face transformers.

The code is the firepe package (pip install 'firepe[hf]'); this module only imports it.
"""

from firepe.hf import FirePEConfig, FirePEForCausalLM

__all__ = ["FirePEConfig", "FirePEForCausalLM"]
'''


@strict(accept_kwargs=True)
class FirePEConfig(PreTrainedConfig):
    """Every :class:`firepe.model.GPTConfig` field (``tie_embeddings`` as ``tie_word_embeddings``), the
    training length as ``max_position_embeddings``, and ``firepe``: the run's ``train`` and ``data``
    sections and its source (run folder, step).

    The model fields are not repeated here: they arrive as keyword arguments, missing ones take
    ``GPTConfig``'s defaults, and :meth:`gpt_config` validates them (an unknown encoding fails here).
    """

    model_type = MODEL_TYPE
    attribute_map = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "hidden_size": "d_model"}
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    max_position_embeddings: int | None = None
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    firepe: dict | None = None

    def __post_init__(self, **kwargs):
        for key, default in hf_fields(GPTConfig()).items():
            if key not in kwargs and not hasattr(self, key):
                kwargs[key] = default
        self.auto_map = dict(AUTO_MAP)
        super().__post_init__(**kwargs)
        self.gpt_config()

    def gpt_config(self) -> GPTConfig:
        return gpt_config({k: getattr(self, k) for k in hf_fields(GPTConfig())}, "FirePEConfig")

    @classmethod
    def from_gpt(cls, cfg: GPTConfig, **kwargs: Any) -> FirePEConfig:
        return cls(**hf_fields(cfg), **kwargs)


class _CacheView:
    """A transformers ``Cache`` seen through firepe's KV-cache interface (``length``, ``update``)."""

    def __init__(self, cache):
        self.cache = cache
        self.length = cache.get_seq_length()

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(k, v, layer)


class FirePEForCausalLM(PreTrainedModel, GenerationMixin):
    """:class:`firepe.model.GPT` as a transformers causal LM (``self.transformer`` is the GPT)."""

    config_class = FirePEConfig
    base_model_prefix = PREFIX
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {f"{PREFIX}.lm_head.weight": f"{PREFIX}.wte.weight"}
    _supports_sdpa = True
    # position modules stay float32 when loading in bf16/fp16 (positions above 256 are not bf16 integers)
    _keep_in_fp32_modules_strict = ["position_layers", "position_shared"]

    def __init__(self, config: FirePEConfig):
        super().__init__(config)
        self.transformer = GPT(config.gpt_config())
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """transformers' ``from_pretrained`` with the checks :func:`firepe.exported.load_export` makes: a local
        folder's ``config.json`` must hold every firepe model field (an encoding with missing, unknown or bad
        options is refused, not defaulted), the weights must be exactly the declared encoding's (no missing,
        unexpected or mismatched tensors) and finite. One ``ValueError`` otherwise (``AutoModelForCausalLM`` and
        lm-evaluation-harness load through here)."""
        source = str(pretrained_model_name_or_path)
        config_file = Path(source) / "config.json"
        if config_file.is_file():
            from .runs import read_json

            gpt_config(read_json(config_file), str(config_file))
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True,
                                              **kwargs)
        position = model.config.position
        wrong = [f"{what} {', '.join(map(str, sorted(keys)[:4]))}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", info.get("missing_keys") or ()),
                                    ("unexpected", info.get("unexpected_keys") or ()),
                                    ("mismatched", [k[0] if isinstance(k, tuple) else k
                                                    for k in info.get("mismatched_keys") or ()])) if keys]
        if wrong:
            raise ValueError(f"{source}: the weights do not match the declared encoding {position!r} "
                             f"({'; '.join(wrong)}); the folder is damaged or its config.json was edited: export "
                             "the run again.")
        try:
            model.transformer.check_finite()
        except ValueError as e:
            raise ValueError(f"{source}: the weights hold non-finite values ({e}); export the run again.") from None
        return (model, info) if want_info else model

    def _init_weights(self, module: nn.Module) -> None:
        # The GPT initializes itself (GPT-2 init, each encoding its own); from_pretrained loads every tensor.
        # Only non-persistent buffers (RoPE frequencies) are not in the file: rebuild them.
        from .positions.base import PositionEncoding

        if isinstance(module, PositionEncoding):
            non_persistent = set(dict(module.named_buffers(recurse=False))) - set(module.state_dict())
            if non_persistent:
                fresh = self.transformer.build_position()
                with torch.no_grad():
                    for name in non_persistent:
                        getattr(module, name).copy_(getattr(fresh, name))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.transformer.lm_head = value

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize; the GPT's own ``cfg.vocab_size`` (its id check) follows."""
        out = super().resize_token_embeddings(*args, **kwargs)
        self.transformer.cfg.vocab_size = self.transformer.wte.num_embeddings
        return out

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache=None, past_key_values=None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                return_dict: bool | None = None, cache_position: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                num_items_in_batch: int | torch.Tensor | None = None, **unknown: Any):
        """``input_ids`` ``[B, T]`` -> logits ``[B, T, V]`` (the last ``logits_to_keep`` positions when > 0).

        ``attention_mask`` ``[B, past + T]`` (0 = padding) and the transformers cache -- ``cache`` (transformers
        >= 5.24) or ``past_key_values`` (earlier releases), created when ``use_cache`` -- work as in every
        transformers causal LM. Positions always come from the mask: ``position_ids`` ``[B, T]`` and
        ``cache_position`` ``[T]`` are checked against it (padding positions may hold anything). ``labels`` give
        the shifted loss, averaged over the labelled tokens or summed and divided by ``num_items_in_batch``
        (what transformers' ``Trainer`` passes with gradient accumulation). ``return_dict=False`` gives a tuple.
        A keyword this method does not read is a ``ValueError``, never silently ignored.
        """
        from transformers import DynamicCache

        if unknown:
            raise ValueError(f"FirePEForCausalLM.forward does not take {', '.join(map(repr, sorted(unknown)))} "
                             f"(transformers {_TRANSFORMERS}); it reads {', '.join(FORWARD_KEYWORDS)}.")
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the transformers cache once, as cache= or past_key_values=, not both.")
        cache = cache if cache is not None else past_key_values
        for name, flag in (("output_attentions", output_attentions), ("output_hidden_states", output_hidden_states)):
            if flag:
                raise ValueError(f"{name}=True is not supported by FirePEForCausalLM (firepe's attention does "
                                 "not return its weights or per-layer states).")
        if inputs_embeds is not None:
            raise ValueError("FirePEForCausalLM takes input_ids, not inputs_embeds.")
        if input_ids is None:
            raise ValueError("FirePEForCausalLM needs input_ids [batch, tokens].")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be 2-D [batch, past + new tokens] (0 = padding), got shape "
                             f"{tuple(attention_mask.shape)}; static/compiled caches with 4-D masks are not supported.")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        view = _CacheView(cache) if cache is not None else None
        start = view.length if view is not None else 0
        if cache_position is not None:
            expected = torch.arange(start, start + input_ids.size(1), device=cache_position.device)
            if cache_position.shape != expected.shape or not torch.equal(cache_position.long(), expected):
                raise ValueError(f"cache_position must be the {input_ids.size(1)} positions after the {start} "
                                 f"cached tokens ({start}..{start + input_ids.size(1) - 1}), got "
                                 f"{cache_position.tolist()[:8]}.")
        if position_ids is not None:
            self._check_position_ids(position_ids, attention_mask, input_ids, start)
        h = self.transformer.hidden(input_ids, view, attention_mask)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = self.transformer.lm_head(h)
        loss = None
        if labels is not None:
            shift = labels[:, 1:].to(logits.device)
            flat = logits[:, :-1].float().reshape(-1, logits.size(-1)), shift.reshape(-1).long()
            if num_items_in_batch is None:
                loss = nn.functional.cross_entropy(*flat, ignore_index=IGNORE_INDEX)
            else:
                total = nn.functional.cross_entropy(*flat, ignore_index=IGNORE_INDEX, reduction="sum")
                loss = total / torch.as_tensor(num_items_in_batch, device=total.device)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
        return out if return_dict is not False else out.to_tuple()

    @staticmethod
    def _check_position_ids(position_ids, attention_mask, input_ids, start: int) -> None:
        B, T = input_ids.shape
        mask = attention_mask if attention_mask is not None else torch.ones(B, start + T, dtype=torch.long)
        rows = RowPositions.from_mask(mask.to(input_ids.device), T)
        if tuple(position_ids.shape[-1:]) == (T,):
            given = position_ids.to(input_ids.device).expand(B, T)
            if torch.equal(torch.where(rows.valid[:, -T:], rows.q, given), given):  # padding: any position
                return
        raise ValueError("position_ids other than the positions of the real tokens (from attention_mask and the "
                         "cache) are not supported; leave position_ids out.")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, plus ``modeling_firepe.py`` (the ``auto_map`` module)."""
        self._auto_class = None  # never copy firepe's own source files into the folder
        self.config._auto_class = None
        out = super().save_pretrained(save_directory, *args, **kwargs)
        (Path(save_directory) / SHIM).write_text(SHIM_TEXT)
        return out


#: the keywords ``FirePEForCausalLM.forward`` reads; any other is refused
FORWARD_KEYWORDS = tuple(n for n in inspect.signature(FirePEForCausalLM.forward).parameters
                         if n not in ("self", "unknown"))

AutoConfig.register(MODEL_TYPE, FirePEConfig, exist_ok=True)
AutoModelForCausalLM.register(FirePEConfig, FirePEForCausalLM, exist_ok=True)


# -- tokenizers -------------------------------------------------------------------------------------


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """firepe's byte tokenizer as a transformers fast tokenizer: byte ``b`` is id ``b``, ``<|endoftext|>``
    (end of document, also the padding token) is 256. Nothing is added around a text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    if tok.token_to_id(EOS) != 256:
        raise RuntimeError(f"{EOS} got id {tok.token_to_id(EOS)}, expected 256.")
    # split_special_tokens: the text "<|endoftext|>" is encoded as its 13 bytes, as firepe's byte tokenizer
    # does; the token itself only comes from code (eos_token_id), never out of a text
    return _fast(tok, split_special_tokens=True)


def _fast(tok, split_special_tokens: bool = False) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS,
                                   unk_token=None, clean_up_tokenization_spaces=False,
                                   split_special_tokens=split_special_tokens)


def hf_tokenizer(run_dir: str | Path, data: dict[str, Any]) -> PreTrainedTokenizerFast:
    """The run's tokenizer for transformers: :func:`byte_tokenizer`, or the run's BPE ``tokenizer.json``."""
    from .config import DataConfig, dataclass_from_dict
    from .data import BPETokenizer, load_tokenizer

    tok = load_tokenizer(Path(run_dir), dataclass_from_dict(DataConfig, data))
    return byte_tokenizer() if not isinstance(tok, BPETokenizer) else _fast(tok.tok)


# -- export -----------------------------------------------------------------------------------------


def _remove_stale_temporaries(out: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` folders that exports killed before their rename left beside ``out``."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = tmp.name[len(out.name) + 2:].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's latest checkpoint as a transformers folder ``out`` (which must not exist).

    Everything is written to a temporary folder ``.NAME.PID.*.tmp`` beside ``out`` and renamed at the end,
    so an interrupted export leaves no half-written ``out``; the next export to ``out`` removes the
    temporaries of exports whose process is gone (kill -9).
    """
    from . import __version__
    from .checkpoint import latest_checkpoint, read_state
    from .exported import is_export
    from .loading import load_run
    from .runs import fsync_dir, fsync_file, writing

    run_dir, out = Path(run_dir), Path(out)
    if is_export(run_dir):
        raise ValueError(f"{str(run_dir)!r} is already an exported folder; export a run folder.")
    if out.exists() or out.is_symlink():
        raise ValueError(f"output folder {str(out)!r} already exists; pick a new --out (nothing was written).")
    model, cfg = load_run(run_dir)
    step = read_state(latest_checkpoint(run_dir))["step"]
    tok = hf_tokenizer(run_dir, cfg["data"])
    if len(tok) != model.cfg.vocab_size:
        raise ValueError(f"the run's tokenizer has {len(tok)} tokens but its model {model.cfg.vocab_size}.")
    eos = tok.convert_tokens_to_ids(EOS)
    source = {"train": cfg["train"], "data": cfg["data"], "run": str(run_dir), "step": step,
              "version": __version__, **({"finetune": cfg["finetune"]} if "finetune" in cfg else {})}
    if model.cfg.arch == "llama":  # transformers' model already: its own folder (model_type firepe_llama)
        hf_model = model.llama_for_export()
        hf_model.config.update({"max_position_embeddings": cfg["train"]["seq_len"], "bos_token_id": eos,
                                "eos_token_id": eos, "pad_token_id": eos, "firepe": source})
    else:
        hf_cfg = FirePEConfig.from_gpt(
            model.cfg, max_position_embeddings=cfg["train"]["seq_len"], bos_token_id=eos, eos_token_id=eos,
            pad_token_id=eos, architectures=["FirePEForCausalLM"], firepe=source)
        hf_model = FirePEForCausalLM(hf_cfg)
        hf_model.transformer.load_state_dict(model.state_dict())
    hf_model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    tok.model_max_length = cfg["train"]["seq_len"]
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        with writing(out):  # a full disk or a file-size limit (OSError, SafetensorError): one sentence
            hf_model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            for f in tmp.iterdir():
                fsync_file(f)
            os.chmod(tmp, 0o755)
            if out.exists():
                raise ValueError(f"output folder {str(out)!r} appeared while exporting; nothing was written to it.")
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


from .hf_position import with_position  # noqa: E402  (registers firepe's Llama-family classes)

__all__ += ["with_position"]
