"""``resolve_device``: a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) -> a checked ``torch.device``;
``cpu_description``: the CPU model and its widest vector instruction set, named beside every speed figure.
A leaf, so that both :mod:`firepe.exported` and :mod:`firepe.loading` can use it; import it from
:mod:`firepe.loading`."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["resolve_device", "cpu_description", "instruction_set"]


def instruction_set(flags: set[str]) -> str:
    """The widest vector extension in a ``/proc/cpuinfo`` flag set: AVX-512 (``avx512f``), AVX2, NEON
    (``asimd``, Arm), SSE2 or ``none``."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"), ("sse2", "SSE2")):
        if flag in flags:
            return name
    return "none"


def cpu_description(cpuinfo: str | None = None) -> str:
    """``"<model name>, <instruction set>"`` of this machine (from ``/proc/cpuinfo``; elsewhere the platform's
    processor name and ``unknown`` instruction set). ``cpuinfo``: the file's text, for tests."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model}, {instruction_set(flags) if flags else 'unknown instruction set'}"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` (no index) -> ``cuda:LOCAL_RANK``
    (under torchrun every process takes its own GPU); checks that the device exists."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; valid: auto, cpu, cuda, cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but this PyTorch has no usable CUDA; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s).")
    return device
