"""Corpora read into memory, their train/validation split, and the documents a prepared folder is made from.

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
A Hugging Face dataset with a ``validation`` split keeps its splits; one without is split *by
document* (``crc32(str(i))`` of the ``i``-th non-empty document), or within documents as above.

:func:`load_corpus` reads a corpus into memory -- local corpora up to :data:`MAX_IN_MEMORY_TEXT` bytes
of files, Hugging Face datasets up to ``4 x max_train_tokens`` characters (a warning says when that
stopped early). Larger corpora are prepared once into memory-mapped token shards
(:mod:`firepe.data.preparation`), which read every document through :func:`local_files` and
:func:`hf_dataset` with the same split rules.
"""

from __future__ import annotations

import glob
import os
import sysconfig
import warnings
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CORPUS_HINT, HF_FILE_BUILDERS, DataConfig, corpus_items

__all__ = ["Corpus", "load_corpus", "stdlib_files", "local_files", "hf_dataset", "error_cause", "quiet_hub",
           "split_key", "cut_point", "read_text", "hf_text", "NotTextError", "MAX_IN_MEMORY_TEXT"]

#: bytes of local files :func:`load_corpus` reads into memory (about 9.5 bytes of memory per byte of text,
#: measured); a larger local corpus is refused with a pointer to ``firepe prepare``
MAX_IN_MEMORY_TEXT = 256 << 20

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


def split_key(key: str, val_percent: int) -> bool:
    """True when the document keyed ``key`` (a relative path, or ``str(i)``) belongs to validation:
    ``crc32(key) % 100 < val_percent``."""
    return zlib.crc32(key.encode()) % 100 < val_percent


def _split(items: Iterable[tuple[str, str]], val_percent: int) -> tuple[list[str], list[str]]:
    train, val = [], []
    for key, text in items:
        (val if split_key(key, val_percent) else train).append(text)
    return train, val


def cut_point(text: str, val_percent: int) -> int:
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
    """Each text's tail (:func:`cut_point`) to validation, its head to training; ``head + tail == text``."""
    train, val = [], []
    for text in texts:
        cut = cut_point(text, val_percent)
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


def read_text(path: Path) -> str | None:
    """The file's text, or None when it cannot be read or is not UTF-8 (such files are skipped)."""
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


def local_files(cfg: DataConfig) -> tuple[list[tuple[Path, str]], str]:
    """The files of a local corpus (``stdlib`` or paths) in reading order, each with its split key (the
    path relative to the stdlib root or to the folder given, the file name for a file given), and the
    corpus description; ValueError for a path that does not exist."""
    spec = cfg.corpus.strip()
    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        return [(f, str(f.relative_to(root))) for f in stdlib_files()], f"stdlib:{root}"
    out = []
    for base in (Path(p) for p in corpus_items(spec)):
        if not base.exists():
            raise ValueError(f"corpus path {str(base)!r} does not exist.")
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        out += [(f, f.name if base.is_file() else str(f.relative_to(base))) for f in files]
    return out, cfg.corpus


def _file_bytes(files: list[tuple[Path, str]]) -> int:
    total = 0
    for f, _ in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def _local_corpus(cfg: DataConfig) -> Corpus:
    files, description = local_files(cfg)
    size = _file_bytes(files)
    if size > MAX_IN_MEMORY_TEXT:
        raise ValueError(f"corpus {description!r} holds {size / 2**20:,.0f} MiB of files, more than the "
                         f"{MAX_IN_MEMORY_TEXT >> 20} MiB firepe reads into memory; prepare it once with "
                         f"firepe prepare --corpus ... --out DIR and train with --data DIR.")
    items = [(key, text) for f, key in files if (text := read_text(f)) and text.strip()]
    if cfg.corpus.strip() == "stdlib":
        if not items:
            raise ValueError(f"no Python standard library sources found under {description[len('stdlib:'):]}.")
        train, val = _split(items, cfg.val_percent)
        return Corpus(train, val, description, "by file")
    if not items:
        raise ValueError(f"corpus {description!r} has no non-empty UTF-8 text files.")
    return _split_corpus(items, cfg.val_percent, description)


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


def hf_dataset(cfg: DataConfig):
    """``(IterableDatasetDict, what)`` of an ``hf:`` corpus, streamed; ``what`` names it in errors."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ValueError("corpus 'hf:...' needs the Hugging Face extra: pip install 'firepe[hf]'.") from e
    spec = cfg.corpus.strip()
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
    return ds, what


class NotTextError(ValueError):
    """A dataset row whose text field holds something else than a string."""


def hf_text(row: Any, field: str, what: str) -> str | None:
    """The text of one dataset row (None when empty or missing); :class:`NotTextError` when the field is not text."""
    text = row.get(field)
    if text is not None and not isinstance(text, str):
        raise NotTextError(f"field {field!r} of {what} holds {type(text).__name__}, not text; pick a text field "
                         f"with hf_text_field.")
    return text or None


def _hf_corpus(spec: str, cfg: DataConfig) -> Corpus:
    ds, what = hf_dataset(cfg)
    budget = cfg.max_train_tokens or 50_000_000
    field = cfg.hf_text_field

    def take(split, limit_chars):
        docs, total = [], 0
        try:
            for row in ds[split]:
                text = hf_text(row, field, what)
                if not text:
                    continue
                if total >= limit_chars:  # one more document exists: the corpus was cut
                    if split == "train":
                        warnings.warn(f"firepe: took the first {len(docs):,} documents ({total:,} characters) of "
                                      f"{spec} into memory (4 x max_train_tokens characters) and left the rest; "
                                      "to train on all of it, prepare it once with firepe prepare and use --data.",
                                      stacklevel=4)
                    break
                docs.append(text)
                total += len(text)
        except NotTextError:
            raise
        except Exception as e:  # undecodable or malformed files surface only while streaming
            raise ValueError(f"could not read {what} ({error_cause(e)}).") from e
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
    """The corpus of ``cfg`` read into memory (see the module docstring for its limits)."""
    spec = cfg.corpus.strip()
    if not corpus_items(spec):
        raise ValueError(f"the corpus is empty ({cfg.corpus!r}): {CORPUS_HINT}.")
    if spec.startswith("hf:"):
        return _hf_corpus(spec, cfg)
    return _local_corpus(cfg)
