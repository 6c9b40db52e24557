"""Packing documents into one token stream (Appendix C.1), and the on-disk cache of packed streams.

Documents are joined with the end-of-document token into one stream, and the stream is cut into
non-overlapping training sequences (:class:`firepe.data.order.TokenData`), so a document longer
than the training length becomes several sequences. :func:`encoded_stream` caches the packed stream
of an in-memory corpus on disk (like nanoGPT's ``train.bin``) keyed by the documents, the tokenizer
and ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import is_int

__all__ = ["encode_documents", "encoded_stream", "token_cache_dir", "check_max_tokens"]


def check_max_tokens(max_tokens) -> None:
    if max_tokens is not None and (not is_int(max_tokens) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or a positive integer, got {max_tokens!r}.")


def encode_documents(docs: list[str], tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Documents joined by the end-of-document token: a 1-D ``int32`` stream (truncated to ``max_tokens``)."""
    check_max_tokens(max_tokens)
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
    check_max_tokens(max_tokens)
    if getattr(tokenizer, "cache_identity", None) is None:
        return encode_documents(docs, tokenizer, max_tokens)
    key = _cache_key(docs, tokenizer, max_tokens)
    path = Path(cache_dir if cache_dir is not None else token_cache_dir()) / f"{key.hex()}.tokens"
    stream = _read_cache(path, key, tokenizer.vocab_size)
    if stream is None:
        stream = encode_documents(docs, tokenizer, max_tokens)
        _write_cache(path, key, stream, tokenizer.vocab_size)
    return stream
