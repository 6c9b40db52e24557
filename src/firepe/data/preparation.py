"""``firepe prepare``: a corpus of any size tokenized once into a prepared folder (format:
:mod:`firepe.data.shards`), read by training with memory that does not grow with it.

Pipeline. Documents are read in the order training would read them (local files sorted, dataset rows
in order) in batches of at most :data:`BATCH_DOCUMENTS` documents or ``batch_chars`` characters. Each
batch is routed to the training and validation splits by the corpus's split rule
(:mod:`firepe.data.corpus`: by file / by document, within files / within documents, or the dataset's
own splits), encoded in one call per split (BPE: ``tokenizers``' ``encode_batch_fast`` on every core,
while a second thread reads the next batch), and appended to the split's open shard. A split's
``max_train_tokens`` / ``max_val_tokens`` cut its stream at exactly that many tokens, as the in-memory
path does.

Durability and resume. A shard is written under a temporary name and closes at the end of the batch
that brings it to ``shard_tokens`` tokens: it is ``fsync``'ed and renamed, and only then is the manifest
rewritten (atomically) to list it, with the source position where the next shard's documents start
(a row index, and for a Hugging Face stream its ``state_dict``). Killed at any moment, the folder holds
complete listed shards and nothing else that is ever read; the same command run again removes what is
not listed, checks what is, and continues from those positions. Because batches and shard boundaries
are a pure function of the documents, the resumed folder is byte for byte the one an uninterrupted run
writes. A finished folder is ``complete``; the same command again verifies every byte and stops.

The BPE (``--tokenizer bpe``) is trained first, on at most ``bpe_sample_chars`` characters of training
documents (default 64 MiB; a corpus with less training text gives the tokenizer the in-memory path
trains). A local corpus larger than that is sampled across all of it (files whose
``crc32(key + "/bpe")`` falls under the sampled fraction); a dataset stream takes its first documents.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ..config import DataConfig, PrepareConfig, corpus_items
from ..runs import RunFolder, fsync_dir, refuse_link, write_json, write_text, writing
from .corpus import NotTextError, cut_point, hf_dataset, hf_text, local_files, read_text, split_key
from .shards import (
    EDGE_BYTES,
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    PreparedData,
    check_shard,
    edges_digest,
    manifest_checksum,
    read_manifest,
)
from .tokenizer import BPETokenizer, ByteTokenizer

__all__ = ["prepare", "BATCH_DOCUMENTS"]

#: documents per encoded batch (or fewer, when ``batch_chars`` is reached first)
BATCH_DOCUMENTS = 1024

_OWN = re.compile(r"(manifest\.json|tokenizer\.json|\.lock|train|validation|\.(manifest|tokenizer)\.json\.tmp-\d+)")
_SHARD = re.compile(r"(\d{6,})\.bin")
_SHARD_TMP = re.compile(r"\.\d{6,}\.bin\.tmp-\d+")


#: the position of a source's first document
_START: dict[str, Any] = {"row": 0, "doc": 0, "state": None}


class _Doc(NamedTuple):
    row: int          # position in the source (file index or dataset row)
    key: str          # split key: relative path, or str(i) of the i-th non-empty dataset document
    text: str | None  # None: skipped (empty, not UTF-8)
    size: int         # progress units (bytes of a file, 1 per row)


# -- sources ------------------------------------------------------------------------------------


class _LocalSource:
    """Local files (``stdlib`` or paths) in reading order."""

    unit = "B"

    def __init__(self, cfg: DataConfig):
        self.files, self.description = local_files(cfg)
        self.sizes = []
        lines = []
        for f, key in self.files:
            try:
                st = f.stat()
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size = mtime = 0
            self.sizes.append(size)
            lines.append(f"{key}\t{size}\t{mtime}")
        self.total = sum(self.sizes)
        self.fingerprint = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()

    def done(self, row: int) -> int:
        return sum(self.sizes[:row])

    def rows(self, pos: dict[str, Any], select=None) -> Iterator[_Doc]:
        for i in range(pos["row"], len(self.files)):
            path, key = self.files[i]
            if select is not None and not select(key):
                continue
            text = read_text(path)
            yield _Doc(i, key, text if text and text.strip() else None, self.sizes[i])

    def position(self, row: int) -> dict[str, Any]:
        return {"row": row, "doc": row, "state": None}


class _HFSource:
    """One split of a streamed Hugging Face dataset; a position holds the row, the count of non-empty
    documents before it (their split keys) and the stream's ``state_dict``."""

    unit = "doc"
    fingerprint = None

    def __init__(self, cfg: DataConfig, ds, split: str, what: str):
        self.cfg, self.split, self.field, self.what = cfg, split, cfg.hf_text_field, what
        self.base, self._fresh = ds[split], True
        self.description = what if split == "train" else f"{what} [{split}]"
        info = getattr(self.base, "info", None)
        splits = getattr(info, "splits", None) or {}
        self.total = getattr(splits.get(split), "num_examples", None) if hasattr(splits, "get") else None
        self._live = None
        self._doc = 0

    def done(self, row: int) -> int:
        return row

    def _open(self):
        """The split as a new stream (the first call takes the one already open; a stream that has had a state
        loaded or been read is not reused)."""
        if self._fresh:
            self._fresh = False
            return self.base
        return hf_dataset(self.cfg)[0][self.split]

    def rows(self, pos: dict[str, Any], select=None) -> Iterator[_Doc]:
        from .corpus import error_cause

        live = self._open()
        if pos.get("state") is not None:
            try:
                live.load_state_dict(pos["state"])
            except Exception:  # another datasets release: skip rows instead
                live = self._open().skip(pos["row"])
        elif pos["row"]:
            live = live.skip(pos["row"])
        self._live, self._doc = live, pos["doc"]
        row = pos["row"]
        try:
            for r in live:
                text = hf_text(r, self.field, self.what)
                key = str(self._doc) if text else ""
                if text:
                    self._doc += 1
                yield _Doc(row, key, text, 1)
                row += 1
        except NotTextError:
            raise
        except Exception as e:  # undecodable or malformed files surface only while streaming
            raise ValueError(f"could not read {self.what} ({error_cause(e)}).") from e

    def position(self, row: int) -> dict[str, Any]:
        """Where the stream stands now, ``row`` rows in (taken while it is read, at a batch's end)."""
        state = None
        if self._live is not None:
            try:
                state = self._live.state_dict()
            except Exception:
                state = None
        return {"row": row, "doc": self._doc, "state": state}


