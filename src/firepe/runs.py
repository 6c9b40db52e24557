"""The run folder: layout, lock, durable writes, the metrics log and schema checks of config I/O.

Layout::

    RUN/config.json                   {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}
    RUN/tokenizer.json                (BPE tokenizers only)
    RUN/metrics.jsonl                 one JSON object per logged step
    RUN/checkpoints/step-000123/      model.safetensors, optimizer.safetensors, optimizer.json,
                                      rng.safetensors, state.json (see :mod:`firepe.checkpoint`)
    RUN/checkpoints/latest            name of the newest complete checkpoint folder
    RUN/.lock                         held (``flock``) by the process training in the folder
    RUN/tensorboard/, RUN/wandb/      training logs of ``--log-to`` (see :mod:`firepe.tracking`)
    RUN/tracking.json                 the W&B run id of ``--log-to wandb`` (``--resume`` continues it)

Every file is written under a per-process temporary name, flushed and ``fsync``'ed, renamed over
its final name, and the folder is ``fsync``'ed, so neither a killed process nor a power loss leaves
a torn file behind. Whatever is read back is checked against the dataclass fields it claims to
hold; a damaged file is named in one ``ValueError`` sentence, never loaded half-way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import DataConfig, GPTConfig, TrainConfig, check_fields, dataclass_from_dict

__all__ = ["RunFolder", "RunWriteError", "error_line", "write_json", "write_text", "read_json", "fsync_dir",
           "MetricsLog", "STEP_DIR", "refuse_link", "refuse_links_below", "locked_output"]

STEP_DIR = re.compile(r"step-(\d{7,})")  # checkpoint folders: step-0000123 (7 digits or more)


class RunWriteError(ValueError):
    """A file could not be written (full disk, read-only folder, file-size limit): names path and cause."""


def error_line(e: BaseException) -> str:
    """The first line of ``e``'s message, or its type name when it has none (for one-line errors)."""
    return (str(e).splitlines() or [type(e).__name__])[0]


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn ``OSError`` (and the I/O errors of safetensors) raised while writing ``path`` into one
    :class:`RunWriteError` sentence naming the path and the cause."""
    try:
        yield
    except RunWriteError:
        raise
    except Exception as e:
        if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
            raise
        if isinstance(e, OSError) and e.strerror:
            cause = e.strerror
        else:
            cause = error_line(e)
        raise RunWriteError(f"cannot write {path}: {cause}.") from None


def refuse_link(path: Path) -> None:
    """:class:`RunWriteError` when ``path`` is a symbolic link: firepe never reads or writes through a link
    inside its folders (a planted link would turn a resume into "edit any file this user can write")."""
    if Path(path).is_symlink():
        raise RunWriteError(f"{path} is a symbolic link; firepe reads and writes only regular files and folders "
                            "inside its folders (remove the link).")


def refuse_links_below(root: Path, path: Path) -> None:
    """:class:`RunWriteError` when ``root`` (an output folder firepe writes: a sweep, a run) or any folder from it
    down to ``path`` (``path`` included) is a symbolic link: a planted link at the label or seed level would
    send a whole run into a folder outside."""
    root, path = Path(root), Path(path)
    refuse_link(root)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        refuse_link(current)


@contextmanager
def locked_output(out: Path) -> Iterator[RunFolder]:
    """An output folder (``score --out``) created if needed and locked as runs are (two commands never write one
    folder at once) for the ``with`` block. A refused or failed command leaves no folder it created behind (only
    its ``.lock`` was in it), nor a ``.lock`` it added to an existing folder."""
    out = Path(out)
    refuse_link(out)
    created, had_lock = not out.exists(), (out / ".lock").exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(out)
    try:
        folder.lock()
        yield folder
    except BaseException:
        folder.unlock()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        elif not had_lock and not (out / ".lock").is_symlink():
            (out / ".lock").unlink(missing_ok=True)
        raise
    finally:
        folder.unlock()


#: what firepe writes inside a run, fine-tune, score or eval folder (checked for links when it is locked)
WRITTEN = ("config.json", "metrics.jsonl", ".lock", "tracking.json", "eval.json", "eval.csv", "tokenizer.json",
           "checkpoints", "checkpoints/latest", "tensorboard", "score.json", "score.csv", "score.md", "score.png")


def _open_new(path: Path) -> int:
    """A new regular file at ``path`` for writing, never through a link (``O_EXCL | O_NOFOLLOW``)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """``fsync`` a folder so that renames inside it survive a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically and durably (per-process temporary, fsync, rename, fsync dir)."""
    path = Path(path)
    tmp = _tmp_name(path)
    refuse_link(path)
    with writing(path):
        try:
            with os.fdopen(_open_new(tmp), "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a JSON file; the run folder is damaged.") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; the file is corrupt.") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated.") from None


# -- metrics log ------------------------------------------------------------------------------


