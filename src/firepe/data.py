"""Corpora, tokenizers, packing and the token-stream cache.

Corpus specs (``DataConfig.corpus``):

* ``"stdlib"`` (default) -- the Python standard library source of the running interpreter, like
  the paper's GitHub set: every ``*.py`` under ``sysconfig`` ``stdlib``, sorted, excluding test
  packages (``test``, ``tests``, ``idle_test``), ``pydoc_data`` and ``site-packages``.
* a path to a text file or a folder (every UTF-8 text file below it, sorted), or several joined by ``,``
  (empty items such as a trailing comma are ignored).
* ``"hf:NAME[:CONFIG]"`` -- Hugging Face ``datasets`` (optional extra ``firepe[hf]``), streamed;
  e.g. ``hf:allenai/c4:en``. The file builders (``hf:json``, ``hf:text``, ``hf:csv``, ``hf:parquet``, ...)
  need ``hf_data_files``: local files or glob patterns joined by ``,``.

Splits (``Corpus.split``): local corpora are split *by file*: a file goes to validation when
``crc32(relative path) % 100 < val_percent``, so the split is deterministic and stable when files are
added. When that leaves the training or the validation part empty (one file, a few files), the split
is *within files*: the last ``val_percent`` percent of each file's characters, cut at a line start
(at a space for a single-line file), is validation and the rest training, so the two never overlap.

Tokenizers: ``byte`` (default; 256 byte values plus an end-of-document token 256) or a Hugging Face
``tokenizers`` BPE (``bpe``: trained locally on the training split; or a ``tokenizer.json`` path).

Packing (Appendix C.1): documents are joined with the end-of-document token into one stream, and
the stream is cut into non-overlapping training sequences, so a document longer than the training
length becomes several sequences. ``encoded_stream`` caches the packed stream on disk (like nanoGPT's
``train.bin``) keyed by the documents, the tokenizer and ``max_tokens``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
import sysconfig
import uuid
import warnings
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import CORPUS_HINT, HF_FILE_BUILDERS, DataConfig, corpus_items, is_int

__all__ = ["DataConfig", "Corpus", "load_corpus", "ByteTokenizer", "BPETokenizer", "build_tokenizer",
           "load_tokenizer", "encode_documents", "encoded_stream", "token_cache_dir", "EpochOrder", "TokenData"]

_EXCLUDED_DIRS = {"test", "tests", "idle_test", "pydoc_data", "site-packages", "__pycache__"}


@dataclass
class Corpus:
    train: list[str]
    validation: list[str]
    description: str
    split: str = "by file"   # by file | within files | by document | within documents | dataset splits

    def describe(self) -> str:
        """One line for logs: documents and characters per part, and how they were split."""
        chars = [sum(map(len, part)) for part in (self.train, self.validation)]
        return (f"corpus {self.description}: {len(self.train)} training / {len(self.validation)} validation "
                f"documents ({chars[0]:,} / {chars[1]:,} characters), split {self.split}")


def _split(items: Iterable[tuple[str, str]], val_percent: int) -> tuple[list[str], list[str]]:
    train, val = [], []
    for key, text in items:
        (val if zlib.crc32(key.encode()) % 100 < val_percent else train).append(text)
    return train, val


def _cut(text: str, val_percent: int) -> int:
    """Where ``text``'s validation tail starts: the line start nearest ``val_percent``% of its characters from
    the end, keeping text other than whitespace on both sides (one line is cut at a space, else anywhere)."""
    lead, n = len(text) - len(text.lstrip()), len(text.rstrip())
    if n <= lead:  # only whitespace
        return 0
    target = max(lead + 1, n - max(1, (n - lead) * val_percent // 100))
    before, after = text.rfind("\n", 0, target) + 1, text.find("\n", target) + 1
    starts = [c for c in (before, after) if lead < c < n]
    if starts:
        return min(starts, key=lambda c: abs(c - target))
    space = text.rfind(" ", lead + 1, target)
    return space + 1 if space > lead else target


def _split_within(texts: list[str], val_percent: int) -> tuple[list[str], list[str]]:
    """Each text's tail (``_cut``) to validation, its head to training; ``head + tail == text``."""
    train, val = [], []
    for text in texts:
        cut = _cut(text, val_percent)
        if text[:cut].strip():
            train.append(text[:cut])
        if text[cut:].strip():
            val.append(text[cut:])
    return train, val


