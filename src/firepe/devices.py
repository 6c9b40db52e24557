"""``resolve_device``: a device name (``auto``, ``cpu``, ``cuda``, ``cuda:N``) -> a checked ``torch.device``.
A leaf, so that both :mod:`firepe.exported` and :mod:`firepe.loading` can use it; import it from
:mod:`firepe.loading`."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


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