# -- shards ------------------------------------------------------------------------------------


class _ShardWriter:
    """One shard being written under a temporary name (``O_EXCL | O_NOFOLLOW``)."""

    def __init__(self, folder: Path, split: str, index: int, dtype: np.dtype):
        self.split, self.dtype = split, dtype
        self.final = folder / split / f"{index:06d}.bin"
        self.tmp = folder / split / f".{index:06d}.bin.tmp-{os.getpid()}"
        with writing(self.tmp):
            if self.tmp.exists() or self.tmp.is_symlink():
                self.tmp.unlink()
            self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self.sha = hashlib.sha256()
        self.tokens = self.documents = 0
        self.max_id = -1

    def add(self, ids: np.ndarray, documents: int) -> None:
        data = memoryview(np.ascontiguousarray(ids, dtype=self.dtype)).cast("B")
        with writing(self.tmp):
            done = 0
            while done < len(data):
                done += os.write(self.fd, data[done:])
        self.sha.update(data)
        self.tokens += len(ids)
        self.documents += documents
        if len(ids):
            self.max_id = max(self.max_id, int(ids.max()))

    def close(self, nxt: dict[str, Any]) -> dict[str, Any]:
        size = self.tokens * self.dtype.itemsize
        with writing(self.tmp):
            os.fsync(self.fd)
            head = os.pread(self.fd, min(EDGE_BYTES, size), 0)
            tail = os.pread(self.fd, min(EDGE_BYTES, size), max(0, size - EDGE_BYTES))
            os.close(self.fd)
            self.fd = None
            refuse_link(self.final)
            os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return {"file": f"{self.split}/{self.final.name}", "tokens": self.tokens, "documents": self.documents,
                "max_id": self.max_id, "sha256": self.sha.hexdigest(), "edges": edges_digest(size, head + tail),
                "next": nxt}

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.tmp.unlink(missing_ok=True)


@dataclass
class _Split:
    name: str
    cap: int | None
    shards: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    start: dict[str, Any] = field(default_factory=lambda: dict(_START))
    writer: _ShardWriter | None = None
    capped: bool = False
    closed_tokens: int = 0
    closed_documents: int = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.shards.append(entry)
        self.closed_tokens += entry["tokens"]
        self.closed_documents += entry["documents"]

    @property
    def pos(self) -> dict[str, Any]:
        return self.shards[-1]["next"] if self.shards else self.start

    @property
    def tokens(self) -> int:
        return self.closed_tokens + (self.writer.tokens if self.writer else 0)

    def to_json(self) -> dict[str, Any]:
        return {"documents": self.closed_documents, "tokens": self.closed_tokens, "done": self.done,
                "shards": self.shards}


