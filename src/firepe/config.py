"""Every configuration of a run in one leaf module: the dataclasses, their validation, and the rules
of what a saved run fixes.

* :class:`GPTConfig` and :data:`PRESETS` (the model), :class:`TrainConfig` (the optimization and the
  run's runtime settings), :class:`DataConfig` (corpus and tokenizer); each validates itself in
  ``__post_init__`` and is saved as one section of the run's ``config.json``. The fine-tuning section
  (:class:`firepe.finetune.FinetuneConfig`) lives with the tasks it names.
* :func:`check_fields` / :func:`dataclass_from_dict`: a ``config.json`` section -> the dataclass, with
  one clear error naming the file and the field (types read by :mod:`firepe.hints`).
* :data:`RESUMABLE`, :func:`config_diff` and :func:`resume_changes`: the one rule of what a resumed
  run (``train --resume``, ``finetune --resume``, ``compare`` reusing its runs) may change: the
  :data:`RESUMABLE` train fields; every other field of every section is fixed by the saved run.
* :data:`TRACKERS` and :func:`parse_log_to`: the names ``--log-to`` accepts.

It imports nothing of firepe but :mod:`firepe.limits` and :mod:`firepe.hints` (a real leaf, so every other
module can import it); the checks of an encoding's options and backend, which need the encodings, are
registered in :data:`MODEL_CHECKS` by :mod:`firepe.kinds` (``import firepe`` does it).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .hints import describe, fits
from .limits import MAX_BATCH_TOKENS, MAX_LENGTH, MAX_STEPS, MAX_TOKENS, check_at_most

__all__ = ["GPTConfig", "PRESETS", "preset", "check_preset", "TrainConfig", "DataConfig", "PrepareConfig",
           "RESUMABLE", "TRACKERS", "BACKENDS", "ARCHS", "check_model_training", "MODEL_CHECKS", "parse_log_to",
           "check_fields",
           "dataclass_from_dict", "config_diff", "resume_changes", "field_help", "is_int", "is_real", "corpus_items",
           "HF_FILE_BUILDERS", "CORPUS_HINT"]


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def field_help(text: str, **more: Any) -> dict[str, Any]:
    """Field metadata read by the command line: ``help`` text, and e.g. ``cli=False`` or ``choices``."""
    return {"help": text, **more}


_help = field_help


# -- config.json sections ---------------------------------------------------------------------


#: the attention backends (:mod:`firepe.attention`): ``auto`` picks per encoding, device and size
BACKENDS = ("auto", "dense", "blocked", "chunked", "flex")
#: model architectures: firepe's GPT, or transformers' LlamaForCausalLM with the encoding (firepe.arch)
ARCHS = ("gpt", "llama")

#: checks every new :class:`GPTConfig` runs (``check(cfg)``, ValueError to refuse it): the encoding's options
#: and backend, registered by :mod:`firepe.kinds` when firepe is imported -- this module imports nothing of
#: firepe but the limits and the type hints, so the checks that need the encodings are handed in
MODEL_CHECKS: list[Callable[[GPTConfig], None]] = []


@dataclass
class GPTConfig:
    """Model configuration; serialized as JSON next to every checkpoint."""

    # ``preset=True``: the flag's default is the --preset's value; ``cli=False``: no flag of its own (the
    # vocabulary comes from the tokenizer, the encoding from --position, tie_embeddings from --untied)
    vocab_size: int = field(default=257, metadata=_help("vocabulary size", cli=False))
    n_layer: int = field(default=4, metadata=_help("layers (default: the preset's)", preset=True))
    n_head: int = field(default=4, metadata=_help("attention heads (default: the preset's)", preset=True))
    d_model: int = field(default=128, metadata=_help("model width (default: the preset's)", preset=True))
    d_ff: int | None = field(default=None, metadata=_help("feed-forward width (default: 4 x d_model)"))
    position: str = field(default="fire", metadata=_help("position encoding", cli=False))
    position_options: dict[str, Any] = field(default_factory=dict, metadata=_help("its options", cli=False))
    tie_embeddings: bool = field(default=True, metadata=_help("tie input and output embeddings", cli=False))
    dropout: float = field(default=0.0, metadata=_help("dropout"))
    norm_eps: float = field(default=1e-5, metadata=_help("LayerNorm epsilon"))
    attention: str = field(default="auto", metadata=_help("attention backend for training (see firepe.attention)",
                                                          choices=BACKENDS))
    attention_block: int = field(default=1024, metadata=_help("query block of the chunked backend"))
    arch: str = field(default="gpt", metadata=_help(
        "architecture: gpt (firepe's GPT-2-style model) or llama (transformers' LlamaForCausalLM, RMSNorm and "
        "SwiGLU, with the encoding in its attention: firepe.hf.with_position; needs firepe[hf])", choices=ARCHS))

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "attention_block"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.d_ff is not None and (not is_int(self.d_ff) or self.d_ff <= 0):
            raise ValueError(f"d_ff must be a positive integer or None (4 * d_model), got {self.d_ff!r}.")
        if not is_real(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}.")
        if not is_real(self.norm_eps) or not 0 < self.norm_eps < math.inf:
            raise ValueError(f"norm_eps must be a finite number > 0, got {self.norm_eps!r}.")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be true or false, got {self.tie_embeddings!r}.")
        if not isinstance(self.position_options, dict):
            raise ValueError(f"position_options must be a dict of encoding options, got "
                             f"{type(self.position_options).__name__} {self.position_options!r}.")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}.")
        if not isinstance(self.position, str) or not self.position:
            raise ValueError(f"position must be the name of a position encoding, got {self.position!r}.")
        if self.attention not in BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; valid: {', '.join(BACKENDS)}.")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; valid: {', '.join(ARCHS)}.")
        if self.arch == "llama" and self.dropout:
            raise ValueError(f"dropout={self.dropout}: the llama architecture has no dropout; use --dropout 0.")
        for check in MODEL_CHECKS:
            check(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ffn_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        return dataclass_from_dict(cls, data)


PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, d_model=64),      # unit tests
    "cpu": dict(n_layer=3, n_head=4, d_model=128),      # the laptop `firepe compare` default
    "small": dict(n_layer=6, n_head=8, d_model=512),
    "base": dict(n_layer=12, n_head=12, d_model=768),   # Table 8, 125M
    "large": dict(n_layer=24, n_head=16, d_model=1024),  # Table 8 (head dim 64), 350M
}


def check_preset(name: str) -> None:
    """ValueError unless ``name`` is one of :data:`PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}.")


def preset(name: str, **overrides: Any) -> GPTConfig:
    check_preset(name)
    return GPTConfig(**{**PRESETS[name], **overrides})


# Hugging Face packaged builders that read local files: without data_files they scan the current folder.
HF_FILE_BUILDERS = {"arrow", "csv", "json", "pandas", "parquet", "text", "xml"}
CORPUS_HINT = "pass 'stdlib', a file or folder path (several joined by ','), or 'hf:NAME[:CONFIG]'"


def corpus_items(spec: str) -> list[str]:
    """The non-empty items of a ``,``-joined list (a trailing comma adds nothing)."""
    return [p.strip() for p in spec.split(",") if p.strip()]


@dataclass
class DataConfig:
    corpus: str = "stdlib"
    tokenizer: str = "byte"          # byte | bpe | path/to/tokenizer.json
    bpe_vocab_size: int = 4096
    val_percent: int = 5             # 1..99: share of files (or of each file's text) held out
    max_train_tokens: int | None = None   # cap (and the budget pulled from streaming corpora)
    val_tokens: int = 65536          # validation tokens scored at every evaluation length
    hf_data_files: str | None = None
    hf_text_field: str = "text"
    data: str | None = None          # a folder made by firepe prepare (its corpus, tokenizer and split)
    data_checksum: str | None = field(default=None, metadata=_help(
        "the prepared folder's manifest checksum, recorded by a new run (a resume needs the same tokens)", cli=False))

    def __post_init__(self):
        if not isinstance(self.corpus, str):
            raise ValueError(f"the corpus must be a string ({CORPUS_HINT}), got {self.corpus!r}.")
        if not corpus_items(self.corpus):
            raise ValueError(f"the corpus is empty ({self.corpus!r}): {CORPUS_HINT}.")
        hf_name = self.corpus.strip()[3:].partition(":")[0] if self.corpus.strip().startswith("hf:") else None
        if hf_name is not None and not hf_name.strip():
            raise ValueError(f"corpus {self.corpus!r} names no dataset; valid: 'hf:NAME[:CONFIG]', "
                             f"e.g. hf:allenai/c4:en.")
        if not isinstance(self.tokenizer, str) or not (self.tokenizer in ("byte", "bpe")
                                                       or self.tokenizer.endswith(".json")):
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}; valid: byte, bpe, or a path to tokenizer.json.")
        if not is_int(self.bpe_vocab_size) or self.bpe_vocab_size <= 257:
            raise ValueError(f"bpe_vocab_size must be an integer above 257 (the 256 byte values and the "
                             f"end-of-document token must fit), got {self.bpe_vocab_size!r}.")
        if not is_int(self.val_percent) or not 1 <= self.val_percent <= 99:
            raise ValueError(f"val_percent must be an integer from 1 to 99, got {self.val_percent!r}.")
        if self.max_train_tokens is not None and (not is_int(self.max_train_tokens) or self.max_train_tokens < 1):
            raise ValueError(f"max_train_tokens must be None or a positive integer, got {self.max_train_tokens!r}.")
        if not is_int(self.val_tokens) or self.val_tokens < 1:
            raise ValueError(f"val_tokens must be a positive integer, got {self.val_tokens!r}.")
        check_at_most(self.val_tokens, "val_tokens", MAX_TOKENS)
        check_at_most(self.max_train_tokens, "max_train_tokens", MAX_TOKENS)
        if self.hf_data_files is not None and not isinstance(self.hf_data_files, str):
            raise ValueError(f"hf_data_files must be None or a string of paths joined by ',', "
                             f"got {self.hf_data_files!r}.")
        if not isinstance(self.hf_text_field, str) or not self.hf_text_field:
            raise ValueError(f"hf_text_field must be a non-empty string, got {self.hf_text_field!r}.")
        if self.hf_data_files and hf_name is None:
            raise ValueError(f"hf_data_files is only read by an 'hf:' corpus, not by corpus {self.corpus!r}; "
                             f"use corpus 'hf:json' (or hf:text, hf:csv, hf:parquet) or drop hf_data_files.")
        if hf_name in HF_FILE_BUILDERS and not corpus_items(self.hf_data_files or ""):
            raise ValueError(f"corpus 'hf:{hf_name}' needs hf_data_files (the local files to read, joined by ','); "
                             f"without them it would read every {hf_name} file of the current folder.")
        if self.data is not None and (not isinstance(self.data, str) or not self.data.strip()):
            raise ValueError(f"data must be None or the path of a folder made by firepe prepare, got {self.data!r}.")
        if self.data_checksum is not None and not isinstance(self.data_checksum, str):
            raise ValueError(f"data_checksum must be None or a string, got {self.data_checksum!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self) -> DataConfig:
        """This config with local paths made absolute -- corpus paths, ``hf_data_files`` naming existing
        local files (not a hub repository's paths or globs) and a ``tokenizer.json`` -- so that a run
        resumed or evaluated from another directory reads the same files. A new run stores this."""
        def absolute(items: str) -> str:
            return ",".join(str(Path(p.strip()).resolve()) if p.strip() else p for p in items.split(","))

        changes = {}
        if self.corpus != "stdlib" and not self.corpus.startswith("hf:"):
            changes["corpus"] = absolute(self.corpus)
        if self.hf_data_files and all(Path(p.strip()).exists() for p in self.hf_data_files.split(",") if p.strip()):
            changes["hf_data_files"] = absolute(self.hf_data_files)
        if self.tokenizer.endswith(".json"):
            changes["tokenizer"] = absolute(self.tokenizer)
        if self.data is not None:
            changes["data"] = str(Path(self.data.strip()).resolve())
        return replace(self, **changes) if changes else self


@dataclass
class PrepareConfig:
    """What ``firepe prepare`` adds to a :class:`DataConfig` (see :mod:`firepe.data.preparation`)."""

    shard_tokens: int = field(default=1 << 27, metadata=_help(
        "tokens per shard file (a shard closes at the end of the batch of documents that fills it)"))
    max_val_tokens: int | None = field(default=None, metadata=_help(
        "cap on validation tokens (default: every held-out document)"))
    bpe_sample_chars: int = field(default=1 << 26, metadata=_help(
        "characters of training documents --tokenizer bpe is trained on (spread over the corpus)"))
    batch_chars: int = field(default=1 << 23, metadata=_help(
        "characters of documents encoded per batch (at most 1,024 documents)"))
    progress: bool = field(default=True, metadata=_help("progress bar"))

    def __post_init__(self) -> None:
        _check_int(self.shard_tokens, "shard_tokens", 1)
        check_at_most(self.shard_tokens, "shard_tokens", 1 << 34)
        if self.max_val_tokens is not None:
            _check_int(self.max_val_tokens, "max_val_tokens", 1)
            check_at_most(self.max_val_tokens, "max_val_tokens", MAX_TOKENS)
        _check_int(self.bpe_sample_chars, "bpe_sample_chars", 1)
        check_at_most(self.bpe_sample_chars, "bpe_sample_chars", 1 << 34)
        _check_int(self.batch_chars, "batch_chars", 1)
        check_at_most(self.batch_chars, "batch_chars", 1 << 30)
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be true or false, got {self.progress!r}.")


@dataclass
class TrainConfig:
    """Training settings; ``firepe train`` derives one flag per field (``--seq-len`` ...) from them."""

    seq_len: int = field(default=128, metadata=_help("training length (tokens per sequence)"))
    batch_size: int = field(default=16, metadata=_help("global sequences per optimizer step"))
    micro_batch_size: int | None = field(default=None, metadata=_help(
        "sequences per forward pass per process (gradient accumulation); default: the whole per-process batch"))
    steps: int = field(default=1000, metadata=_help("optimizer steps"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final lr as a fraction of --lr (cosine decay), 0..1"))
    warmup_steps: int = field(default=50, metadata=_help("linear warm-up steps"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (not on norms, biases, positions)"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_help("AdamW betas", cli=False))
    grad_clip: float = field(default=1.0, metadata=_help("gradient-norm clipping (0: off)"))
    seed: int = field(default=0, metadata=_help("seed of the initialization and the data order"))
    random_positions: int | None = field(default=None, metadata=_help(
        "randomized positions (Ruoss et al., 2023): each training sequence takes a sorted random subset of "
        "[0, M) as its positions instead of 0..seq_len-1 (M >= seq_len; never at evaluation)"))
    log_every: int = field(default=10, metadata=_help("steps between metrics.jsonl lines"))
    checkpoint_every: int = field(default=200, metadata=_help("steps between checkpoints"))
    keep_checkpoints: int = field(default=2, metadata=_help("checkpoints kept on disk (newest first)"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N"))
    precision: str = field(default="auto", metadata=_help("auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16",
                                                           choices=("auto", "fp32", "bf16")))
    threads: int | None = field(default=None, metadata=_help("CPU threads (torch.set_num_threads)"))
    progress: bool = field(default=True, metadata=_help("progress bar"))
    log_to: str | None = field(default=None, metadata=_help(
        "also send the metrics.jsonl rows to tensorboard, wandb and/or trackio (comma-separated; none: off)"))
    log_project: str = field(default="firepe", metadata=_help("W&B / Trackio project of --log-to"))

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _check_int(self.seq_len, "seq_len", 2, "the training length must be at least 2 tokens")
        for name in ("batch_size", "steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            _check_int(getattr(self, name), name, 1)
        for name in ("micro_batch_size", "threads"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 1)
        _check_int(self.warmup_steps, "warmup_steps", 0)
        check_at_most(self.seq_len, "seq_len", MAX_LENGTH, " tokens")
        for name in ("steps", "warmup_steps", "log_every", "checkpoint_every"):
            check_at_most(getattr(self, name), name, MAX_STEPS)
        check_at_most(self.batch_size * self.seq_len, f"batch_size x seq_len ({self.batch_size} x {self.seq_len})",
                      MAX_BATCH_TOKENS, " tokens per step")
        _check_int(self.seed, "seed", 0)
        if self.random_positions is not None:
            _check_int(self.random_positions, "random_positions", self.seq_len,
                       f"random_positions (M) must be an integer >= the training length {self.seq_len} (positions "
                       "are drawn from [0, M))")
            check_at_most(self.random_positions, "random_positions", MAX_LENGTH)
        _check_float(self.lr, "lr", lo=0, lo_open=True)
        _check_float(self.min_lr_ratio, "min_lr_ratio", lo=0, hi=1)
        _check_float(self.weight_decay, "weight_decay", lo=0)
        _check_float(self.grad_clip, "grad_clip", lo=0)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}.")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}.")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}.")
        self.log_to = parse_log_to(self.log_to)
        if (not isinstance(self.log_project, str) or not self.log_project.strip()
                or any(c in self.log_project for c in "/\\#?%:")):
            raise ValueError(f"log_project must be a non-empty name without any of / \\ # ? % :, "
                             f"got {self.log_project!r}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, data)


#: TrainConfig fields a resumed run may change (``--resume --steps N`` extends the budget and the cosine
#: schedule from there); every other setting of a run is fixed by its config.json.
RESUMABLE = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "device", "threads", "progress", "log_to",
             "log_project")


def _check_int(value: Any, name: str, minimum: int, message: str | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{message or f'{name} must be an integer >= {minimum}'}, got {value!r}.")


def _check_float(value: Any, name: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = (f"> {lo:g}" if lo_open else f">= {lo:g}") if hi is None else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}.")


#: ``--log-to`` names (the backends are in :mod:`firepe.tracking`)
TRACKERS = ("tensorboard", "wandb", "trackio")

_VALID = f"{', '.join(TRACKERS)} (comma-separated), or none"


def parse_log_to(text: str | None) -> str | None:
    """``log_to`` as given -> the canonical ``"tensorboard,wandb"`` (lower case, no spaces or
    repeats), or None for ``None`` / ``"none"``; ValueError naming a bad entry and the valid ones."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"log_to must be a string of backend names ({_VALID}), got {text!r}.")
    if not text.strip():
        raise ValueError(f"log_to is empty; valid: {_VALID}.")
    if text.strip().lower() == "none":
        return None
    names = [s.strip().lower() for s in text.split(",")]
    if any(not s for s in names):
        raise ValueError(f"log_to {text!r} has an empty entry; valid: {_VALID}.")
    if "none" in names:
        raise ValueError(f"log_to {text!r} combines 'none' with backends; pass none alone (no logging) or only "
                         f"backend names: {', '.join(TRACKERS)}.")
    unknown = [s for s in names if s not in TRACKERS]
    if unknown:
        raise ValueError(f"log_to names an unknown backend {unknown[0]!r}; valid: {_VALID}.")
    return ",".join(dict.fromkeys(names))


# -- what a saved run fixes ---------------------------------------------------------------------


def config_diff(old: Any, new: Any) -> list[str]:
    """The fields whose values differ between two configs of one dataclass type, in field order."""
    if type(old) is not type(new):
        raise TypeError(f"config_diff compares two configs of one type, got {type(old).__name__} and "
                        f"{type(new).__name__}.")
    return [f.name for f in fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def resume_changes(saved: TrainConfig, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """``(allowed, refused)`` of resuming a run saved with ``saved`` with the train fields ``given``:
    ``allowed`` the :data:`RESUMABLE` fields whose value changes (field -> new value), ``refused`` every
    other field whose value changes (field -> ``(saved value, given value)``). A given value equal to the
    saved one is no change. Unknown field names are refused with ``saved value`` None."""
    known = {f.name for f in fields(TrainConfig)}
    allowed: dict[str, Any] = {}
    refused: dict[str, tuple[Any, Any]] = {}
    for name, value in given.items():
        if name not in known:
            refused[name] = (None, value)
        elif value != getattr(saved, name):
            if name in RESUMABLE:
                allowed[name] = value
            else:
                refused[name] = (getattr(saved, name), value)
    return allowed, refused


# -- reading config.json sections -------------------------------------------------------------


def check_fields(cls, data: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``data`` is a JSON object whose keys are fields of dataclass ``cls``
    holding values of the annotated types (missing keys take the field defaults)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{where}: the required key {name!r} is missing.")
            continue
        if not fits(data[name], hints[name], finite=True):
            raise ValueError(f"{where}: {name} must be {describe(hints[name])}, got {data[name]!r}.")


def check_model_training(model: GPTConfig, train: TrainConfig) -> None:
    """``ValueError`` for a model and training settings that cannot go together (checked before a run or a sweep
    writes anything)."""
    if model.arch == "llama" and train.random_positions is not None:
        raise ValueError("--random-positions is not available with --arch llama (transformers' attention takes "
                         "each row's positions from the mask); drop one of them.")


def dataclass_from_dict(cls, data: Any, where: str | None = None):
    """``cls(**data)`` after :func:`check_fields` (one clear error naming ``where`` if not)."""
    where = where or cls.__name__
    check_fields(cls, data, where)
    try:
        return cls(**data)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


