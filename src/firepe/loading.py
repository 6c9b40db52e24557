"""Opening a trained model: one way to read a run folder or an exported folder, and the device.

* :func:`resolve_device` -- ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a checked ``torch.device``.
* :func:`load_run` -- the model of a run folder's latest checkpoint (or of an exported folder) and the
  run's config dictionary; what ``eval``, ``score``, ``generate``, ``plot-bias`` and ``export`` open.
* :func:`load_export` -- an exported folder (``firepe export``, :mod:`firepe.exported`), read with
  safetensors alone, without transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import latest_checkpoint, load_model_weights, read_state
from .config import DataConfig, GPTConfig, TrainConfig, check_fields, dataclass_from_dict
from .exported import MODEL_TYPE, PREFIX, check_byte_tokenizer, gpt_config, is_export
from .model import GPT
from .runs import RunFolder, read_json

__all__ = ["resolve_device", "load_run", "load_export"]


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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Model (latest checkpoint, eval mode, weights checked finite) and the run's config dictionary.

    An exported folder (``firepe export``) loads as well: see :func:`load_export`."""
    if is_export(run_dir):
        return load_export(run_dir, device)
    run = RunFolder(run_dir)
    cfg = run.read_config()
    model_cfg = dataclass_from_dict(GPTConfig, cfg["model"], f"{run.config_path} [model]")
    device = resolve_device(device) if isinstance(device, str) else device
    ckpt = latest_checkpoint(run.path)
    if ckpt is None:
        raise ValueError(f"run folder {str(run.path)!r} has no checkpoint yet.")
    read_state(ckpt)
    model = GPT(model_cfg)
    load_model_weights(model, ckpt)
    try:
        model.check_finite()
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt} holds non-finite weights: {e}") from None
    return model.to(device).eval(), cfg


class _Holder(nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        setattr(self, PREFIX, model)


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Model (eval mode, weights checked finite) and a run-style config dict (``model``, ``train``,
    ``data``, plus ``export``: the source run and step) of an exported folder."""
    path = Path(path)
    file = path / "config.json"
    hf = read_json(file)
    if not isinstance(hf, dict) or hf.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{file} is not a firepe export (model_type must be {MODEL_TYPE!r}).")
    model_cfg = gpt_config(hf, str(file))
    extra = hf.get("firepe")
    if not isinstance(extra, dict) or not isinstance(extra.get("train"), dict) or not isinstance(extra.get("data"),
                                                                                                  dict):
        raise ValueError(f"{file} has no \"firepe\" object with \"train\" and \"data\"; re-export the run.")
    check_fields(TrainConfig, extra["train"], f"{file} [firepe.train]")
    check_fields(DataConfig, extra["data"], f"{file} [firepe.data]")
    try:
        model = GPT(model_cfg)  # an encoding checks its option values when built
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    if extra["data"].get("tokenizer", "byte") == "byte":
        check_byte_tokenizer(path / "tokenizer.json")
    load_model_weights(_Holder(model), path)
    try:
        model.check_finite()
    except ValueError as e:
        raise ValueError(f"{path / 'model.safetensors'} holds non-finite weights: {e}") from None
    device = resolve_device(device) if isinstance(device, str) else device
    cfg = {"model": model_cfg.to_dict(), "train": extra["train"], "data": extra["data"],
           "export": {k: v for k, v in extra.items() if k not in ("train", "data")}}
    return model.to(device).eval(), cfg