# -- the output folder ---------------------------------------------------------------------------


def _check_out(out: Path, corpus: DataConfig) -> None:
    """Refuse an output that is a file or a link, holds what prepare did not write, or lies in the corpus."""
    if out.is_symlink():
        raise ValueError(f"--out {str(out)!r} is a symbolic link; prepare writes into a real folder (pass its "
                         "target, or another folder).")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is an existing file, not a folder.")
    if corpus.corpus.strip() != "stdlib" and not corpus.corpus.strip().startswith("hf:"):
        target = out.resolve()
        for item in corpus_items(corpus.corpus):
            base = Path(item).resolve()
            if target == base or base in target.parents:
                raise ValueError(f"--out {str(out)!r} lies inside the corpus {item!r}; prepare it into a folder "
                                 "outside the corpus.")
    if not out.is_dir():
        return
    for name in os.listdir(out):
        p = out / name
        if not _OWN.fullmatch(name):
            raise ValueError(f"--out {str(out)!r} holds {name!r}, which firepe prepare did not write; prepare into "
                             "a new or empty folder (nothing was changed).")
        refuse_link(p)
        if name in SPLITS:
            if not p.is_dir():
                raise ValueError(f"{p} is not a folder; prepare into a new folder (nothing was changed).")
            for sub in os.listdir(p):
                if not (_SHARD.fullmatch(sub) or _SHARD_TMP.fullmatch(sub)):
                    raise ValueError(f"{p / sub} was not written by firepe prepare; prepare into a new folder "
                                     "(nothing was changed).")
                refuse_link(p / sub)


def _settings(cfg: DataConfig, pcfg: PrepareConfig) -> dict[str, Any]:
    bpe = cfg.tokenizer == "bpe"
    hf = cfg.corpus.strip().startswith("hf:")
    return {"corpus": cfg.corpus.strip(), "hf_data_files": cfg.hf_data_files, "hf_text_field": cfg.hf_text_field
            if hf else None, "tokenizer": cfg.tokenizer, "bpe_vocab_size": cfg.bpe_vocab_size if bpe else None,
            "bpe_sample_chars": pcfg.bpe_sample_chars if bpe else None, "val_percent": cfg.val_percent,
            "max_train_tokens": cfg.max_train_tokens, "max_val_tokens": pcfg.max_val_tokens,
            "shard_tokens": pcfg.shard_tokens, "batch_chars": pcfg.batch_chars, "batch_documents": BATCH_DOCUMENTS}


# -- the preparation ---------------------------------------------------------------------------


