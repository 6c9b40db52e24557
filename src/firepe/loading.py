"""Opening a trained model: one way to read a run folder or an exported folder, and the device.

* :func:`resolve_device` -- ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a checked ``torch.device``.
* :func:`load_run` -- the model of a run folder's latest checkpoint (or of an exported folder) and the
  run's config dictionary; what ``eval``, ``score``, ``generate``, ``plot-bias`` and ``export`` open.
* :func:`load_export` -- an exported folder (``firepe export``), read with safetensors alone, without
  transformers (defined in :mod:`firepe.exported`, next to the export format).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .arch import build_model
from .checkpoint import latest_checkpoint, load_model_weights, read_state
from .config import GPTConfig, dataclass_from_dict
from .devices import resolve_device
from .exported import is_export, load_export
from .model import GPT
from .runs import RunFolder

__all__ = ["resolve_device", "load_run", "load_export"]


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
    model = build_model(model_cfg)
    try:
        read_state(ckpt)
        load_model_weights(model, ckpt)
    except ValueError:
        if not ckpt.exists():  # the training process pruned it between `latest` and the files
            raise ValueError(f"checkpoint {ckpt} was pruned while it was being read (the run is still training and "
                             "keeps only its newest checkpoints); run the command again to read the newest.") from None
        raise
    try:
        model.check_finite()
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt} holds non-finite weights: {e}") from None
    return model.to(device).eval(), cfg
