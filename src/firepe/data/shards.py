"""A prepared token folder (``firepe prepare``): its manifest, its checks, and reading its shards.

Layout::

    DIR/manifest.json          what the folder holds (below); written last, atomically, after each shard
    DIR/tokenizer.json         the BPE tokenizer (byte-tokenized folders have none)
    DIR/train/000000.bin ...   the training split's tokens, DIR/validation/... the held-out split's
    DIR/.lock                  held (``flock``) by the process preparing the folder

A shard is a raw little-endian array of ``uint16`` token ids (``uint32`` for vocabularies above
65,536): ``numpy.memmap(path, dtype)`` maps it. Every document is followed by the end-of-document
token, and a split's shards joined in order are one token stream -- the same stream that packing the
same documents in memory gives (:func:`firepe.data.cache.encode_documents`), so sequence ``n`` of the
training split is ``stream[n*L : n*L + L + 1]`` wherever the shard boundaries fall.

``manifest.json`` holds the settings that made it (a rerun of ``prepare`` must give the same), the
source, the tokenizer's identity, the split rule, per split the documents, tokens and per shard its
file, tokens, documents, largest id, ``sha256`` and ``edges`` (sha256 of its size and first and last
64 KiB), and ``checksum``: the sha256 of everything else, so an edited manifest is refused.

Opening a folder (:class:`PreparedData`) checks the manifest's checksum and format, that the folder is
complete, and every shard's size and ``edges`` ("quick": a few reads per shard, whatever its size);
``verify="full"`` reads every byte against ``sha256`` (``firepe prepare`` on a finished folder does). The
reader refuses a window holding an id past the vocabulary, which a damaged middle of a shard shows as.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .tokenizer import BPETokenizer, ByteTokenizer

__all__ = ["PreparedData", "ShardedTokens", "MANIFEST", "FORMAT", "VERSION", "manifest_checksum", "edges_digest",
           "EDGE_BYTES", "SPLITS", "is_prepared", "read_manifest"]

MANIFEST = "manifest.json"
FORMAT = "firepe-prepared-tokens"
VERSION = 1
SPLITS = ("train", "validation")
EDGE_BYTES = 1 << 16
#: open shard files kept by one reader (least recently used closed first)
OPEN_FILES = 64


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its ``checksum`` key, as canonical JSON (sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_edges(fd: int, size: int) -> bytes:
    head = os.pread(fd, min(EDGE_BYTES, size), 0)
    tail = os.pread(fd, min(EDGE_BYTES, size), max(0, size - EDGE_BYTES))
    return head + tail


def edges_digest(size: int, edges: bytes) -> str:
    """The ``edges`` checksum of a shard: sha256 of its size (8 bytes) and its first and last 64 KiB."""
    return hashlib.sha256(size.to_bytes(8, "little") + edges).hexdigest()


def is_prepared(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a prepared manifest (complete or not)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, refusing links and anything but a regular file."""
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; a prepared folder holds regular files only.")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ValueError(f"{path} is missing; the prepared folder is damaged: run the firepe prepare command "
                         "again (or prepare into a new folder).") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file; the prepared folder is damaged.")
    return fd


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder`` after its checksum and format checks (complete or not)."""
    path = folder / MANIFEST
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > 256 << 20:
            raise ValueError(f"{path} is {size:,} bytes, not a firepe manifest.")
        raw = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the prepared folder is damaged.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a firepe prepared-data manifest (format {FORMAT!r}).")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path} has format version {manifest.get('version')!r}; this firepe reads version "
                         f"{VERSION}: prepare the corpus again with this firepe.")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise ValueError(f"{path} was edited or damaged (its checksum does not match its content); prepare the "
                         "corpus again (firepe prepare into a new folder).")
    return manifest


def _check_shape(manifest: dict[str, Any], path: Path) -> None:
    """The fields the reader relies on have the right types (after the checksum, this guards old bugs)."""
    tok = manifest.get("tokenizer")
    splits = manifest.get("splits")
    ok = (isinstance(tok, dict) and isinstance(tok.get("vocab_size"), int) and isinstance(tok.get("eos_id"), int)
          and isinstance(tok.get("identity"), str) and manifest.get("dtype") in ("uint16", "uint32")
          and isinstance(splits, dict) and all(isinstance(splits.get(s), dict) for s in SPLITS))
    if ok:
        for s in SPLITS:
            shards = splits[s].get("shards")
            ok = ok and isinstance(shards, list) and all(
                isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("tokens"), int)
                and e["tokens"] >= 0 and isinstance(e.get("max_id"), int) and isinstance(e.get("sha256"), str)
                and isinstance(e.get("edges"), str) for e in shards)
    if not ok:
        raise ValueError(f"{path} lacks fields a prepared folder needs; prepare the corpus again.")


def shard_path(folder: Path, entry: dict[str, Any]) -> Path:
    """The shard file of a manifest entry, which must name a file inside the folder's split folders."""
    rel = Path(entry["file"])
    if rel.is_absolute() or len(rel.parts) != 2 or rel.parts[0] not in SPLITS or rel.name.startswith("."):
        raise ValueError(f"{folder / MANIFEST} names shard {entry['file']!r}, not a file of {', '.join(SPLITS)}/.")
    return folder / rel


