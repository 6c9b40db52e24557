"""Corpora, tokenizers and packing.

Corpus specs (``DataConfig.corpus``):

* ``"stdlib"`` (default) -- the Python standard library source of the running interpreter, like
  the paper's GitHub set: every ``*.py`` under ``sysconfig`` ``stdlib``, sorted, excluding test
  packages (``test``, ``tests``, ``idle_test``), ``pydoc_data`` and ``site-packages``.
* a path to a text file or a folder (every UTF-8 text file below it, sorted), or several joined by ``,``.
* ``"hf:NAME[:CONFIG]"`` -- Hugging Face ``datasets`` (optional extra ``firepe[hf]``), streamed;
  e.g. ``hf:allenai/c4:en``. ``hf_data_files`` passes local files (``hf:json``, ``hf:text``).

Local corpora are split *by file*: a file goes to validation when ``crc32(relative path) % 100 <
val_percent``, so the split is deterministic and stable when files are added.

Tokenizers: ``byte`` (default; 256 byte values plus an end-of-document token 256) or a Hugging Face
``tokenizers`` BPE (``bpe``: trained locally on the training split; or a ``tokenizer.json`` path).

Packing (Appendix C.1): documents are joined with the end-of-document token into one stream, and
the stream is cut into non-overlapping training sequences, so a document longer than the training
length becomes several sequences.
"""

from __future__ import annotations

import os
import sysconfig
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["DataConfig", "Corpus", "load_corpus", "ByteTokenizer", "BPETokenizer", "build_tokenizer",
           "load_tokenizer", "encode_documents", "TokenData"]

_EXCLUDED_DIRS = {"test", "tests", "idle_test", "pydoc_data", "site-packages", "__pycache__"}


@dataclass
class DataConfig:
    corpus: str = "stdlib"
    tokenizer: str = "byte"          # byte | bpe | path/to/tokenizer.json
    bpe_vocab_size: int = 4096
    val_percent: int = 5
    max_train_tokens: int | None = None   # cap (and the budget pulled from streaming corpora)
    val_tokens: int = 65536          # validation tokens scored at every evaluation length
    hf_data_files: str | None = None
    hf_text_field: str = "text"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Corpus:
    train: list[str]
    validation: list[str]
    description: str


def _split(items: Iterable[tuple[str, str]], val_percent: int) -> tuple[list[str], list[str]]:
    train, val = [], []
    for key, text in items:
        (val if zlib.crc32(key.encode()) % 100 < val_percent else train).append(text)
    return train, val


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
        return data.decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS and not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return sorted(out)


def _local_corpus(paths: list[Path], val_percent: int, description: str) -> Corpus:
    items = []
    for base in paths:
        if not base.exists():
            raise ValueError(f"corpus path {str(base)!r} does not exist.")
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            text = _read_text(f)
            if text and text.strip():
                rel = f.name if base.is_file() else str(f.relative_to(base))
                items.append((rel, text))
    if not items:
        raise ValueError(f"corpus {description!r} has no non-empty UTF-8 text files.")
    train, val = _split(items, val_percent)
    if not val:  # tiny corpora: keep at least one document for validation
        train, val = train[:-1] or train, train[-1:]
    if not train:
        train = val
    return Corpus(train, val, description)


def _hf_corpus(spec: str, cfg: DataConfig) -> Corpus:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ValueError("corpus 'hf:...' needs the Hugging Face extra: pip install 'firepe[hf]'.") from e
    name, _, config = spec[3:].partition(":")
    kwargs: dict[str, Any] = {"streaming": True}
    if cfg.hf_data_files:
        kwargs["data_files"] = cfg.hf_data_files.split(",")
    ds = datasets.load_dataset(name, config or None, **kwargs)
    budget = cfg.max_train_tokens or 50_000_000

    def take(split, limit_chars):
        docs, total = [], 0
        for row in ds[split]:
            text = row.get(cfg.hf_text_field)
            if not text:
                continue
            docs.append(text)
            total += len(text)
            if total >= limit_chars:
                break
        return docs

    train = take("train", budget * 4)
    if "validation" in ds:
        val = take("validation", cfg.val_tokens * 8)
    else:
        train, val = _split(((str(i), t) for i, t in enumerate(train)), cfg.val_percent)
    if not train or not val:
        raise ValueError(f"corpus {spec!r} yielded no text in field {cfg.hf_text_field!r}.")
    return Corpus(train, val, spec)


def load_corpus(cfg: DataConfig) -> Corpus:
    spec = cfg.corpus
    if not spec:
        raise ValueError("the corpus is empty: pass 'stdlib', a file or folder path, or 'hf:NAME[:CONFIG]'.")
    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        items = [(str(f.relative_to(root)), t) for f in stdlib_files() if (t := _read_text(f))]
        if not items:
            raise ValueError(f"no Python standard library sources found under {root}.")
        train, val = _split(items, cfg.val_percent)
        return Corpus(train, val, f"stdlib:{root}")
    if spec.startswith("hf:"):
        return _hf_corpus(spec, cfg)
    return _local_corpus([Path(p) for p in spec.split(",")], cfg.val_percent, spec)


class ByteTokenizer:
    """UTF-8 bytes, plus ``eos_id = 256`` between documents."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

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

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def build_tokenizer(cfg: DataConfig, corpus: Corpus):
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


def load_tokenizer(run_dir: Path, cfg: DataConfig):
    """The tokenizer a run was trained with (``tokenizer.json`` in the run folder for BPE)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(run_dir / "tokenizer.json")


def encode_documents(docs: list[str], tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Documents joined by the end-of-document token: a 1-D ``int32`` stream (truncated to ``max_tokens``)."""
    parts, total = [], 0
    eos = torch.tensor([tokenizer.eos_id], dtype=torch.int32)
    for doc in docs:
        ids = tokenizer.encode_tensor(doc)
        parts += [ids, eos]
        total += len(ids) + 1
        if max_tokens is not None and total >= max_tokens:
            break
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)
    return stream[:max_tokens] if max_tokens is not None else stream


class TokenData:
    """Training sequences cut from the stream: sequence ``n`` is ``stream[n*L : n*L + L + 1]``.

    ``batch(step, batch_size, seed)`` is a pure function of its arguments (seeded permutation per
    epoch), so a resumed run sees the same data order.
    """

    def __init__(self, stream: torch.Tensor, seq_len: int):
        if seq_len < 2:
            raise ValueError(f"the training length must be at least 2 tokens, got {seq_len}.")
        self.stream, self.seq_len = stream, seq_len
        self.num_sequences = (len(stream) - 1) // seq_len
        if self.num_sequences < 1:
            raise ValueError(f"the training corpus has {len(stream)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; use a larger corpus or a shorter --seq-len.")

    def permutation(self, epoch: int, seed: int) -> torch.Tensor:
        key = (epoch, seed)
        if getattr(self, "_perm_key", None) != key:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self._perm, self._perm_key = torch.randperm(self.num_sequences, generator=gen), key
        return self._perm

    def indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Sequence indices of global batch ``step``: consecutive slices of per-epoch permutations."""
        start = step * batch_size
        out, n = [], self.num_sequences
        while len(out) < batch_size:
            epoch, offset = divmod(start + len(out), n)
            out += self.permutation(epoch, seed)[offset: offset + batch_size - len(out)].tolist()
        return torch.tensor(out)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step, batch_size, seed)
        offsets = idx[:, None] * self.seq_len + torch.arange(self.seq_len + 1)
        chunk = self.stream[offsets].long()
        return chunk[:, :-1], chunk[:, 1:]
