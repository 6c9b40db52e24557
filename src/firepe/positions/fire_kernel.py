"""Optional fused CPU kernel for FIRE's table-mode bias (``fire_table.c``).

The table-mode bias (:class:`firepe.positions.FIRE`, ``bias_mode="table"``) is a gather with
linear interpolation per (query, key, head). Written with PyTorch ops it needs several passes over
``H x Q x K`` tensors forward and scatter-adds backward; this kernel does the forward in one pass
and the backward (gradients to the table, to ``psi(d)`` and to ``1 / psi(max(L, i))``) in one more,
with per-thread accumulators instead of atomics. The interpolation coordinates of a (query, key) pair
do not depend on the head, so with SSE2 (every x86-64 CPU) heads go four at a time through one lookup
into a head-minor copy of the tables, with 4 x 4 register transposes to and from the ``[H, Q, K]``
layout; other CPUs, key layouts that are not consecutive, and leftover heads use scalar loops.

It is plain C (OpenMP when available), compiled with the system C compiler on first use (well
under a second) into ``$FIREPE_CACHE`` (default ``~/.cache/firepe``) and loaded with ``ctypes``.
Without a compiler, or with ``FIREPE_KERNEL=0`` in the environment, FIRE uses the PyTorch
implementation instead (same values within float rounding, same gradients); :func:`available`
tells which is in use. Only float32 CPU tensors take the kernel.

The cache is trusted only when the folder and the library are owned by the current user and not
writable by group or others; otherwise, or when the library does not load or lacks the kernel's
symbols, a warning says why and FIRE uses the PyTorch path. Temporaries a killed build left in the
cache (``tmp*.so``, older than an hour) are removed by the next build.

The source is looked up next to this file, then in ``firepe/csrc`` (where the package ships it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch

__all__ = ["available", "build", "enabled", "load_library", "table_lookup"]

_HERE = Path(__file__).resolve().parent
_LIB: list = []  # [ctypes.CDLL or None] once loading was attempted
_CFLAGS = ("-O3", "-ffp-contract=off", "-shared", "-fPIC")  # part of the cache key
_STALE_SECONDS = 3600  # a tmp*.so this old is the leftover of a killed build (a build takes seconds)


def _source(name: str = "fire_table.c") -> Path | None:
    """The C source ``name``: next to this file, else in ``firepe/csrc``."""
    return next((p for p in (_HERE / name, _HERE.parent / "csrc" / name) if p.exists()), None)


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


def _record(target: Path) -> Path:
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
    record = _record(target)
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


def _compile(compiler: str, source: Path, target: Path, defines: tuple[str, ...] = ()) -> bool:
    """Compile ``source`` into the shared library ``target`` (atomically); OpenMP if it builds.

    ``-ffp-contract=off`` keeps ``a * b + c`` two roundings on every compiler and CPU (no fused
    multiply-add), so results do not depend on the build. ``defines``: extra ``-D`` macros
    (``FIREPE_NO_SIMD`` builds the scalar loops only).
    """
    for flags in (["-fopenmp"], []):
        fd, tmp = tempfile.mkstemp(prefix="tmp", suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *_CFLAGS, *flags, *(f"-D{d}" for d in defines), str(source), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
            if done.returncode == 0:
                os.chmod(tmp, 0o755)  # the linker's mode follows the umask (group-writable under 002)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    fingerprint = _fingerprint(fd)
                finally:
                    os.close(fd)
                record = _record(target)  # the record first: a library is never loaded without one that matches
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


def _target(defines: tuple[str, ...] = (), name: str = "fire_table.c") -> Path | None:
    """The cache path of the library built from source ``name`` with ``defines`` (None without a compiler
    or source)."""
    compiler = _compiler()
    source = _source(name)
    if not compiler or source is None:
        return None
    key = hashlib.sha256(source.read_bytes() + " ".join([compiler, *_CFLAGS, *defines]).encode()).hexdigest()[:16]
    return _cache_dir() / f"{Path(name).stem}_{key}.so"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _refuse(reason: str, what: str = "the fused FIRE kernel") -> None:
    warnings.warn(f"firepe: not using {what}: {reason}; using PyTorch ops.", stacklevel=5)


def build(defines: tuple[str, ...] = ()):
    """Compile (or find in the cache) and load the kernel; ``None`` (PyTorch path) without a working
    compiler, or with a warning when the cache is not safe to load from or holds a broken library.

    ``defines`` are extra preprocessor macros, part of the cache key (the tests build the scalar
    variant with ``("FIREPE_NO_SIMD",)``).
    """
    return load_library("fire_table.c", _declare, defines, "the fused FIRE kernel")


def load_library(name: str, declare, defines: tuple[str, ...] = (), what: str = "the fused FIRE kernel"):
    """Compile the C source ``name`` (or find it in the cache), load it with ``ctypes`` and run
    ``declare(lib)`` on it; ``None`` without a working compiler, or with a warning naming ``what`` when the
    cache is not safe to load from or holds a broken library (also used by :mod:`firepe.attention_kernel`)."""
    target = _target(defines, name)
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
                                           and not _record(target).exists()):
            # not built yet, or built by a firepe that kept no record of it (older releases): build it
            try:
                if not _compile(_compiler(), _source(name), target, defines):
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


def _load():
    if _LIB:
        return _LIB[0]
    _LIB.append(build() if enabled() else None)
    return _LIB[0]


def _declare(lib) -> None:
    """Argument types of the two entry points (AttributeError when the library lacks them)."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.fire_table_forward.argtypes = [p, i64, i64, p, p, p, i64, p, i64, p, i64, i64, p, i32]
    lib.fire_table_forward.restype = None
    lib.fire_table_backward.argtypes = [p, p, i64, i64, p, i64, p, p, i64, p, i64, p, i64, i64, p, p, p, i32]
    lib.fire_table_backward.restype = None


