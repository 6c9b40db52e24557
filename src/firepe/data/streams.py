"""Where a run's tokens come from: a corpus read into memory, or a prepared folder (``DataConfig.data``).

* :func:`resolve` -- the :class:`DataConfig` a new run stores: local paths absolute and, with ``data``,
  the prepared folder's corpus, tokenizer, split settings and manifest checksum filled in (so the run's
  ``config.json`` says what it was trained on, and a resume can check it reads the same tokens).
* :func:`training_data` -- the tokenizer and the :class:`~firepe.data.order.TokenData` of training,
  plus one line describing the data and one counting the epochs the run will read.
* :func:`split_tokens` -- the first tokens of a split in memory (evaluation, passkey filler).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ..config import DataConfig
from .cache import encoded_stream
from .corpus import load_corpus
from .order import TokenData
from .shards import PreparedData
from .tokenizer import build_tokenizer, load_tokenizer

__all__ = ["resolve", "training_data", "split_tokens", "open_prepared", "epochs_line", "REPEAT_WARNING"]

#: a run that reads its training tokens more than this many times is warned about (one line)
REPEAT_WARNING = 4

#: DataConfig fields a prepared folder fixes (``--data`` takes them from its manifest)
_FIXED = ("corpus", "tokenizer", "bpe_vocab_size", "val_percent", "hf_data_files", "hf_text_field")


def open_prepared(cfg: DataConfig, run_tokenizer=None, verify: str = "quick") -> PreparedData:
    """The prepared folder of ``cfg.data``, checked against what ``cfg`` records (its manifest checksum,
    when ``cfg`` has one) and, given ``run_tokenizer``, against the tokenizer of the run reading it."""
    prepared = PreparedData(cfg.data, verify=verify)
    if cfg.data_checksum is not None and cfg.data_checksum != prepared.checksum:
        raise ValueError(f"{cfg.data} was prepared again since this run started (its manifest checksum differs); "
                         "the run needs the tokens it was trained on: prepare into a new folder for new runs.")
    if run_tokenizer is not None and run_tokenizer.identity != prepared.manifest["tokenizer"]["identity"]:
        raise ValueError(f"{cfg.data} holds tokens of another tokenizer ({prepared.manifest['tokenizer']['identity']}"
                         f") than this run's ({run_tokenizer.identity}); use the folder the run was trained on.")
    return prepared


def resolve(cfg: DataConfig) -> DataConfig:
    """``cfg.resolved()`` and, with ``data``, the fields a prepared folder fixes taken from its manifest
    (ValueError when ``cfg`` sets one of them -- other than to its default -- to another value)."""
    cfg = cfg.resolved()
    if cfg.data is None:
        return cfg
    prepared = open_prepared(replace(cfg, data_checksum=None))
    s = prepared.settings
    fixed = {"corpus": s["corpus"], "tokenizer": s["tokenizer"], "bpe_vocab_size": s["bpe_vocab_size"] or
             DataConfig.bpe_vocab_size, "val_percent": s["val_percent"], "hf_data_files": s["hf_data_files"],
             "hf_text_field": s["hf_text_field"] or DataConfig.hf_text_field}
    defaults = DataConfig()
    for name in _FIXED:
        given = getattr(cfg, name)
        if given != getattr(defaults, name) and given != fixed[name]:
            raise ValueError(f"--data {cfg.data} fixes {name} ({fixed[name]!r}); leave --{name.replace('_', '-')} "
                             f"out (got {given!r}).")
    if cfg.data_checksum is not None and cfg.data_checksum != prepared.checksum:
        raise ValueError(f"{cfg.data} was prepared again since the run started (its manifest checksum differs).")
    return replace(cfg, **fixed, data_checksum=prepared.checksum)


def epochs_line(data: TokenData, steps: int, batch_size: int) -> str:
    """How much of the data a run of ``steps`` x ``batch_size`` sequences reads; warns past :data:`REPEAT_WARNING`."""
    epochs = data.epochs(steps, batch_size)
    line = (f"this run reads {steps * batch_size * data.seq_len:,} tokens ({steps:,} steps x {batch_size} sequences x "
            f"{data.seq_len}) of {data.tokens:,} distinct training tokens: {epochs:,.2f} epochs")
    if epochs > REPEAT_WARNING:
        warnings.warn(f"firepe: this run reads its {data.tokens:,} training tokens {epochs:,.1f} times; for more "
                      "distinct data, prepare a larger corpus (firepe prepare) and train with --data.", stacklevel=2)
    return line


def training_data(cfg: DataConfig, seq_len: int, run_dir: str | Path | None = None,
                  vocab_size: int | None = None):
    """``(tokenizer, TokenData, description)`` of training. ``run_dir``: a resumed run, whose saved
    tokenizer is used (and must be the prepared folder's); otherwise the tokenizer is built (BPE trained on
    the training split) or taken from the prepared folder."""
    if cfg.data is not None:
        run_tok = load_tokenizer(Path(run_dir), cfg, vocab_size) if run_dir is not None else None
        prepared = open_prepared(cfg, run_tok)
        tok = run_tok or prepared.tokenizer()
        return tok, TokenData(prepared.split("train", cfg.max_train_tokens), seq_len), prepared.describe()
    corpus = load_corpus(cfg)
    tok = load_tokenizer(Path(run_dir), cfg, vocab_size) if run_dir is not None else build_tokenizer(cfg, corpus)
    return tok, TokenData(encoded_stream(corpus.train, tok, cfg.max_train_tokens), seq_len), corpus.describe()


def split_tokens(cfg: DataConfig, tokenizer, split: str, max_tokens: int) -> torch.Tensor:
    """The first ``max_tokens`` tokens of split ``split`` (``train`` or ``validation``) as a 1-D ``int32``
    tensor: documents joined by the end-of-document token, as training reads them."""
    if cfg.data is not None:
        return open_prepared(cfg, tokenizer).split(split).prefix(max_tokens)
    corpus = load_corpus(cfg)
    return encoded_stream(getattr(corpus, split), tokenizer, max_tokens=max_tokens)