class _Preparation:
    def __init__(self, out: Path, cfg: DataConfig, pcfg: PrepareConfig):
        self.out, self.cfg, self.pcfg = out, cfg, pcfg
        self.settings = _settings(cfg, pcfg)
        self.written_tokens = 0
        self.completed_now = 0

    # manifest ---------------------------------------------------------------------------------
    def _manifest(self, complete: bool) -> dict[str, Any]:
        m = {"format": FORMAT, "version": VERSION, "complete": complete, "settings": self.settings,
             "source": self.source_info, "tokenizer": self.tok_info, "dtype": self.dtype.name,
             "split": {"rule": self.mode, "val_percent": self.cfg.val_percent},
             "splits": {s: self.splits[s].to_json() for s in SPLITS}}
        m["checksum"] = manifest_checksum(m)
        return m

    def _write(self, complete: bool = False) -> None:
        write_json(self.out / MANIFEST, self._manifest(complete))

    # sources ----------------------------------------------------------------------------------
    def _open_sources(self) -> None:
        cfg = self.cfg
        if cfg.corpus.strip().startswith("hf:"):
            ds, what = hf_dataset(cfg)
            if "validation" in ds:
                self.phases = [(_HFSource(cfg, ds, "train", what), ("train",)),
                               (_HFSource(cfg, ds, "validation", what), ("validation",))]
                self.mode = "dataset splits"
            else:
                self.phases = [(_HFSource(cfg, ds, "train", what), SPLITS)]
                self.mode = self._probe_hf(self.phases[0][0])
            self.source_info = {"description": cfg.corpus.strip(), "fingerprint": None}
            return
        src = _LocalSource(cfg)
        self.phases = [(src, SPLITS)]
        self.mode = self._probe_local(src)
        self.source_info = {"description": src.description, "fingerprint": src.fingerprint}

    def _probe_local(self, src: _LocalSource) -> str:
        """``by file`` when some readable file falls on each side of the split, else ``within files``
        (the stdlib is split by file always); ValueError when no file holds text."""
        stdlib = self.cfg.corpus.strip() == "stdlib"
        found = {False: False, True: False}
        for path, key in src.files:
            side = split_key(key, self.cfg.val_percent)
            if found[side] or (found[not side] and stdlib):
                continue
            text = read_text(path)
            if text and text.strip():
                found[side] = True
                if all(found.values()):
                    break
        if not any(found.values()):
            if stdlib:
                raise ValueError(f"no Python standard library sources found under {src.description[7:]}.")
            raise ValueError(f"corpus {self.cfg.corpus!r} has no non-empty UTF-8 text files.")
        return "by file" if all(found.values()) or stdlib else "within files"

    def _probe_hf(self, src: _HFSource) -> str:
        """``by document`` once a non-empty document falls on each side of the split (within the first
        documents, for any real dataset), else ``within documents``; ValueError when no row holds text."""
        found = {False: False, True: False}
        for doc in src.rows(_START):
            if doc.text is not None:
                found[split_key(doc.key, self.cfg.val_percent)] = True
                if all(found.values()):
                    return "by document"
        if not any(found.values()):
            raise ValueError(f"corpus {self.cfg.corpus!r} yielded no text in field {self.cfg.hf_text_field!r}.")
        return "within documents"

    def _route(self, doc: _Doc, feeds: tuple[str, ...]) -> list[tuple[str, str]]:
        if doc.text is None:
            return []
        if self.mode == "dataset splits":
            return [(feeds[0], doc.text)]
        if self.mode in ("by file", "by document"):
            return [("validation" if split_key(doc.key, self.cfg.val_percent) else "train", doc.text)]
        cut = cut_point(doc.text, self.cfg.val_percent)
        return [(s, t) for s, t in (("train", doc.text[:cut]), ("validation", doc.text[cut:])) if t.strip()]

    # tokenizer --------------------------------------------------------------------------------
    def _tokenizer(self, existing: dict[str, Any] | None):
        spec = self.cfg.tokenizer
        path = self.out / "tokenizer.json"
        if existing is not None and existing["identity"] != "byte" and spec == "bpe":
            tok = BPETokenizer.load(path)  # trained by the interrupted run: keep it
            if tok.identity != existing["identity"]:
                raise ValueError(f"{path} is not the tokenizer {self.out / MANIFEST} names; the folder is damaged: "
                                 "delete it and prepare again.")
            return tok, existing.get("trained_on")
        if spec == "byte":
            return ByteTokenizer(), None
        if spec == "bpe":
            texts = self._bpe_sample()
            tok = BPETokenizer.train(texts, self.cfg.bpe_vocab_size)
            return tok, {"documents": len(texts), "characters": sum(map(len, texts))}
        return BPETokenizer.load(spec), None

    def _bpe_sample(self) -> list[str]:
        """Training texts for the BPE: all of them up to ``bpe_sample_chars``; a larger local corpus is sampled
        by file (``crc32(key + "/bpe") < fraction * 2^32``), a stream gives its first documents."""
        limit = self.pcfg.bpe_sample_chars
        src, feeds = self.phases[0]
        select = None
        if isinstance(src, _LocalSource) and src.total > limit:
            bound = max(1, int(limit / src.total * 2**32))
            select = lambda key: zlib.crc32((key + "/bpe").encode()) < bound  # noqa: E731
        texts, chars = [], 0
        for doc in src.rows(_START, select):
            for s, t in self._route(doc, feeds):
                if s == "train" and chars < limit:
                    texts.append(t)
                    chars += len(t)
            if chars >= limit:
                break
        if not texts:
            raise ValueError(f"corpus {self.cfg.corpus!r} yielded no training text to train the BPE on.")
        return texts

    # resume ------------------------------------------------------------------------------------
    def _restore(self, m: dict[str, Any], full: bool = False) -> None:
        """Keep the listed shards that check out (size and edges, with ``full`` every byte; the first bad one
        and every later one of its split are dropped), and remove every file the manifest does not list."""
        for s in SPLITS:
            st = self.splits[s]
            for e in m["splits"][s]["shards"]:
                try:
                    check_shard(self.out, e, self.dtype.itemsize, full=full)
                except ValueError:
                    break
                st.add(e)
            st.done = m["splits"][s]["done"] and len(st.shards) == len(m["splits"][s]["shards"])
        self._remove_unlisted()

    def _remove_unlisted(self) -> None:
        listed = {e["file"] for s in SPLITS for e in self.splits[s].shards}
        for s in SPLITS:
            for name in os.listdir(self.out / s):
                if f"{s}/{name}" not in listed:
                    (self.out / s / name).unlink()

    # the run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        existing = read_manifest(self.out) if (self.out / MANIFEST).exists() else None
        if existing is not None and existing.get("settings") != self.settings:
            old = existing.get("settings") or {}
            diffs = [f"{k} {old.get(k)!r} (folder) != {v!r}" for k, v in self.settings.items() if old.get(k) != v]
            raise ValueError(f"{self.out} holds tokens prepared with other settings ({'; '.join(diffs[:3])}); run the "
                             "command that started it, or prepare into another --out (nothing was changed).")
        repair = False
        if existing is not None and existing.get("complete"):
            try:
                PreparedData(self.out, verify="full").tokenizer()
                return {"manifest": existing, "already": True, "seconds": 0.0, "tokens_per_s": None}
            except ValueError as e:  # a damaged shard: made again from the position before it
                warnings.warn(f"firepe: {str(e).split(';')[0]}; preparing it again from there.", stacklevel=2)
                repair = True
        self._open_sources()
        if existing is not None and existing["source"].get("fingerprint") != self.source_info["fingerprint"]:
            raise ValueError(f"the files of corpus {self.cfg.corpus!r} changed since {self.out} was started; prepare "
                             "into a new --out (or delete it and prepare again).")
        tok, trained_on = self._tokenizer(existing["tokenizer"] if existing else None)
        if existing is not None and existing["tokenizer"]["identity"] != tok.identity:
            raise ValueError(f"{self.out} was started with another tokenizer ({existing['tokenizer']['identity']}) "
                             f"than {self.cfg.tokenizer!r} is now; prepare into another --out.")
        self.tok = tok
        self.dtype = np.dtype("<u2" if tok.vocab_size <= 65536 else "<u4")
        self.tok_info = {"identity": tok.identity, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                         "file": None if tok.identity == "byte" else "tokenizer.json", "trained_on": trained_on}
        self.splits = {"train": _Split("train", self.cfg.max_train_tokens),
                       "validation": _Split("validation", self.pcfg.max_val_tokens)}
        if existing is not None:
            self.mode = existing["split"]["rule"]
        for s in SPLITS:
            with writing(self.out / s):
                refuse_link(self.out / s)
                (self.out / s).mkdir(exist_ok=True)
        if tok.identity != "byte":
            write_text(self.out / "tokenizer.json", tok.tok.to_str(pretty=True))
        if existing is not None:
            self._restore(existing, full=repair)
            self._write()
        else:
            self._remove_unlisted()
            self._write()
        t0 = time.perf_counter()
        self._run_phases()
        for s in SPLITS:
            if not self.splits[s].shards:
                what = "training" if s == "train" else "validation"
                raise ValueError(f"corpus {self.cfg.corpus!r} yielded no {what} text (split {self.mode}, "
                                 f"val_percent {self.cfg.val_percent}); give more text.")
        self._write(complete=True)
        seconds = time.perf_counter() - t0
        return {"manifest": self._manifest(True), "already": False, "seconds": seconds,
                "tokens_per_s": self.written_tokens / seconds if seconds > 0 else None}

    def _run_phases(self) -> None:
        for src, feeds in self.phases:
            todo = [self.splits[s] for s in feeds if not self.splits[s].done]
            if not todo:
                continue
            start = min((st.pos for st in todo), key=lambda p: p["row"])
            self._run_phase(src, feeds, start)

    def _batches(self, src, start: dict[str, Any]) -> Iterator[tuple[list[_Doc], dict[str, Any]]]:
        """``(documents, position after them)``; the position is taken in the reading thread the moment the
        batch is full, before it reads on (a stream's ``state_dict`` is exactly the batch's end)."""
        batch, chars = [], 0
        for doc in src.rows(start):
            batch.append(doc)
            chars += len(doc.text) if doc.text else 0
            if len(batch) >= BATCH_DOCUMENTS or chars >= self.pcfg.batch_chars:
                yield batch, src.position(doc.row + 1)
                batch, chars = [], 0
        if batch:
            yield batch, src.position(batch[-1].row + 1)

    def _run_phase(self, src, feeds: tuple[str, ...], start: dict[str, Any]) -> None:
        name = src.description if len(src.description) < 40 else "..." + src.description[-37:]
        bar = tqdm(total=src.total, initial=src.done(start["row"]), unit=src.unit, unit_scale=True,
                   desc=f"prepare {name}", disable=not self.pcfg.progress, dynamic_ncols=True)
        t0, session_tokens, end = time.perf_counter(), 0, start
        pool = ThreadPoolExecutor(1)  # reads the next batch while this one is encoded and written
        batches = self._batches(src, start)
        try:
            pending = pool.submit(next, batches, None)
            while (item := pending.result()) is not None:
                batch, end = item
                pending = pool.submit(next, batches, None)
                session_tokens += self._add_batch(batch, feeds)
                self._close_full(feeds, end)
                bar.update(sum(d.size for d in batch))
                bar.set_postfix(tok_s=f"{session_tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")
                if all(self.splits[s].done for s in feeds):
                    break
            if not all(self.splits[s].done for s in feeds):  # the source is exhausted
                for s in feeds:
                    st = self.splits[s]
                    if st.writer is not None:
                        self._close(st, end)
                    st.done = True
                self._write()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for s in feeds:
                if self.splits[s].writer is not None:
                    self.splits[s].writer.abort()
                    self.splits[s].writer = None
            bar.close()
        self.written_tokens += session_tokens

    def _add_batch(self, batch: list[_Doc], feeds: tuple[str, ...]) -> int:
        texts: dict[str, list[str]] = {s: [] for s in feeds}
        for doc in batch:
            for s, t in self._route(doc, feeds):
                st = self.splits[s]
                if not st.done and not st.capped and doc.row >= st.pos["row"]:
                    texts[s].append(t)
        added = 0
        for s in feeds:
            st = self.splits[s]
            if not texts[s] or st.capped:
                continue
            ids, lengths = self.tok.encode_docs(texts[s])
            docs = len(lengths)
            if st.cap is not None and st.tokens + len(ids) >= st.cap:
                room = st.cap - st.tokens
                docs = int(np.count_nonzero(np.cumsum(lengths) - lengths < room))
                ids = ids[:room]
                st.capped = True
            if st.writer is None:
                st.writer = _ShardWriter(self.out, s, len(st.shards), self.dtype)
            st.writer.add(ids, docs)
            added += len(ids)
        return added

    def _close(self, st: _Split, nxt: dict[str, Any]) -> None:
        if st.writer.tokens:
            st.add(st.writer.close(nxt))
            self.completed_now += 1
        else:
            st.writer.abort()
        st.writer = None

    def _close_full(self, feeds: tuple[str, ...], nxt: dict[str, Any]) -> None:
        changed = False
        for s in feeds:
            st = self.splits[s]
            if st.writer is not None and (st.writer.tokens >= self.pcfg.shard_tokens or st.capped):
                self._close(st, nxt)
                changed = True
            if st.capped and not st.done:
                st.done = changed = True
        if changed:
            self._write()