def available() -> bool:
    """True when the compiled kernel is loaded (compiling it now if needed)."""
    return _load() is not None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _TableLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid):
        lib = _load()
        table, psi_d, inv_norm = table.contiguous(), psi_d.contiguous(), inv_norm.contiguous()
        q_pos, k_pos = q_pos.to(torch.int64).contiguous(), k_pos.to(torch.int64).contiguous()
        long_row = long_row.to(torch.uint8).contiguous()
        heads, width = table.shape
        out = torch.empty(heads, len(q_pos), len(k_pos), dtype=table.dtype)
        lib.fire_table_forward(_ptr(table), heads, width, _ptr(psi_d), _ptr(inv_norm), _ptr(q_pos), len(q_pos),
                               _ptr(k_pos), len(k_pos), _ptr(long_row), base, grid, _ptr(out),
                               torch.get_num_threads())
        ctx.save_for_backward(table, psi_d, inv_norm, q_pos, k_pos, long_row)
        ctx.base, ctx.grid = base, grid
        return out

    @staticmethod
    def backward(ctx, grad):
        lib = _load()
        table, psi_d, inv_norm, q_pos, k_pos, long_row = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        heads, width = table.shape
        g_table, g_psi, g_inv = torch.zeros_like(table), torch.zeros_like(psi_d), torch.zeros_like(inv_norm)
        lib.fire_table_backward(_ptr(grad), _ptr(table), heads, width, _ptr(psi_d), len(psi_d), _ptr(inv_norm),
                                _ptr(q_pos), len(q_pos), _ptr(k_pos), len(k_pos), _ptr(long_row), ctx.base,
                                ctx.grid, _ptr(g_table), _ptr(g_psi), _ptr(g_inv), torch.get_num_threads())
        return g_table, g_psi, g_inv, None, None, None, None, None