class MetricsLog:
    """``metrics.jsonl``: one JSON object per logged step, appended and fsync'ed line by line.

    A torn last line (a kill or a full disk mid-append) is dropped when the log is read or
    truncated; :meth:`truncate` (on resume) rewrites the file atomically, so a kill there loses nothing.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        refuse_link(self.path)
        if not self.path.exists():
            return []
        try:
            lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        except OSError as e:
            raise ValueError(f"cannot read {self.path}: {e.strerror or e}.") from None
        out = []
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError
            except ValueError:
                if n == len(lines) - 1:  # torn final append: drop it
                    break
                raise ValueError(f"{self.path} line {n + 1} is not a metrics record; the file is damaged "
                                 "(remove or fix that line).") from None
            out.append(row)
        return out

    def truncate(self, step: int) -> None:
        """Keep the rows of steps ``<= step`` and drop a torn last line (atomic rewrite)."""
        if not self.path.exists():
            return
        text = "".join(json.dumps(r) + "\n" for r in self.rows() if r["step"] <= step)
        if text.encode() != self.path.read_bytes():
            write_text(self.path, text)

    def append(self, row: dict[str, Any]) -> None:
        refuse_link(self.path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with writing(self.path), os.fdopen(os.open(self.path, flags, 0o644), "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


# -- the folder -------------------------------------------------------------------------------


class RunFolder:
    """Paths of a run folder, its lock, and its config (checked against the dataclasses)."""

    def __init__(self, path: str | Path, noun: str = "run folder"):
        if isinstance(path, str) and not path.strip():
            raise ValueError("the run folder path is empty; pass a folder name (e.g. --out runs/fire).")
        self.path = Path(path)
        self.noun = noun  # how messages name the folder (a prepared data folder is locked the same way)
        self._lock_fd: int | None = None

    config_path = property(lambda self: self.path / "config.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics = property(lambda self: MetricsLog(self.path / "metrics.jsonl"))
    tokenizer_path = property(lambda self: self.path / "tokenizer.json")

    def check_exists(self) -> None:
        if not self.path.exists():
            raise ValueError(f"run folder {str(self.path)!r} does not exist.")
        if not self.path.is_dir():
            raise ValueError(f"run folder {str(self.path)!r} is a file, not a folder.")

    def has_run(self) -> bool:
        return self.config_path.exists()

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict with sections ``model``, ``train``, ``data`` (each checked)."""
        self.check_exists()
        cfg = read_json(self.config_path)
        if not isinstance(cfg, dict):
            raise ValueError(f"{self.config_path} must hold a JSON object; not a firepe run folder.")
        for section, cls in (("model", GPTConfig), ("train", TrainConfig), ("data", DataConfig)):
            if section not in cfg:
                raise ValueError(f"{self.config_path} has no {section!r} section; not a firepe run folder "
                                 "or a damaged one.")
            check_fields(cls, cfg[section], f"{self.config_path} [{section}]")
        return cfg

    def configs(self):
        """``(GPTConfig, TrainConfig, DataConfig)`` of the run."""
        cfg = self.read_config()
        return tuple(dataclass_from_dict(cls, cfg[s], f"{self.config_path} [{s}]")
                     for s, cls in (("model", GPTConfig), ("train", TrainConfig), ("data", DataConfig)))

    def write_config(self, model_cfg, train_cfg, data_cfg, extra: dict[str, Any] | None = None) -> None:
        """``config.json``: the three sections, plus ``extra`` ones (e.g. ``finetune``)."""
        write_json(self.config_path, {**(extra or {}), "model": asdict(model_cfg), "train": asdict(train_cfg),
                                      "data": asdict(data_cfg)})

    # -- lock -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold an exclusive ``flock`` on ``RUN/.lock`` until :meth:`unlock` or process exit
        (the kernel drops it when the process dies, even by kill -9)."""
        if self._lock_fd is not None:
            return
        path = self.path / ".lock"
        self.check_links()
        with writing(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self._flock(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _flock(self, fd: int) -> None:
        """Take the exclusive lock on ``fd``; when another process holds it, close ``fd`` and raise the
        "in use" ``ValueError``."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self._in_use()
            raise

    def _in_use(self) -> None:
        holder = ""
        try:
            holder = (self.path / ".lock").read_text().strip()
        except OSError:
            pass
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ValueError(f"{self.noun} {str(self.path)!r} is in use by another firepe process{who}; "
                         "wait for it to finish or stop it first.") from None

    def check_not_in_use(self) -> None:
        """The "in use" ``ValueError`` when another process holds the lock; keeps nothing and writes nothing."""
        path = self.path / ".lock"
        if self._lock_fd is not None or path.is_symlink() or not path.is_file():
            return
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return
        self._flock(fd)
        os.close(fd)

    def check_links(self) -> None:
        """Refuse (one line naming it) a symbolic link where firepe writes inside this folder."""
        for name in WRITTEN:
            refuse_link(self.path / name)
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                refuse_link(p)

    def unlock(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.unlock()

    def clean_temporaries(self) -> None:
        """Remove leftovers of killed writers (``.tmp-*`` checkpoint folders, ``.*.tmp-*`` files).
        Call only while holding the lock."""
        for root in (self.path, self.checkpoints):
            if not root.is_dir():
                continue
            for p in root.iterdir():
                if p.name.startswith(".") and ".tmp" in p.name:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
