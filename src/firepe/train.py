"""One training loop for a single process and for ``torchrun`` (DistributedDataParallel).

AdamW, linear warm-up + cosine decay to ``min_lr_ratio * lr``, gradient clipping, gradient
accumulation, bf16 autocast on CUDA. Under ``torchrun --nproc_per_node N`` the same entry point
initializes a process group (NCCL on GPU, gloo on CPU); every rank takes a strided slice of the
global batch, rank 0 writes metrics and checkpoints.

``batch_size`` is the global number of sequences per optimizer step; each rank runs micro-batches
of ``micro_batch_size`` sequences and accumulates ``batch_size / (world * micro_batch_size)`` of them.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .arch import build_model
from .checkpoint import latest_checkpoint, load_model_weights, load_optimizer_state, read_state, save_checkpoint
from .config import RESUMABLE, DataConfig, GPTConfig, TrainConfig, check_model_training, resume_changes
from .data import epochs_line, resolve, training_data
from .loading import resolve_device
from .model import GPT
from .runs import RunFolder, read_json, refuse_link
from .tracking import TrackerRun, Trackers, check_installed, open_trackers

__all__ = ["Trainer", "lr_at", "process_group", "build_optimizer"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def init_distributed(device: torch.device) -> None:
    """The process group of a torchrun job: NCCL on CUDA after ``torch.cuda.set_device(device)`` (so NCCL and
    object collectives use this rank's GPU, not GPU 0 from every rank), gloo on CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


@contextmanager
def process_group() -> Iterator[None]:
    """For ``torchrun``: destroys the process group a :class:`Trainer` started, after freeing what
    still holds it (gloo's threads otherwise now and then abort the process at interpreter exit)."""
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


#: devices whose AdamW has a fused (one kernel for all parameters) implementation in every supported torch
_FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def build_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two groups: weight decay on matrices, none on position encodings (T5 buckets,
    FIRE's MLP), norms and biases.

    Fused (one kernel over all parameters) on CPU and CUDA: the per-parameter loop of the default
    implementation costs ~50 us per tensor on CPU, a visible share of a small model's step, and more
    for encodings with many small parameters (FIRE's MLP per layer). Same update, rounded differently
    at float level. A resumed run keeps the implementation its checkpoint recorded (``fused`` is part
    of the saved parameter groups), so runs from before this change still resume bit-exactly."""
    pos_ids = {id(p) for m in model.position_modules() for p in m.parameters()}
    decay = [p for p in model.parameters() if p.dim() >= 2 and id(p) not in pos_ids]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or id(p) in pos_ids]
    params = decay + no_decay
    fused = bool(params) and all(p.device.type in _FUSED_ADAMW_DEVICES and p.dtype.is_floating_point
                                 for p in params)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def _config_dict(model_cfg: GPTConfig, train_cfg: TrainConfig, data_cfg: DataConfig) -> dict[str, Any]:
    return {"model": asdict(model_cfg), "train": asdict(train_cfg), "data": asdict(data_cfg)}


def _agree_across_ranks(cfg: dict[str, Any], world: int) -> None:
    """Every torchrun rank must train the same configuration (ValueError on all ranks if not)."""
    mine = {f"{s}.{k}": v for s, sec in cfg.items() for k, v in sec.items()
            if (s, k) not in (("train", "progress"), ("train", "device"))}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    differ = sorted({k for other in gathered for k in set(mine) | set(other) if other.get(k) != mine.get(k)})
    if differ:
        raise ValueError(f"the {world} torchrun processes were started with different settings "
                         f"({', '.join(differ)}); start every rank with the same command.")


def _rank0_decides(world: int, rank: int, fn: Callable[[], None]) -> None:
    """Run ``fn`` on rank 0; if it raises ValueError, every rank raises it (nobody waits forever)."""
    err = None
    if rank == 0:
        try:
            fn()
        except ValueError as e:
            err = str(e)
    if world > 1:
        box = [err]
        dist.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        raise ValueError(err)


class Trainer:
    """Owns model, optimizer, data and the run folder. ``fit()`` trains to ``cfg.steps``.

    New run: pass the three configs; the folder must not hold a run yet. ``resume=True``: the configs
    come from ``RUN/config.json``; ``changes`` may set the :data:`RESUMABLE` train fields (a given value equal
    to the saved one is no change, whatever the field: :func:`~firepe.config.resume_changes`; a new step
    budget is written back to config.json). A run stopped before its first checkpoint resumes from
    step 0. The folder is locked (``flock``) from construction until ``fit()`` returns.

    ``cfg.log_to`` also sends each ``metrics.jsonl`` row to TensorBoard / W&B / Trackio
    (:mod:`firepe.tracking`; rank 0 only) under ``cfg.log_project``, as a run named after the run
    folder in group ``log_group`` (compare: the comparison folder's name). A missing package is
    refused here, before anything is written.
    """

    def __init__(self, run_dir: str | Path, model_cfg: GPTConfig | None = None, train_cfg: TrainConfig | None = None,
                 data_cfg: DataConfig | None = None, resume: bool = False, changes: dict[str, Any] | None = None,
                 log_group: str | None = None):
        self.run = RunFolder(run_dir)
        self.resumed, self.log_group, self.trackers = resume, log_group, Trackers()
        self.run_dir = self.run.path
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if resume:
            model_cfg, train_cfg, data_cfg = self._resumed_configs(changes or {})
        elif changes:
            raise ValueError("changes= applies to resumed runs only.")
        self.model_cfg, self.cfg = model_cfg or GPTConfig(), train_cfg or TrainConfig()
        # a new run stores absolute local paths and a prepared folder's settings (data.resolve), whoever builds it
        self.data_cfg = data_cfg if resume else resolve(data_cfg or DataConfig())
        cfg = self.cfg
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {self.world} processes.")
        per_rank = cfg.batch_size // self.world
        self.micro = cfg.micro_batch_size or per_rank
        if per_rank % self.micro:
            raise ValueError(f"per-process batch {per_rank} is not divisible by micro_batch_size={self.micro}.")
        self.accum = per_rank // self.micro
        self.device = resolve_device(cfg.device, local_rank)
        if self.world > 1 and not dist.is_initialized():
            init_distributed(self.device)
        if self.world > 1:
            _agree_across_ranks(_config_dict(self.model_cfg, cfg, self.data_cfg), self.world)
        _rank0_decides(self.world, self.rank, lambda: check_installed(cfg.log_to))
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        check_model_training(self.model_cfg, cfg)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

        self._build_data(resume)

        torch.manual_seed(cfg.seed)
        self.model = build_model(self.model_cfg).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.step = 0
        try:
            _rank0_decides(self.world, self.rank, lambda: self._open_folder(resume))
            ckpt = latest_checkpoint(self.run_dir) if resume else None
            if ckpt is not None:
                load_model_weights(self.model, ckpt)
                self.model.to(self.device)
                self.step = load_optimizer_state(self.optimizer, ckpt)["step"]
            else:
                if resume:
                    self._check_nothing_lost()
                self._initial_weights()
            if resume and self.rank == 0:
                self.run.metrics.truncate(self.step)
        except BaseException:
            self.run.unlock()
            raise
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device]
                                                              if self.device.type == "cuda" else None)
                    if self.world > 1 else None)

    def _check_nothing_lost(self) -> None:
        """A resume that finds no checkpoint starts from step 0 and truncates the metrics: refuse when the
        log shows a checkpoint must have been written (``checkpoints/`` deleted), instead of retraining
        silently over the logged steps. A run killed before its first checkpoint resumes from 0, and so does
        one killed between step ``first``'s metrics row and its checkpoint (the row is written first): only a
        logged step past ``first`` proves that a checkpoint was written."""
        logged = [r["step"] for r in self.run.metrics.rows()]
        saved_steps = self.run.read_config()["train"].get("steps", self.cfg.steps)
        first = min(self.cfg.checkpoint_every, saved_steps)
        if logged and max(logged) > first:
            raise ValueError(f"{self.run.metrics.path} logs steps up to {max(logged)} but {self.run.checkpoints} "
                             f"holds no checkpoint (the first was due at step {first}); this run cannot be resumed: "
                             f"start over with a new --out (or delete {self.run_dir}).")

    # -- hooks (fine-tuning overrides them) -----------------------------------------------
    def _build_data(self, resume: bool) -> None:
        """Set ``tokenizer``, ``data`` (``.batch(step, batch_size, seed, rank, world) -> (x, y)``),
        ``corpus_description`` and ``data_summary`` (the epochs the run reads; a warning past a few); the
        model's vocabulary follows the tokenizer."""
        self.tokenizer, self.data, self.corpus_description = training_data(
            self.data_cfg, self.cfg.seq_len, self.run_dir if resume else None,
            self.model_cfg.vocab_size if resume else None)
        self.model_cfg.vocab_size = self.tokenizer.vocab_size
        self.data_summary = epochs_line(self.data, self.cfg.steps, self.cfg.batch_size)

    def _initial_weights(self) -> None:
        """Weights of a run without a checkpoint: the seeded initialization (pretraining)."""

    #: config.json sections besides model/train/data (fine-tuning adds "finetune")
    extra_sections: dict[str, Any] = {}

    # -- run folder ------------------------------------------------------------------------
    def _resumed_configs(self, changes: dict[str, Any]) -> tuple[GPTConfig, TrainConfig, DataConfig]:
        model_cfg, train_cfg, data_cfg = self.run.configs()
        allowed, refused = resume_changes(train_cfg, changes)
        if refused:
            raise ValueError(f"--resume continues the run with its saved settings; {', '.join(sorted(refused))} cannot "
                             f"change (only {', '.join(RESUMABLE)} may). Start a new run with another --out.")
        return model_cfg, replace(train_cfg, **allowed), data_cfg

    def _open_folder(self, resume: bool) -> None:
        """Rank 0: lock the folder, clean leftovers of killed writers, and (new run) write config and
        tokenizer -- config.json last, it marks a run -- or (resume) store the new step budget."""
        refuse_link(self.run.path)  # the run folder itself: a link would send the run outside
        if self.run.path.exists() and not self.run.path.is_dir():
            raise ValueError(f"--out {str(self.run.path)!r} is an existing file, not a run folder.")
        if resume:
            self.run.check_exists()
            if not self.run.has_run():
                raise ValueError(f"--resume: {str(self.run.path)!r} holds no run (no config.json).")
        else:
            from .runs import writing

            self._refuse_existing_run()  # before the lock: a refused start does not even rewrite .lock
            self._found = set(os.listdir(self.run.path)) if self.run.path.is_dir() else None

            with writing(self.run.path):
                self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.lock()
        if resume:
            ckpt = latest_checkpoint(self.run.path)
            done = read_state(ckpt)["step"] if ckpt is not None else 0
            if done > self.cfg.steps:
                raise ValueError(f"run {str(self.run.path)!r} is already at step {done}; --steps must be >= {done}, "
                                 f"got {self.cfg.steps} (nothing was changed).")
        if not resume:
            self._refuse_existing_run()  # again under the lock: another process may have started one
        self.run.clean_temporaries()
        if not resume:
            self.tokenizer.save(self.run.tokenizer_path)
        if not resume or self.run.configs()[1] != self.cfg:
            self.run.write_config(self.model_cfg, self.cfg, self.data_cfg, self.extra_sections)

    def _refuse_existing_run(self) -> None:
        if self.run.has_run():
            self.run.check_not_in_use()  # a run being written by another process: say so
            raise ValueError(f"run folder {str(self.run.path)!r} already holds a run; use --resume to continue it "
                             "or choose another --out (nothing was overwritten).")

    def _undo_start(self) -> None:
        """A new run that cannot start (a tracker refused) leaves nothing: remove what this start wrote
        (the whole folder if it created it)."""
        found = getattr(self, "_found", False)
        if self.resumed or self.step != 0 or found is False:
            return
        self.run.unlock()
        if found is None:
            shutil.rmtree(self.run.path, ignore_errors=True)
            return
        for name in set(os.listdir(self.run.path)) - found:
            p = self.run.path / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)

    def config_dict(self) -> dict[str, Any]:
        return _config_dict(self.model_cfg, self.cfg, self.data_cfg)

    # -- steps -----------------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def local_batch(self, step: int) -> tuple[torch.Tensor, ...]:
        """This rank's share of global batch ``step`` (rows ``rank, rank + world, ...``; read by this rank only):
        ``(x, y)``, or ``(x, y, positions)`` from data that sets its own position ids (a synthetic task's
        position scheme; None: ``0 .. n-1``)."""
        return self.data.batch(step, self.cfg.batch_size, self.cfg.seed, rank=self.rank, world=self.world)

    def forward_backward(self, step: int) -> float:
        """Gradients of the mean loss over this rank's micro-batches (all-reduced under DDP)."""
        net = self.ddp or self.model
        batch = self.local_batch(step)
        x, y = batch[0], batch[1]
        given = batch[2] if len(batch) > 2 else None
        total = 0.0
        for i in range(self.accum):
            xs = x[i * self.micro:(i + 1) * self.micro].to(self.device)
            ys = y[i * self.micro:(i + 1) * self.micro].to(self.device)
            last = i == self.accum - 1
            ctx = net.no_sync() if (self.ddp is not None and not last) else nullcontext()
            pos = (self.random_positions(step, i, xs.shape[0], xs.shape[1]) if given is None
                   else given[i * self.micro:(i + 1) * self.micro].to(self.device))
            with ctx:
                with self._autocast():  # backward outside autocast (it replays the forward's dtypes)
                    _, loss = net(xs, ys) if pos is None else net(xs, ys, positions=pos)
                (loss / self.accum).backward()
            total += loss.item() / self.accum
        if self.world > 1:
            t = torch.tensor([total], device=self.device)
            dist.all_reduce(t)
            total = t.item() / self.world
        return total

    def random_positions(self, step: int, micro: int, rows: int, tokens: int) -> torch.Tensor | None:
        """``[rows, tokens]`` sorted positions drawn from ``[0, M)`` without replacement per row
        (``cfg.random_positions = M``), the same for the same step, micro-batch and rank; None when off."""
        M = self.cfg.random_positions
        if M is None:
            return None
        g = torch.Generator().manual_seed(((self.cfg.seed * 1_000_003 + step) * 4099 + micro * 131 + self.rank)
                                          % (1 << 63))
        pos = torch.rand(rows, M, generator=g).topk(tokens, dim=1).indices.sort(dim=1).values
        return pos.to(self.device)

    def train_step(self) -> float:
        """One optimizer step; ``FloatingPointError`` (weights untouched) when the loss or the
        gradient norm is not finite."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(self.step)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not math.isfinite(loss) or not bool(torch.isfinite(norm)):
            what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {float(norm)}"
            raise FloatingPointError(f"{what} at step {self.step + 1}; lower --lr. The last checkpoint is kept.")
        self.optimizer.step()
        self.step += 1
        return loss

    def fit(self, callback: Callable[[int, float], None] | None = None) -> list[float]:
        """Train to ``cfg.steps``; the trackers of ``cfg.log_to`` are open during the loop and closed
        after it, also when it raises."""
        failed = True
        try:
            try:
                self.trackers = self._open_trackers()
            except BaseException:
                if self.rank == 0:
                    self._undo_start()
                raise
            losses = self._fit(callback)
            failed = False
            return losses
        finally:
            self.trackers.close(failed)
            self.run.unlock()

    def _open_trackers(self) -> Trackers:
        """Rank 0: start the trackers of ``cfg.log_to`` (ValueError on every rank when one cannot start)."""
        opened: list[Trackers] = []

        def start() -> None:
            run = TrackerRun(self.run_dir, project=self.cfg.log_project, group=self.log_group,
                             config=read_json(self.run.config_path), resumed=self.resumed, step=self.step)
            opened.append(open_trackers(self.cfg.log_to, run))

        if self.cfg.log_to and self.step < self.cfg.steps:  # a finished run logs nothing: no empty tracker run
            _rank0_decides(self.world, self.rank, start)
        return opened[0] if opened else Trackers()

    def _fit(self, callback: Callable[[int, float], None] | None) -> list[float]:
        cfg = self.cfg
        model_params = self.model.num_params()
        tokens_per_step = cfg.batch_size * cfg.seq_len
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or self.rank != 0,
                   desc=f"train {self.model_cfg.position}", unit="step", dynamic_ncols=True)
        losses, t0, done_tokens = [], time.perf_counter(), 0
        self.model.train()
        metrics = self.run.metrics
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
                metrics.append(row)  # the source of truth first, then the trackers (whose failures only warn)
                self.trackers.log(row)
            if self.rank == 0 and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, {"loss": loss},
                                keep=cfg.keep_checkpoints)
            if callback is not None:
                callback(self.step, loss)
        bar.close()
        self.tokens_per_s = done_tokens / max(time.perf_counter() - t0, 1e-9) if losses else None
        if self.world > 1:
            dist.barrier()
        return losses
