"""Tokenizers: bytes (257 ids) or a Hugging Face ``tokenizers`` byte-level BPE, and the run's own.

Both encode one text (``encode``, ``encode_tensor``) and many at once (``encode_docs``: every text
followed by the end-of-document token, as one array -- the BPE encodes the batch on every core with
``tokenizers``' ``encode_batch_fast``). ``identity`` names a tokenizer exactly (``"byte"``, or
``"bpe:sha256:<hash of its JSON>"``): what a prepared folder and a run are checked against.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig

__all__ = ["ByteTokenizer", "BPETokenizer", "build_tokenizer", "load_tokenizer", "undecodable"]


def undecodable(text: str, hint: str) -> ValueError | None:
    """The error for a string holding a lone surrogate (what Python makes of invalid UTF-8 in argv or files)."""
    i = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if i is None:
        return None
    return ValueError(f"the text holds an undecodable character {text[i]!r} at position {i} "
                      f"(bytes that are not UTF-8); {hint}.")


class ByteTokenizer:
    """UTF-8 bytes, plus ``eos_id = 256`` between documents.

    Undecodable input bytes that Python keeps as lone surrogates (``"\\udcff"`` from ``surrogateescape``,
    as in ``sys.argv``) are encoded back to the original byte; other lone surrogates are a ``ValueError``.
    """

    vocab_size = 257
    eos_id = 256
    cache_identity = None  # not cached: reading 2 bytes a token back is about as slow as encoding

    def _bytes(self, text: str) -> bytes:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise undecodable(text, "only surrogates U+DC80..U+DCFF (escaped bytes) can be encoded") from None

    def encode(self, text: str) -> list[int]:
        return list(self._bytes(text))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(self._bytes(text)), dtype=torch.uint8).to(torch.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    identity = "byte"

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)``: ``uint16`` ids of every text, each followed by ``eos_id``, and each text's
        token count (its ``eos_id`` included)."""
        parts = [self._bytes(t) for t in texts]
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        flat = np.frombuffer(b"".join(parts), dtype=np.uint8)
        return np.insert(flat.astype(np.uint16), np.cumsum(sizes), np.uint16(self.eos_id)), sizes + 1

    def save(self, path: Path) -> None:
        pass


class BPETokenizer:
    """A Hugging Face ``tokenizers`` byte-level BPE; the end-of-document token is ``<|endoftext|>``."""

    EOS = "<|endoftext|>"

    def __init__(self, tok):
        self.tok = tok
        eos = tok.token_to_id(self.EOS)
        if eos is None:
            raise ValueError(f"tokenizer has no {self.EOS} token; train it with firepe or add the token.")
        self.eos_id = eos
        self.vocab_size = tok.get_vocab_size()

    @classmethod
    def train(cls, docs: list[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(docs, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise ValueError(f"cannot read tokenizer {str(path)!r}: {e}") from None

    @property
    def cache_identity(self) -> str:
        return "bpe:" + self.tok.to_str()

    @property
    def identity(self) -> str:
        return "bpe:sha256:" + hashlib.sha256(self.tok.to_str().encode()).hexdigest()

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)``: ``uint32`` ids of every text (``encode_batch_fast``, on every core), each
        followed by ``eos_id``, and each text's token count (its ``eos_id`` included)."""
        try:
            encodings = self.tok.encode_batch_fast(texts)
        except TypeError:  # lone surrogates: name the first such text
            for text in texts:
                self.encode(text)
            raise
        ids = [e.ids for e in encodings]
        lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
        out = np.empty(int(lengths.sum()), dtype=np.uint32)
        ends = np.cumsum(lengths)
        out[ends - 1] = self.eos_id
        for x, end in zip(ids, ends.tolist()):
            out[end - 1 - len(x): end - 1] = x
        return out, lengths

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text).ids
        except TypeError:  # tokenizers refuses strings with lone surrogates
            hint = "the BPE tokenizer needs valid UTF-8 (the byte tokenizer takes any bytes)"
            err = undecodable(text, hint) if isinstance(text, str) else None
            if err is not None:
                raise err from None
            raise

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def build_tokenizer(cfg: DataConfig, corpus):
    """The tokenizer of a new run on an in-memory ``corpus`` (BPE: trained on its training split)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":
        try:
            return BPETokenizer.train(corpus.train, cfg.bpe_vocab_size)
        except ImportError as e:
            raise ValueError("tokenizer 'bpe' needs the extra: pip install 'firepe[hf]'.") from e
    if cfg.tokenizer.endswith(".json"):
        return BPETokenizer.load(cfg.tokenizer)
    raise ValueError(f"unknown tokenizer {cfg.tokenizer!r}; valid: byte, bpe, or a path to tokenizer.json.")


def _refuse_synthetic(run_dir: Path) -> None:
    """A ``firepe synth`` run has a task vocabulary, not a text tokenizer: refuse it where text is needed."""
    path = run_dir / "tokenizer.json"
    if not path.is_file() or path.stat().st_size > 1 << 16:
        return
    try:
        kind = json.loads(path.read_text()).get("type")
    except (ValueError, OSError, AttributeError):
        return
    if kind == "synthetic":
        raise ValueError(f"{run_dir} is a firepe synth run (its vocabulary is a synthetic task's, not text); "
                         "continue or score it by running the same firepe synth command again.")


def load_tokenizer(run_dir: Path, cfg: DataConfig, vocab_size: int | None = None):
    """The tokenizer a run was trained with (``tokenizer.json`` in the run folder for BPE);
    ``vocab_size``: the run's model vocabulary, checked against the tokenizer's."""
    _refuse_synthetic(Path(run_dir))
    tok = ByteTokenizer() if cfg.tokenizer == "byte" else BPETokenizer.load(Path(run_dir) / "tokenizer.json")
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise ValueError(f"{Path(run_dir) / 'tokenizer.json'} has {tok.vocab_size} tokens but the run's model has "
                         f"{vocab_size}; the run folder holds another tokenizer.")
    return tok

