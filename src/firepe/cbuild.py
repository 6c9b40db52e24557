"""Compiling firepe's C kernels and loading them with ``ctypes`` (every kernel: FIRE's table lookup,
its piecewise interpolation table, the fused bias attention).

A source ``firepe/csrc/NAME.c`` is compiled with the system C compiler (OpenMP when it builds;
``-ffp-contract=off`` so results do not depend on the build) into ``$FIREPE_CACHE`` (default
``~/.cache/firepe``) as ``NAME_<hash of source, compiler and flags>.so``, next to a record
``.so.sha256`` of its size and sha256 written before the library is installed.

A cached library is loaded only when the folder and the file are owned by the current user and not
writable by group or others, and the file is a regular file matching its record (a truncated copy would
be mapped and kill the process with SIGBUS; a FIFO would block the open); otherwise, or when it does not
load or lacks its symbols, a warning says why and the caller uses PyTorch ops. A library without a record
(built by an older firepe) is built again. Temporaries a killed build left (``tmp*.so``, older than an
hour) are removed by the next build. ``FIREPE_KERNEL=0`` switches every compiled kernel off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["enabled", "load_library", "compiler", "source", "target_path", "record_path", "compile_library"]

_CSRC = Path(__file__).resolve().parent / "csrc"
_CFLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC")  # part of the cache key
_STALE_SECONDS = 3600  # a tmp*.so this old is the leftover of a killed build (a build takes seconds)


def source(name: str) -> Path | None:
    """The C source ``name`` in ``firepe/csrc`` (None when missing)."""
    path = _CSRC / name
    return path if path.exists() else None


def _cache_dir() -> Path:
    return Path(os.environ.get("FIREPE_CACHE") or Path.home() / ".cache" / "firepe")


def _unsafe(path: Path) -> str | None:
    """Why ``path`` must not be trusted to hold code we load (None when it may)."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{path} is owned by uid {st.st_uid}, not by the current user (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}; chmod go-w fixes it)"
    return None


def record_path(target: Path) -> Path:
    """The file beside a cached library holding its size and sha256 (``SIZE SHA256``), written by :func:`_compile`."""
    return target.with_name(target.name + ".sha256")


def _fingerprint(fd: int) -> str:
    h, pos = hashlib.sha256(), 0
    while block := os.pread(fd, 1 << 20, pos):
        h.update(block)
        pos += len(block)
    return f"{pos} {h.hexdigest()}"


def _damaged(target: Path) -> str | None:
    """Why ``target`` must not be loaded as the library :func:`_compile` built (None when it may): it must be a
    regular file (not a link, folder or FIFO: opening a FIFO would block) of the size and sha256 recorded
    next to it -- a truncated library would be mapped and crash the process with SIGBUS."""
    st = os.lstat(target)
    if not stat.S_ISREG(st.st_mode):
        return f"{target} is not a regular file (delete it to rebuild)"
    record = record_path(target)
    try:
        if record.is_symlink() or not record.is_file() or record.stat().st_size > 256:
            raise OSError
        want = record.read_text().strip()
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return f"{target} has no readable record of its checksum ({record.name}; delete both to rebuild)"
    try:
        got = _fingerprint(fd)
    finally:
        os.close(fd)
    if got != want:
        return (f"{target} is not the library firepe built (size and sha256 {got.split()[0]} / ...{got[-8:]}, "
                f"recorded {want[:40]}); delete it to rebuild")
    return None


def _clean_stale(folder: Path) -> None:
    """Remove ``tmp*.so`` files older than :data:`_STALE_SECONDS` (left by killed builds)."""
    now = time.time()
    for tmp in folder.glob("tmp*.so"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def compile_library(cc: str, src: Path, target: Path, defines: tuple[str, ...] = ()) -> bool:
    """Compile ``source`` into the shared library ``target`` (atomically); OpenMP if it builds.

    ``-ffp-contract=off`` keeps ``a * b + c`` two roundings on every compiler and CPU (no fused
    multiply-add), so results do not depend on the build. ``defines``: extra ``-D`` macros
    (``FIREPE_NO_SIMD`` builds the scalar loops only).
    """
    for flags in (["-fopenmp"], []):
        fd, tmp = tempfile.mkstemp(prefix="tmp", suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *_CFLAGS, *flags, *(f"-D{d}" for d in defines), str(src), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
            if done.returncode == 0:
                os.chmod(tmp, 0o755)  # the linker's mode follows the umask (group-writable under 002)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    fingerprint = _fingerprint(fd)
                finally:
                    os.close(fd)
                record = record_path(target)  # the record first: a library is never loaded without one that matches
                rec_tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
                rec_tmp.write_text(fingerprint + "\n")
                os.replace(rec_tmp, record)
                os.replace(tmp, target)
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return False


def target_path(name: str, defines: tuple[str, ...] = ()) -> Path | None:
    """The cache path of the library built from source ``name`` with ``defines`` (None without a compiler
    or source)."""
    cc, src = compiler(), source(name)
    if not cc or src is None:
        return None
    key = hashlib.sha256(src.read_bytes() + " ".join([cc, *_CFLAGS, *defines]).encode()).hexdigest()[:16]
    return _cache_dir() / f"{Path(name).stem}_{key}.so"


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _refuse(reason: str, what: str = "the fused FIRE kernel") -> None:
    warnings.warn(f"firepe: not using {what}: {reason}; using PyTorch ops.", stacklevel=5)


def load_library(name: str, declare, defines: tuple[str, ...] = (), what: str = "the fused FIRE kernel"):
    """Compile the C source ``name`` (or find it in the cache), load it with ``ctypes`` and run
    ``declare(lib)`` on it; ``None`` without a working compiler, or with a warning naming ``what`` when the
    cache is not safe to load from or holds a broken library."""
    import ctypes

    target = target_path(name, defines)
    if target is None:
        return None
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        _refuse(f"could not create the kernel cache folder {target.parent} ({err})", what)
        return None
    try:
        reason = _unsafe(target.parent)
        if reason:
            _refuse(f"the kernel cache folder {reason}", what)
            return None
        _clean_stale(target.parent)
        reason = _unsafe(target) if os.path.lexists(target) else None
        if reason:  # never replaced either: whoever else can write it is to be told
            _refuse(f"the cached kernel {reason}", what)
            return None
        if not os.path.lexists(target) or (target.is_file() and not target.is_symlink()
                                           and not record_path(target).exists()):
            # not built yet, or built by a firepe that kept no record of it (older releases): build it
            try:
                if not compile_library(compiler(), source(name), target, defines):
                    return None
            except OSError as err:
                _refuse(f"could not build it into {target.parent} ({err.strerror or err})", what)
                return None
        reason = _unsafe(target) or _damaged(target)
        if reason:
            _refuse(f"the cached kernel {reason}", what)
            return None
        lib = ctypes.CDLL(str(target))
        declare(lib)
        return lib
    except (OSError, AttributeError) as err:
        _refuse(f"could not load {target} ({err}); delete it to rebuild", what)
    return None


def enabled() -> bool:
    """False when ``FIREPE_KERNEL=0`` switches firepe's compiled kernels off (every one of them)."""
    return os.environ.get("FIREPE_KERNEL", "1") != "0"


