"""Checkpoints: tensors in safetensors plus small JSON files, written durably, never loaded with pickle.

A checkpoint ``RUN/checkpoints/step-0000123/`` holds ``model.safetensors``,
``optimizer.safetensors`` + ``optimizer.json`` (AdamW moments; param groups and scalars),
``rng.safetensors`` (the CPU generator) and ``state.json`` (``{"step": 123, "loss": ...}``).
It is written under a per-process temporary name, every file fsync'ed, then renamed; ``latest`` is
replaced atomically afterwards, so a run killed at any moment (or a power loss) leaves the previous
checkpoint intact. Loading checks names, shapes and dtypes against the model and optimizer first
and names the damaged file in one sentence. The run folder itself is :mod:`firepe.runs`.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from .config import dataclass_from_dict
from .runs import STEP_DIR, fsync_dir, fsync_file, read_json, refuse_link, write_json, write_text, writing

__all__ = ["check_finite", "save_checkpoint", "latest_checkpoint", "checkpoint_step", "load_model_weights",
           "load_optimizer_state", "read_state", "dataclass_from_dict", "write_json", "read_json"]


def checkpoint_step(path: Path) -> int:
    """Step number of a checkpoint folder ``step-0000123`` (ValueError for any other name)."""
    m = STEP_DIR.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint folder name (step-NNNNNNN).")
    return int(m.group(1))


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


def check_finite(module: torch.nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer of ``module`` holding NaN or inf
    (one ``isfinite().all()`` per floating tensor, a single host sync for all of them)."""
    named = [("parameter", n, t) for n, t in module.named_parameters()]
    named += [("buffer", n, t) for n, t in module.named_buffers()]
    named = [(kind, n, t) for kind, n, t in named
             if (t.is_floating_point() or t.is_complex()) and t.numel() and t.device.type != "meta"]
    if not named:
        return
    device = named[0][2].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, _, t in named]).tolist()
    for (kind, name, _), ok in zip(named, finite):
        if not ok:
            raise ValueError(f"{kind} {name} holds NaN or inf values; the weights come from a diverged run "
                             "or a corrupt checkpoint.")


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step``, point ``latest`` at it, and keep the ``keep`` newest (by step number).

    Refuses (``FloatingPointError``) to save non-finite weights, so ``latest`` never points at a
    diverged model. Only checkpoints older than ``step`` are pruned.
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}.")
    try:
        check_finite(model)
    except ValueError as e:
        raise FloatingPointError(f"weights became non-finite at step {step} ({str(e).split(';')[0]}); not "
                                 "checkpointed. The last checkpoint is kept; lower --lr.") from None
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    final = ckpt_root / name
    refuse_link(ckpt_root)
    refuse_link(final)
    with writing(tmp):
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file({"torch_cpu_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            for f in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
                fsync_file(tmp / f)
            write_json(tmp / "optimizer.json", meta)
            write_json(tmp / "state.json", {**state, "step": step})
            fsync_dir(tmp)
            if final.exists():  # a checkpoint of this step written before a kill, never pointed to
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(ckpt_root)
    write_text(ckpt_root / "latest", name)
    older = sorted((checkpoint_step(p), p) for p in ckpt_root.iterdir()
                   if p.is_dir() and STEP_DIR.fullmatch(p.name) and checkpoint_step(p) < step)
    for _, old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder ``RUN/checkpoints/latest`` names (None when no checkpoint was written yet)."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if not pointer.is_file():
        raise ValueError(f"{pointer} is not a file; the run folder is damaged (it should hold a checkpoint "
                         "folder name such as step-0000200).")
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except (UnicodeDecodeError, OSError):
        name = None
    if not name or not STEP_DIR.fullmatch(name):
        raise ValueError(f"{pointer} does not name a checkpoint folder (step-NNNNNNN); the run folder is damaged.")
    path = pointer.parent / name
    if not path.is_dir():
        raise ValueError(f"{pointer} names {name}, which does not exist; the run folder is damaged.")
    return path


def read_state(ckpt: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, checked: ``step`` an integer equal to the folder's step."""
    ckpt = Path(ckpt)
    state = read_json(ckpt / "state.json")
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step != checkpoint_step(ckpt):
        raise ValueError(f"{ckpt / 'state.json'} must hold \"step\": {checkpoint_step(ckpt)} (the folder's step), "
                         f"got {step!r}; the checkpoint is damaged.")
    loss = state.get("loss")
    if loss is not None and not (isinstance(loss, (int, float)) and math.isfinite(loss)):
        raise ValueError(f"{ckpt / 'state.json'} holds a non-finite loss {loss!r}; the checkpoint is damaged.")
    return state


def _header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of a safetensors file, read from its header only."""
    if not file.is_file():
        raise ValueError(f"checkpoint file {file} is missing.")
    try:
        with safe_open(str(file), framework="pt") as f:
            out = {}
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (tuple(sl.get_shape()), sl.get_dtype())
            return out
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint file {file} is corrupt or truncated ({str(e).splitlines()[0]}).") from None


_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def _expect(file: Path, header, expected: dict[str, torch.Tensor], allow_missing: set[str] = frozenset()) -> None:
    missing = sorted(set(expected) - set(header) - set(allow_missing))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint file {file} does not match: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}; it belongs to another configuration or is damaged.")
    for k, (shape, dtype) in header.items():
        t = expected[k]
        if shape != tuple(t.shape) or dtype != _DTYPE_NAMES.get(t.dtype, str(t.dtype)):
            raise ValueError(f"checkpoint file {file}: tensor {k} is {dtype} {list(shape)}, expected "
                             f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} {list(t.shape)}.")


def load_model_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Load ``model.safetensors`` into ``model`` after checking names, shapes and dtypes."""
    file = Path(ckpt) / "model.safetensors"
    header = _header(file)
    sd = model.state_dict()
    # tied weights are stored once: a state-dict entry sharing storage with a stored one may be absent
    shared = {k for k, t in sd.items() for k2, t2 in sd.items()
              if k != k2 and k2 in header and t.data_ptr() == t2.data_ptr()}
    _expect(file, header, sd, allow_missing=shared)
    try:
        load_model(model, str(file), strict=True, device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"checkpoint file {file} is corrupt or truncated ({str(e).splitlines()[0]}).") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Path) -> dict[str, Any]:
    """Restore optimizer state and the CPU generator from ``ckpt``; returns its checked ``state.json``."""
    ckpt = Path(ckpt)
    state = read_state(ckpt)
    opt_file, rng_file, meta_file = ckpt / "optimizer.safetensors", ckpt / "rng.safetensors", ckpt / "optimizer.json"
    meta = read_json(meta_file)
    groups = optimizer.param_groups
    saved_groups = meta.get("param_groups") if isinstance(meta, dict) else None
    scalars = meta.get("scalars") if isinstance(meta, dict) else None
    if (not isinstance(saved_groups, list) or len(saved_groups) != len(groups) or not isinstance(scalars, dict)
            or any(not isinstance(g, dict) or not isinstance(g.get("params"), list)
                   or len(g["params"]) != len(cur["params"]) for g, cur in zip(saved_groups, groups))):
        raise ValueError(f"{meta_file} does not describe this model's {len(groups)} optimizer parameter groups; "
                         "the checkpoint is damaged or from another configuration.")
    params = [p for g in groups for p in g["params"]]
    header = _header(opt_file)
    expected = {}
    for key in header:
        pid, _, name = key.partition(".")
        if not pid.isdigit() or int(pid) >= len(params):
            raise ValueError(f"checkpoint file {opt_file}: unexpected tensor {key}; the checkpoint is damaged.")
        p = params[int(pid)]
        expected[key] = torch.empty(()) if name == "step" else p.detach()
    _expect(opt_file, header, expected)
    for key, value in scalars.items():
        pid, _, _ = key.partition(".")
        if not pid.isdigit() or int(pid) >= len(params) or not isinstance(value, (int, float)):
            raise ValueError(f"{meta_file}: bad scalar entry {key!r}: {value!r}; the checkpoint is damaged.")
    rng_expected = {"torch_cpu_rng": torch.get_rng_state()}
    _expect(rng_file, _header(rng_file), rng_expected)
    try:
        tensors = load_file(str(opt_file))
        rng = load_file(str(rng_file))
        loaded: dict[int, dict[str, Any]] = {}
        for key, value in list(tensors.items()) + list(scalars.items()):
            pid, name = key.split(".", 1)
            loaded.setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict({"state": loaded, "param_groups": saved_groups})
        torch.set_rng_state(rng["torch_cpu_rng"])
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {ckpt} optimizer state cannot be loaded ({str(e).splitlines()[0]}); "
                         "it is corrupt or from another configuration.") from None
    return state