def check_shard(folder: Path, entry: dict[str, Any], itemsize: int, full: bool) -> None:
    """ValueError naming the shard unless its size and ``edges`` (and with ``full`` its sha256) match."""
    path = shard_path(folder, entry)
    refuse_link_dir(path.parent)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        want = entry["tokens"] * itemsize
        if size != want:
            raise ValueError(f"{path} is {size:,} bytes but the manifest says {want:,} ({entry['tokens']:,} tokens); "
                             "the shard is truncated or replaced: run the firepe prepare command again.")
        if edges_digest(size, _read_edges(fd, size)) != entry["edges"]:
            raise ValueError(f"{path} does not hold the tokens the manifest lists (another shard's, or damaged); "
                             "run the firepe prepare command again.")
        if full:
            h, pos = hashlib.sha256(), 0
            while pos < size:
                block = os.pread(fd, min(1 << 24, size - pos), pos)
                if not block:
                    break
                h.update(block)
                pos += len(block)
            if h.hexdigest() != entry["sha256"]:
                raise ValueError(f"{path} is damaged (its sha256 differs from the manifest's); run the firepe "
                                 "prepare command again.")
    finally:
        os.close(fd)


def refuse_link_dir(path: Path) -> None:
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; a prepared folder holds regular files and folders only.")