def _split_corpus(items: list[tuple[str, str]], val_percent: int, description: str) -> Corpus:
    """By file (``_split``) when both parts are non-empty, else within files (``_split_within``)."""
    train, val = _split(items, val_percent)
    if train and val:
        return Corpus(train, val, description, "by file")
    train, val = _split_within([text for _, text in items], val_percent)
    if not train or not val:
        raise ValueError(f"corpus {description!r} is too small to hold out {val_percent}% for validation; "
                         f"give more text.")
    return Corpus(train, val, description, "within files")


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
    return _split_corpus(items, val_percent, description)


def _hf_data_files(cfg: DataConfig, builder: bool) -> list[str] | None:
    """``hf_data_files`` as a list; for a file builder every path must be a file and every glob must match."""
    files = corpus_items(cfg.hf_data_files or "")
    if builder:
        for f in files:
            if any(c in f for c in "*?["):
                if not any(os.path.isfile(m) for m in glob.glob(f, recursive=True)):
                    raise ValueError(f"hf_data_files pattern {f!r} matches no file.")
            elif os.path.isdir(f):
                raise ValueError(f"hf_data_files item {f!r} is a folder; give files or a glob such as '{f}/*.txt'.")
            elif not os.path.isfile(f):
                raise ValueError(f"hf_data_files file {f!r} does not exist.")
    return files or None


def error_cause(e: BaseException) -> str:
    """``ValueError: first line`` of an exception (at most 300 characters), for one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else 'no message'}"


@contextmanager
def quiet_hub():
    """Silence the retry/warning logs of datasets and huggingface_hub (their failure becomes one line)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "datasets", "fsspec", "urllib3")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _hf_corpus(spec: str, cfg: DataConfig) -> Corpus:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ValueError("corpus 'hf:...' needs the Hugging Face extra: pip install 'firepe[hf]'.") from e
    name, _, config = spec[3:].partition(":")
    data_files = _hf_data_files(cfg, name in HF_FILE_BUILDERS)
    files = data_files or []
    what = (f"the {name} files {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
            if name in HF_FILE_BUILDERS else f"Hugging Face dataset {spec[3:]!r}")
    kwargs: dict[str, Any] = {"streaming": True}
    if data_files:
        kwargs["data_files"] = data_files
    try:
        with quiet_hub():
            ds = datasets.load_dataset(name, config or None, **kwargs)
    except Exception as e:  # network, hub, builder and file errors of datasets / huggingface_hub
        raise ValueError(f"could not load {what} ({error_cause(e)}).") from e
    if "train" not in ds:
        raise ValueError(f"{what} has no 'train' split; its splits: {', '.join(ds) or 'none'}.")
    budget = cfg.max_train_tokens or 50_000_000
    field = cfg.hf_text_field

    def take(split, limit_chars):
        docs, total, bad = [], 0, None
        try:
            for row in ds[split]:
                text = row.get(field)
                if text is not None and not isinstance(text, str):
                    bad = type(text).__name__
                    break
                if not text:
                    continue
                docs.append(text)
                total += len(text)
                if total >= limit_chars:
                    break
        except Exception as e:  # undecodable or malformed files surface only while streaming
            raise ValueError(f"could not read {what} ({error_cause(e)}).") from e
        if bad:
            raise ValueError(f"field {field!r} of {what} holds {bad}, not text; pick a text field with hf_text_field.")
        return docs

    train = take("train", budget * 4)
    if "validation" in ds:
        val = take("validation", cfg.val_tokens * 8)
        if not train or not val:
            raise ValueError(f"corpus {spec!r} yielded no text in field {field!r}.")
        return Corpus(train, val, spec, "dataset splits")
    if not train:
        raise ValueError(f"corpus {spec!r} yielded no text in field {field!r}.")
    corpus = _split_corpus([(str(i), t) for i, t in enumerate(train)], cfg.val_percent, spec)
    corpus.split = {"by file": "by document", "within files": "within documents"}[corpus.split]
    return corpus


