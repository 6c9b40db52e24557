"""Run folders and checkpoints: safetensors + JSON, written atomically, never loaded with pickle.

Layout of a run folder::

    RUN/config.json                   {"model": GPTConfig, "train": TrainConfig, "data": DataConfig}
    RUN/tokenizer.json                (BPE tokenizers only)
    RUN/metrics.jsonl                 one JSON object per logged step
    RUN/checkpoints/step-000123/      model.safetensors, optimizer.safetensors, state.json
    RUN/checkpoints/latest            name of the newest complete checkpoint folder

A checkpoint folder is written under a temporary name and renamed when complete; ``latest`` is
replaced atomically afterwards, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

__all__ = ["dataclass_from_dict", "write_json", "read_json", "save_checkpoint", "latest_checkpoint",
           "load_model_weights", "load_optimizer_state", "read_run_config"]


def dataclass_from_dict(cls, data: dict[str, Any]):
    """``cls(**data)`` after checking that every key is a field of ``cls`` (one clear error if not)."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
    return cls(**data)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated.") from None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist.")
    cfg = read_json(run_dir / "config.json")
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{run_dir / 'config.json'} has no 'model' section; not a firepe run folder.")
    return cfg


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{pid}.{key}"] = value
    return tensors, meta


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    tensors, meta = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "optimizer.json", meta)
    rng = {"torch_cpu_rng": torch.get_rng_state()}
    save_file(rng, str(tmp / "rng.safetensors"))
    write_json(tmp / "state.json", {**state, "step": step})
    final = ckpt_root / name
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    pointer = ckpt_root / "latest"
    pointer_tmp = ckpt_root / ".latest.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, pointer)
    for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"{pointer} names {path.name}, which does not exist; the run folder is damaged.")
    return path


def load_model_weights(model: torch.nn.Module, ckpt: Path) -> None:
    file = Path(ckpt) / "model.safetensors"
    if not file.exists():
        raise ValueError(f"checkpoint {ckpt} has no model.safetensors.")
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint {file} is corrupt or truncated ({str(e).splitlines()[0]}).") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint {file} does not match the model config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}.")


def load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Path) -> dict[str, Any]:
    try:
        tensors = load_file(str(Path(ckpt) / "optimizer.safetensors"))
        rng = load_file(str(Path(ckpt) / "rng.safetensors"))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"checkpoint {ckpt} optimizer state is corrupt or truncated ({e}).") from None
    meta = read_json(Path(ckpt) / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(rng["torch_cpu_rng"])
    return read_json(Path(ckpt) / "state.json")
