"""One training loop for a single process and for ``torchrun`` (DistributedDataParallel).

AdamW, linear warm-up + cosine decay to ``min_lr_ratio * lr``, gradient clipping, gradient
accumulation, bf16 autocast on CUDA. Under ``torchrun --nproc_per_node N`` the same entry point
initializes a process group (NCCL on GPU, gloo on CPU); every rank takes a strided slice of the
global batch, rank 0 writes metrics and checkpoints.

``batch_size`` is the global number of sequences per optimizer step; each rank runs micro-batches
of ``micro_batch_size`` sequences and accumulates ``batch_size / (world * micro_batch_size)`` of them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import (
    dataclass_from_dict,
    latest_checkpoint,
    load_model_weights,
    load_optimizer_state,
    read_run_config,
    save_checkpoint,
    write_json,
)
from .data import DataConfig, TokenData, build_tokenizer, encode_documents, load_corpus, load_tokenizer
from .model import GPT, GPTConfig

__all__ = ["TrainConfig", "Trainer", "train", "load_run", "lr_at"]


@dataclass
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 16
    micro_batch_size: int | None = None
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    device: str = "auto"            # auto | cpu | cuda | cuda:1 ...
    precision: str = "auto"         # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    threads: int | None = None      # torch.set_num_threads on CPU
    progress: bool = True

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"the training length must be at least 2 tokens, got {self.seq_len}.")
        for name in ("batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}.")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return dataclass_from_dict(cls, data)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu.")
    return torch.device(name)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Model (latest checkpoint, eval mode) and the run's config dictionary."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    model = GPT(GPTConfig.from_dict(cfg["model"]))
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ValueError(f"run folder {str(run_dir)!r} has no checkpoint yet.")
    load_model_weights(model, ckpt)
    return model.to(device).eval(), cfg


class Trainer:
    """Owns model, optimizer, data and the run folder. ``fit()`` trains to ``cfg.steps``."""

    def __init__(self, run_dir: str | Path, model_cfg: GPTConfig | None = None, train_cfg: TrainConfig | None = None,
                 data_cfg: DataConfig | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if resume:
            saved = read_run_config(self.run_dir)
            model_cfg = GPTConfig.from_dict(saved["model"])
            saved_train = TrainConfig.from_dict(saved["train"])
            if train_cfg is not None:  # a resumed run may extend its step budget, nothing else
                saved_train.steps = train_cfg.steps
            train_cfg = saved_train
            data_cfg = dataclass_from_dict(DataConfig, saved["data"])
        self.model_cfg, self.cfg = model_cfg or GPTConfig(), train_cfg or TrainConfig()
        self.data_cfg = data_cfg or DataConfig()
        cfg = self.cfg
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {self.world} processes.")
        per_rank = cfg.batch_size // self.world
        self.micro = cfg.micro_batch_size or per_rank
        if per_rank % self.micro:
            raise ValueError(f"per-process batch {per_rank} is not divisible by micro_batch_size={self.micro}.")
        self.accum = per_rank // self.micro
        self.device = _resolve_device(cfg.device, local_rank)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

        corpus = load_corpus(self.data_cfg)
        self.tokenizer = (load_tokenizer(self.run_dir, self.data_cfg) if resume
                          else build_tokenizer(self.data_cfg, corpus))
        if self.model_cfg.vocab_size != self.tokenizer.vocab_size:
            self.model_cfg.vocab_size = self.tokenizer.vocab_size
        self.data = TokenData(encode_documents(corpus.train, self.tokenizer, self.data_cfg.max_train_tokens),
                              cfg.seq_len)

        torch.manual_seed(cfg.seed)
        self.model = GPT(self.model_cfg).to(self.device)
        # No weight decay on position encodings (T5 buckets, FIRE's MLP), norms and biases.
        pos_ids = {id(p) for m in self.model.position_modules() for p in m.parameters()}
        decay = [p for p in self.model.parameters() if p.dim() >= 2 and id(p) not in pos_ids]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2 or id(p) in pos_ids]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas, fused=False)
        self.step = 0
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is None:
                raise ValueError(f"--resume: run folder {str(self.run_dir)!r} has no checkpoint to resume from.")
            load_model_weights(self.model, ckpt)
            self.model.to(self.device)
            self.step = load_optimizer_state(self.optimizer, ckpt)["step"]
            self._truncate_metrics(self.step)
        elif self.rank == 0:
            self._start_run_folder()
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device]
                                                              if self.device.type == "cuda" else None)
                    if self.world > 1 else None)

    # -- run folder ------------------------------------------------------------------------
    def _start_run_folder(self) -> None:
        if (self.run_dir / "config.json").exists():
            raise ValueError(f"run folder {str(self.run_dir)!r} already holds a run; use --resume to continue it "
                             "or choose another --out (nothing was overwritten).")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self.config_dict())
        self.tokenizer.save(self.run_dir / "tokenizer.json")

    def config_dict(self) -> dict[str, Any]:
        return {"model": self.model_cfg.to_dict(), "train": asdict(self.cfg), "data": self.data_cfg.to_dict()}

    def _truncate_metrics(self, step: int) -> None:
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0 or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip()
                and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))

    # -- steps -----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def local_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of global batch ``step`` (strided by rank)."""
        x, y = self.data.batch(step, self.cfg.batch_size, self.cfg.seed)
        return x[self.rank::self.world], y[self.rank::self.world]

    def forward_backward(self, step: int) -> float:
        """Gradients of the mean loss over this rank's micro-batches (all-reduced under DDP)."""
        net = self.ddp or self.model
        x, y = self.local_batch(step)
        total = 0.0
        for i in range(self.accum):
            xs = x[i * self.micro:(i + 1) * self.micro].to(self.device)
            ys = y[i * self.micro:(i + 1) * self.micro].to(self.device)
            last = i == self.accum - 1
            ctx = net.no_sync() if (self.ddp is not None and not last) else nullcontext()
            with ctx, self._autocast():
                _, loss = net(xs, ys)
                (loss / self.accum).backward()
            total += loss.item() / self.accum
        if self.world > 1:
            t = torch.tensor([total], device=self.device)
            dist.all_reduce(t)
            total = t.item() / self.world
        return total

    def train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(self.step)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {self.step}; lower --lr. The last checkpoint "
                                     "is kept.")
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss

    def fit(self, callback: Callable[[int, float], None] | None = None) -> list[float]:
        cfg = self.cfg
        model_params = self.model.num_params()
        tokens_per_step = cfg.batch_size * cfg.seq_len
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0,
                   desc=f"train {self.model_cfg.position}", unit="step", dynamic_ncols=True)
        losses, t0, done_tokens = [], time.perf_counter(), 0
        self.model.train()
        while self.step < cfg.steps:
            loss = self.train_step()
            losses.append(loss)
            done_tokens += tokens_per_step
            tok_s = done_tokens / max(time.perf_counter() - t0, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
            if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == cfg.steps or self.step == 1):
                row = {"step": self.step, "loss": loss, "lr": lr_at(self.step - 1, cfg), "tokens_per_s": tok_s,
                       "tokens": self.step * tokens_per_step, "params": model_params}
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if self.rank == 0 and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, {"loss": loss},
                                keep=cfg.keep_checkpoints)
            if callback is not None:
                callback(self.step, loss)
        bar.close()
        if self.world > 1:
            dist.barrier()
        return losses


def train(run_dir: str | Path, model_cfg: GPTConfig | None = None, train_cfg: TrainConfig | None = None,
          data_cfg: DataConfig | None = None, resume: bool = False) -> Trainer:
    trainer = Trainer(run_dir, model_cfg, train_cfg, data_cfg, resume=resume)
    trainer.fit()
    return trainer