def load_corpus(cfg: DataConfig) -> Corpus:
    spec = cfg.corpus.strip()
    if not corpus_items(spec):
        raise ValueError(f"the corpus is empty ({cfg.corpus!r}): {CORPUS_HINT}.")
    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        items = [(str(f.relative_to(root)), t) for f in stdlib_files() if (t := _read_text(f))]
        if not items:
            raise ValueError(f"no Python standard library sources found under {root}.")
        train, val = _split(items, cfg.val_percent)
        return Corpus(train, val, f"stdlib:{root}", "by file")
    if spec.startswith("hf:"):
        return _hf_corpus(spec, cfg)
    return _local_corpus([Path(p) for p in corpus_items(spec)], cfg.val_percent, cfg.corpus)


def _undecodable(text: str, hint: str) -> ValueError | None:
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
            raise _undecodable(text, "only surrogates U+DC80..U+DCFF (escaped bytes) can be encoded") from None

    def encode(self, text: str) -> list[int]:
        return list(self._bytes(text))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(self._bytes(text)), dtype=torch.uint8).to(torch.int32)

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

    @property
    def cache_identity(self) -> str:
        return "bpe:" + self.tok.to_str()

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text).ids
        except TypeError:  # tokenizers refuses strings with lone surrogates
            hint = "the BPE tokenizer needs valid UTF-8 (the byte tokenizer takes any bytes)"
            err = _undecodable(text, hint) if isinstance(text, str) else None
            if err is not None:
                raise err from None
            raise

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


def _check_max_tokens(max_tokens) -> None:
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or a positive integer, got {max_tokens!r}.")