def prepare(out: str | Path, cfg: DataConfig | None = None, pcfg: PrepareConfig | None = None) -> dict[str, Any]:
    """Tokenize the corpus of ``cfg`` into the prepared folder ``out`` (new, or one this same call was
    interrupted in: then it continues). Returns ``{"manifest", "already", "seconds", "tokens_per_s"}``.
    ValueError (nothing changed) for a folder holding something else, an empty corpus, a bad tokenizer."""
    cfg = (cfg or DataConfig()).resolved()
    pcfg = pcfg or PrepareConfig()
    if cfg.data is not None:
        raise ValueError("prepare reads a corpus (--corpus), not a prepared folder (--data).")
    if isinstance(out, str) and not out.strip():
        raise ValueError("--out is empty; pass a folder name.")
    out = Path(out)
    _check_out(out, cfg)
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    lock = RunFolder(out, noun="prepared data folder")
    prep = _Preparation(out, cfg, pcfg)
    try:
        lock.lock()
        _check_out(out, cfg)  # again under the lock
        return prep.run()
    except ValueError:
        if created and not any(getattr(prep, "splits", {}).get(s) and prep.splits[s].shards for s in SPLITS):
            lock.unlock()
            shutil.rmtree(out, ignore_errors=True)  # a refused start leaves nothing behind
        raise
    finally:
        lock.unlock()