def _check_float(name: str, t, dim: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != dim or t.dtype != torch.float32 or t.device.type != "cpu":
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a {dim}-D float32 CPU tensor, got {got}.")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return value


def check_lookup_args(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid) -> None:
    """Raise ``ValueError`` unless every read :func:`table_lookup` makes stays inside its tensors
    (shapes, dtypes, device, and the distances the positions reach); see its docstring."""
    _check_float("table", table, 2)
    _check_float("psi_d", psi_d, 1)
    _check_float("inv_norm", inv_norm, 1)
    for name, pos in (("q_pos", q_pos), ("k_pos", k_pos)):
        if (not isinstance(pos, torch.Tensor) or pos.dim() != 1 or pos.device.type != "cpu"
                or pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool):
            got = f"{pos.dtype} {tuple(pos.shape)} on {pos.device}" if isinstance(pos, torch.Tensor) else type(pos)
            raise ValueError(f"{name} must be a 1-D integer CPU tensor, got {got}.")
        if pos.numel() and int(pos.min()) < 0:
            raise ValueError(f"{name} must be non-negative, got minimum {int(pos.min())}.")
    if (not isinstance(long_row, torch.Tensor) or long_row.dtype != torch.bool or long_row.dim() != 1
            or long_row.device.type != "cpu"):
        raise ValueError(f"long_row must be a 1-D bool CPU tensor, got {getattr(long_row, 'dtype', long_row)!r}.")
    heads, width = table.shape
    if heads < 1 or width >= 2**31:
        raise ValueError(f"table must have at least one head and fewer than 2^31 columns, got {tuple(table.shape)}.")
    if len(inv_norm) != len(q_pos) or len(long_row) != len(q_pos):
        raise ValueError(f"inv_norm ({len(inv_norm)}) and long_row ({len(long_row)}) need one entry per query "
                         f"({len(q_pos)}).")
    grid, base = _check_int("grid", grid, 2), _check_int("base", base, 0)
    if base + grid > width:
        raise ValueError(f"base + grid = {base + grid} exceeds the table's {width} columns.")
    if not len(q_pos) or not len(k_pos):
        return
    k_min = int(k_pos.min())
    if bool(long_row.any()):
        reach = int(q_pos[long_row].max()) - k_min
        if reach >= len(psi_d):
            raise ValueError(f"psi_d has {len(psi_d)} entries but interpolating rows reach distance {reach}.")
    if not bool(long_row.all()):
        reach = int(q_pos[~long_row].max()) - k_min
        if reach >= base:
            raise ValueError(f"rows that read the distance table reach distance {reach}, past its {base} "
                             f"columns (base).")


def table_lookup(table: torch.Tensor, psi_d: torch.Tensor, inv_norm: torch.Tensor, q_pos: torch.Tensor,
                 k_pos: torch.Tensor, long_row: torch.Tensor, base: int, grid: int) -> torch.Tensor:
    """Fused FIRE table lookup, ``[H, Q, K]`` (0 where ``k_pos > q_pos``).

    Args:
        table: ``[H, M]`` float32, columns ``0..base-1`` indexed by distance (rows that do not
            interpolate), columns ``base..base+grid-1`` the interpolation table of ``f`` on [0, 1].
        psi_d: ``[D]`` float32 ``psi(d)`` for distances ``d = 0..D-1`` (``D`` past every distance an
            interpolating row reaches, ``max(q_pos[long_row]) - min(k_pos)``).
        inv_norm: ``[Q]`` float32 ``1 / (psi(max(L, i)) + eps)``.
        q_pos, k_pos: ``[Q]``, ``[K]`` non-negative integer positions. long_row: ``[Q]`` bool, rows
            that interpolate; the others read column ``q_pos - k_pos`` (which must be ``< base``).
        base, grid: ints, ``grid >= 2``, ``base + grid <= M``.
    Every tensor on the CPU. Gradients flow to ``table``, ``psi_d`` and ``inv_norm``. Arguments that
    would make the kernel read out of bounds raise ``ValueError``.
    """
    check_lookup_args(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid)
    if not available():
        raise RuntimeError("the fused FIRE kernel is not available (no C compiler or FIREPE_KERNEL=0).")
    return _TableLookup.apply(table, psi_d, inv_norm, q_pos, k_pos, long_row, base, grid)