def encode_documents(docs: list[str], tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Documents joined by the end-of-document token: a 1-D ``int32`` stream (truncated to ``max_tokens``)."""
    _check_max_tokens(max_tokens)
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


# Token cache file: a 64-byte header (magic, bytes per token, crc32 of the payload, token count, the
# sha256 key), then the tokens as little-endian uint16 (vocabularies up to 65536) or int32.
_CACHE_MAGIC = b"FPTOKv1\0"
_CACHE_HEADER = struct.Struct("<8sIIQ32s8x")


def token_cache_dir() -> Path:
    """``$FIREPE_CACHE/tokens`` (default ``~/.cache/firepe/tokens``; the FIRE kernel cache is its parent)."""
    return Path(os.environ.get("FIREPE_CACHE") or Path.home() / ".cache" / "firepe") / "tokens"


def _cache_key(docs: list[str], tokenizer, max_tokens: int | None) -> bytes:
    """sha256 over the format, the tokenizer, ``max_tokens`` and every document (length-prefixed UTF-8)."""
    h = hashlib.sha256(_CACHE_MAGIC)
    ident = tokenizer.cache_identity.encode("utf-8", "surrogatepass")
    h.update(struct.pack("<qqQ", tokenizer.eos_id, -1 if max_tokens is None else max_tokens, len(ident)))
    h.update(ident)
    for doc in docs:
        b = doc.encode("utf-8", "surrogatepass")
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.digest()


def _read_cache(path: Path, key: bytes, vocab_size: int) -> torch.Tensor | None:
    """The cached stream, or None when the file is missing, truncated, corrupt or for another key."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _CACHE_HEADER.size:
                return None
            magic, width, crc, count, file_key = _CACHE_HEADER.unpack(f.read(_CACHE_HEADER.size))
            if (magic, file_key) != (_CACHE_MAGIC, key) or width not in (2, 4) \
                    or size != _CACHE_HEADER.size + width * count:
                return None
            buf = bytearray(width * count)
            if f.readinto(buf) != len(buf) or zlib.crc32(buf) != crc:
                return None
    except OSError:
        return None
    ids = np.frombuffer(buf, dtype="<u2" if width == 2 else "<i4").astype(np.int32)
    stream = torch.from_numpy(ids)
    if count and not (0 <= int(stream.min()) and int(stream.max()) < vocab_size):
        return None
    return stream


def _write_cache(path: Path, key: bytes, stream: torch.Tensor, vocab_size: int) -> None:
    """Atomic write: a per-process temporary file, fsync, then ``os.replace``; failures only warn."""
    if len(stream) and not (0 <= int(stream.min()) and int(stream.max()) < vocab_size):
        return  # ids outside the vocabulary would not survive the narrow layout: not cached
    width = 2 if vocab_size <= 65536 else 4
    payload = stream.numpy().astype("<u2" if width == 2 else "<i4").tobytes()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_CACHE_HEADER.pack(_CACHE_MAGIC, width, zlib.crc32(payload), len(stream), key))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"firepe: could not write the token cache {path} ({e}); continuing without it.",
                      stacklevel=3)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def encoded_stream(docs: list[str], tokenizer, max_tokens: int | None = None,
                   cache_dir: str | Path | None = None) -> torch.Tensor:
    """``encode_documents(docs, tokenizer, max_tokens)``, read from / written to the token cache.

    The cache file is ``cache_dir/<sha256>.tokens`` (``cache_dir`` defaults to ``token_cache_dir()``), keyed by
    the documents, the tokenizer (``cache_identity``: its JSON for BPE) and ``max_tokens``; the stream read
    back is bit-identical to encoding. A missing, truncated or corrupt file is re-encoded and rewritten.
    Tokenizers whose ``cache_identity`` is None (the byte tokenizer) are encoded without the cache.
    """
    _check_max_tokens(max_tokens)
    if getattr(tokenizer, "cache_identity", None) is None:
        return encode_documents(docs, tokenizer, max_tokens)
    key = _cache_key(docs, tokenizer, max_tokens)
    path = Path(cache_dir if cache_dir is not None else token_cache_dir()) / f"{key.hex()}.tokens"
    stream = _read_cache(path, key, tokenizer.vocab_size)
    if stream is None:
        stream = encode_documents(docs, tokenizer, max_tokens)
        _write_cache(path, key, stream, tokenizer.vocab_size)
    return stream


class EpochOrder:
    """The data order of training: ``num_sequences`` items visited in a seeded permutation per epoch.

    ``indices(step, batch_size, seed)`` is a pure function of its arguments, so a resumed run sees
    the same data order. Subclasses set ``num_sequences``.
    """

    num_sequences: int

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


class TokenData(EpochOrder):
    """Training sequences cut from the stream: sequence ``n`` is ``stream[n*L : n*L + L + 1]``.

    ``batch(step, batch_size, seed)`` is a pure function of its arguments (seeded permutation per
    epoch), so a resumed run sees the same data order.
    """

    def __init__(self, stream: torch.Tensor, seq_len: int):
        if not is_int(seq_len) or seq_len < 2:
            raise ValueError(f"the training length must be at least 2 tokens, got {seq_len!r}.")
        if not isinstance(stream, torch.Tensor) or stream.dim() != 1 or stream.is_floating_point():
            raise ValueError(f"the token stream must be a 1-D integer tensor, got "
                             f"{getattr(stream, 'shape', type(stream).__name__)} {getattr(stream, 'dtype', '')}.")
        self.stream, self.seq_len = stream, seq_len
        self.num_sequences = (len(stream) - 1) // seq_len
        if self.num_sequences < 1:
            raise ValueError(f"the training corpus has {len(stream)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; use a larger corpus or a shorter --seq-len.")

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(step, batch_size, seed)
        offsets = idx[:, None] * self.seq_len + torch.arange(self.seq_len + 1)
        chunk = self.stream[offsets].long()
        return chunk[:, :-1], chunk[:, 1:]