class ShardedTokens:
    """One split of a prepared folder as a token stream: ``len()`` and ``read(start, stop)``.

    Windows are read with ``os.pread`` (a window may span two shards), so memory does not grow with
    the data read; at most :data:`OPEN_FILES` shard files are open at once. ``max_tokens`` keeps the
    first tokens only. Every window is checked against the vocabulary.
    """

    def __init__(self, folder: Path, split: str, entries: list[dict[str, Any]], dtype: str, vocab_size: int,
                 max_tokens: int | None = None):
        self.folder, self.split, self.vocab_size = folder, split, vocab_size
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.paths = [shard_path(folder, e) for e in entries]
        sizes = np.array([e["tokens"] for e in entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.starts[-1])
        self.length = total if max_tokens is None else min(total, max_tokens)
        self._fds: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def _fd(self, i: int) -> int:
        fd = self._fds.pop(i, None)
        if fd is None:
            fd = _open_regular(self.paths[i])
            if len(self._fds) >= OPEN_FILES:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[i] = fd
        return fd

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` (``0 <= start <= stop <= len``) as an array of the folder's dtype."""
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"window [{start}, {stop}) is outside the {self.length} tokens of {self.split}.")
        out = np.empty(stop - start, dtype=self.dtype)
        buf = memoryview(out).cast("B")
        item = self.dtype.itemsize
        pos = start
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < stop:
            n = min(stop, int(self.starts[i + 1])) - pos
            want = n * item
            got = os.preadv(self._fd(i), [buf[(pos - start) * item:(pos - start) * item + want]],
                            (pos - int(self.starts[i])) * item)
            if got != want:
                raise ValueError(f"{self.paths[i]} is shorter than the manifest says; the prepared folder is "
                                 "damaged: run the firepe prepare command again.")
            pos += n
            i += 1
        if len(out) and int(out.max()) >= self.vocab_size:
            bad = int(np.argmax(out >= self.vocab_size))
            raise ValueError(f"{self.folder} holds token id {int(out[bad])} at position {start + bad:,} of its "
                             f"{self.split} split, past the vocabulary of {self.vocab_size}; the data is damaged: "
                             "prepare it again.")
        return out

    def prefix(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` tokens (all when None) as an ``int32`` tensor in memory."""
        n = self.length if n is None else min(n, self.length)
        return torch.from_numpy(self.read(0, n).astype(np.int32))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


class PreparedData:
    """An opened, checked prepared folder (see the module docstring)."""

    def __init__(self, path: str | Path, verify: str = "quick"):
        if verify not in ("quick", "full"):
            raise ValueError(f"verify must be 'quick' or 'full', got {verify!r}.")
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"prepared data folder {str(self.path)!r} does not exist; make it with firepe prepare.")
        if not self.path.is_dir():
            raise ValueError(f"--data {str(self.path)!r} is a file, not a folder made by firepe prepare.")
        if not (self.path / MANIFEST).exists() and not (self.path / MANIFEST).is_symlink():
            raise ValueError(f"{str(self.path)!r} holds no {MANIFEST}; it is not a folder made by firepe prepare.")
        m = read_manifest(self.path)
        _check_shape(m, self.path / MANIFEST)
        if not m.get("complete"):
            done = sum(len(m["splits"][s]["shards"]) for s in SPLITS)
            raise ValueError(f"{self.path} is not completely prepared ({done} shards so far); run the same firepe "
                             "prepare command again to finish it.")
        self.manifest = m
        self.vocab_size = m["tokenizer"]["vocab_size"]
        self.itemsize = np.dtype(m["dtype"]).itemsize
        for s in SPLITS:
            for e in m["splits"][s]["shards"]:
                if e["max_id"] >= self.vocab_size:
                    raise ValueError(f"{shard_path(self.path, e)} holds id {e['max_id']}, past the tokenizer's "
                                     f"vocabulary of {self.vocab_size}; the folder is damaged: prepare it again.")
                check_shard(self.path, e, self.itemsize, full=verify == "full")

    @property
    def checksum(self) -> str:
        return self.manifest["checksum"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.manifest["settings"]

    def tokens(self, split: str) -> int:
        return sum(e["tokens"] for e in self.manifest["splits"][split]["shards"])

    def tokenizer(self):
        """The folder's tokenizer (ValueError when ``tokenizer.json`` is not the one the manifest names)."""
        info = self.manifest["tokenizer"]
        if info["identity"] == "byte":
            tok = ByteTokenizer()
        else:
            path = self.path / "tokenizer.json"
            if path.is_symlink():
                raise ValueError(f"{path} is a symbolic link; a prepared folder holds regular files only.")
            tok = BPETokenizer.load(path)
        if tok.identity != info["identity"] or tok.vocab_size != info["vocab_size"] or tok.eos_id != info["eos_id"]:
            raise ValueError(f"{self.path / 'tokenizer.json'} is not the tokenizer the shards were made with "
                             f"({info['identity']}); the folder is damaged: prepare it again.")
        return tok

    def split(self, name: str, max_tokens: int | None = None) -> ShardedTokens:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}.")
        return ShardedTokens(self.path, name, self.manifest["splits"][name]["shards"], self.manifest["dtype"],
                             self.vocab_size, max_tokens)

    def describe(self) -> str:
        """One line for logs: the source, the split and each split's documents and tokens."""
        m = self.manifest
        parts = [f"{m['splits'][s]['documents']:,} {s} documents ({self.tokens(s):,} tokens, "
                 f"{len(m['splits'][s]['shards'])} shards)" for s in SPLITS]
        return (f"prepared data {self.path} (corpus {m['source']['description']}, tokenizer "
                f"{m['tokenizer']['identity'][:24]}, split {m['split']['rule']}): {' / '.join(parts)}")
