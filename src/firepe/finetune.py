"""Fine-tuning a trained run on a task (the paper's Sec. 4.2-4.4, Tables 10 and 12).

``FinetuneTrainer(out, base_run, FinetuneConfig, TrainConfig)`` starts from the base run's latest
checkpoint (weights, tokenizer, model configuration) and trains on ``prompt + answer`` sequences
with the loss on the answer tokens (and the end-of-document token after them) only: every other
target is :data:`~firepe.model.IGNORE_INDEX`. It is a :class:`~firepe.train.Trainer`, so the run
folder, checkpoints, ``--resume``, ``torchrun``, the progress bar (tokens/s) and the error contract
are those of ``firepe train``; ``config.json`` gains a ``finetune`` section naming the base run.

Sequences: one example per row, right-padded to ``seq_len`` (padding is never a target; causal
attention never lets a token see the padding after it). Inputs longer than ``seq_len`` lose their
end (see :mod:`firepe.tasks.base`). A mixture (``--task glue``) is the union of its tasks'
examples, shuffled together (the paper's GLUE/SuperGLUE mixture). Passkey examples are generated
on the fly at ``seq_len`` with a uniformly random depth and the corpus's *training* split as filler
(scoring uses the validation split).

Model options that depend on the target length may change (``position_options``: RoPE-PI's or
YaRN's ``factor`` from 2048 to 8192 as in the paper's RoPE-PI rows), as may ``dropout`` and the
attention backend; an option stored in the checkpoint (a learned or saved value, e.g. FIRE's
``init_L``) cannot.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import latest_checkpoint, load_model_weights, read_state
from .config import DataConfig, GPTConfig, TrainConfig, dataclass_from_dict, field_help
from .data import EpochOrder, load_tokenizer
from .model import IGNORE_INDEX
from .runs import RunFolder
from .tasks import PasskeyTask, Prepared, check_task_files, expand_tasks, load_task, prepare
from .tasks.passkey import corpus_filler
from .train import Trainer

__all__ = ["FinetuneConfig", "FinetuneData", "FinetuneTrainer", "finetune_model_config", "task_data",
           "finetune_section", "FINETUNE_DEFAULTS"]


@dataclass
class FinetuneConfig:
    """What a fine-tuning run trains on; saved as ``config.json["finetune"]``."""

    task: str = field(default="passkey", metadata=field_help("task spec (see firepe.tasks)", cli=False))
    split: str = field(default="train", metadata=field_help("dataset split of Hugging Face tasks"))
    task_files: str | None = field(default=None, metadata=field_help(
        "local copies (json/jsonl/parquet/csv, joined by ',') of a Hugging Face task"))
    limit: int | None = field(default=None, metadata=field_help("use the first N examples of each task"))
    filler: str = field(default="corpus", metadata=field_help("passkey filler: corpus | classic",
                                                         choices=("corpus", "classic")))
    base_run: str = field(default="", metadata=field_help("the run fine-tuned from (absolute path)", cli=False))
    base_step: int = field(default=0, metadata=field_help("its checkpoint step", cli=False))

    def __post_init__(self) -> None:
        expand_tasks(self.task)
        if not isinstance(self.split, str) or not self.split.strip():
            raise ValueError(f"split must be a dataset split name (train, validation, ...), got {self.split!r}.")
        if self.limit is not None and (not isinstance(self.limit, int) or isinstance(self.limit, bool)
                                       or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}.")
        if self.filler not in ("corpus", "classic"):
            raise ValueError(f"filler must be corpus or classic, got {self.filler!r}.")
        check_task_files(expand_tasks(self.task), self.task_files)

    def resolved(self) -> FinetuneConfig:
        """This config with local paths made absolute (:meth:`absolute_task`, :meth:`absolute_files`), so a
        run resumed from another directory reads the same files. A new fine-tuning run stores this."""
        return replace(self, task=self.absolute_task(self.task), task_files=self.absolute_files(self.task_files))

    @staticmethod
    def absolute_task(task: str) -> str:
        """``jsonl:PATH`` / ``parquet:PATH`` entries of a task spec with absolute paths."""
        expand_tasks(task)
        items = []
        for item in (t.strip() for t in task.split(",")):
            kind, _, rest = item.partition(":")
            items.append(f"{kind}:{Path(rest).resolve()}" if kind in ("jsonl", "parquet") else item)
        return ",".join(items)

    @staticmethod
    def absolute_files(files: str | None) -> str | None:
        """``task_files`` items made absolute (globs too)."""
        return ",".join(str(Path(p.strip()).resolve()) for p in files.split(",") if p.strip()) if files else files


#: passkey keys of fine-tuning come from this seed (scoring uses 0 by default: other keys)
TRAIN_PASSKEY_SEED = 1_000_000

#: fine-tuning defaults (the paper's Tables 10/12 use lr 1e-5 and dropout 0.1 at batch 128/256 for 25k
#: steps; constant learning rate after the warm-up)
FINETUNE_DEFAULTS = dict(lr=1e-5, min_lr_ratio=1.0, warmup_steps=0, steps=1000, batch_size=16, checkpoint_every=500)


class FinetuneData(EpochOrder):
    """``batch(step, batch_size, seed) -> (x, y)`` of padded ``[B, seq_len]`` rows; ``y`` is the next
    token on the answer span and ``IGNORE_INDEX`` elsewhere. ``rows``: a list of prepared
    examples (shuffled per epoch, as pretraining's sequences) or a passkey generator
    (``example(i)`` for any ``i``)."""

    def __init__(self, seq_len: int, pad_id: int, rows: list[Prepared] | None = None,
                 passkey: PasskeyTask | None = None):
        if (rows is None) == (passkey is None):
            raise ValueError("FinetuneData needs rows or a passkey task (one of them).")
        if rows is not None and not rows:
            raise ValueError("the fine-tuning task has no examples.")
        self.seq_len, self.pad_id, self.rows, self.passkey = seq_len, pad_id, rows, passkey
        if rows is not None:
            self.num_sequences = len(rows)

    def _examples(self, step: int, batch_size: int, seed: int) -> list[Prepared]:
        if self.passkey is None:
            return [self.rows[i] for i in self.indices(step, batch_size, seed).tolist()]
        out = []
        for i in range(step * batch_size, (step + 1) * batch_size):
            depth = random.Random(f"depth:{seed}:{i}").random()
            out.append(self.passkey.example(i + 100_000_000 * seed, self.seq_len, depth, for_training=True))
        return out

    def row(self, ex: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """One example -> ``x, y`` of ``seq_len`` tokens (answer targets only)."""
        seq = ex.prompt + ex.answer
        if len(seq) > self.seq_len + 1:
            raise ValueError(f"example {ex.id!r} has {len(seq)} tokens, more than seq_len + 1 = {self.seq_len + 1}.")
        x = torch.full((self.seq_len,), self.pad_id, dtype=torch.long)
        y = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        x[:len(seq) - 1] = torch.tensor(seq[:-1])
        start = len(ex.prompt) - 1  # target t is token t + 1: the first answer token is predicted here
        y[start:len(seq) - 1] = torch.tensor(ex.answer)
        return x, y

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rank, rank + world, ...`` of global batch ``step``."""
        rows = [self.row(ex) for ex in self._examples(step, batch_size, seed)][rank::world]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def task_data(ft: FinetuneConfig, tokenizer, data_cfg: DataConfig, seq_len: int) -> tuple[FinetuneData, str]:
    """The training data of ``ft`` and a one-line description."""
    specs = expand_tasks(ft.task)
    if specs == ["passkey"]:
        filler = corpus_filler(data_cfg, tokenizer, "train") if ft.filler == "corpus" else None
        task = PasskeyTask(tokenizer, filler, seed=TRAIN_PASSKEY_SEED)
        task.example(0, seq_len, 0.5, for_training=True)  # fits seq_len, else one clear error
        return (FinetuneData(seq_len, tokenizer.eos_id, passkey=task),
                f"task passkey: generated at {seq_len} tokens, random depth, filler {ft.filler}")
    rows: list[Prepared] = []
    counts = []
    for spec in specs:
        task = load_task(spec, ft.split, data_files=ft.task_files, limit=ft.limit)
        prepared = prepare(task.examples, tokenizer, seq_len, for_training=True, task=spec)
        # several references: one training row per reference (the first is the answer of prepare)
        for ex, p in zip(task.examples, prepared):
            rows.append(p)
            for extra in ex.outputs[1:]:
                ans = tokenizer.encode(extra) + [tokenizer.eos_id]
                if len(p.prompt) + len(ans) <= seq_len + 1:
                    rows.append(replace(p, answer=ans))
        counts.append(f"{spec} {len(task.examples)}")
    cut = sum(1 for r in rows if r.truncated)
    return (FinetuneData(seq_len, tokenizer.eos_id, rows=rows),
            f"task {ft.task}: {len(rows)} training rows ({', '.join(counts)} examples; {cut} inputs cut to fit)")


def finetune_model_config(base: GPTConfig, dropout: float | None = None, attention: str | None = None,
                          position_options: dict[str, Any] | None = None, position: str | None = None) -> GPTConfig:
    """The base run's model configuration with what fine-tuning may change: dropout, the attention
    backend, encoding options (merged over the base's) and the encoding itself (``position``, e.g.
    ``rope`` -> ``rope_pi`` with ``factor=4``: Chen et al.'s position interpolation of a pretrained
    RoPE model, the paper's RoPE-PI rows; its options are then the given ones only).

    A change is refused when the new encoding's checkpoint state differs from the base's (other
    parameter names or shapes, or a persistent buffer with another value, e.g. FIRE's ``init_L``):
    the fine-tuned model would silently load the base's values over the new ones.
    """
    changes: dict[str, Any] = {}
    if dropout is not None:
        changes["dropout"] = dropout
    if attention is not None:
        changes["attention"] = attention
    cfg = replace(base, **changes)
    if not position_options and (position is None or position == base.position):
        return cfg
    new_position = position or base.position
    opts = dict(position_options or {}) if new_position != base.position else {**base.position_options,
                                                                               **(position_options or {})}
    cfg = replace(cfg, position=new_position, position_options=opts)  # validates the options
    from . import positions

    torch.manual_seed(0)
    old = positions.build(base.position, num_heads=base.n_head, head_dim=base.head_dim, **base.position_options)
    torch.manual_seed(0)
    new = positions.build(cfg.position, num_heads=cfg.n_head, head_dim=cfg.head_dim, **cfg.position_options)
    a, b = old.state_dict(), new.state_dict()
    stored = sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k].shape != b[k].shape
                    or not torch.equal(a[k], b[k]))
    if stored:
        what = (f"position option(s) {', '.join(sorted(position_options or {}))} of {base.position!r}"
                if new_position == base.position else f"changing {base.position!r} to {new_position!r}")
        raise ValueError(f"{what} would change values stored in the checkpoint ({', '.join(stored)}); fine-tuning "
                         "keeps them. Only what the checkpoint does not store may change (e.g. rope -> rope_pi, "
                         "the RoPE-PI/YaRN factor).")
    return cfg


class FinetuneTrainer(Trainer):
    """A :class:`~firepe.train.Trainer` whose data is a task and whose first weights are the base run's.

    New run: ``FinetuneTrainer(out, base_run=..., finetune=FinetuneConfig(task=...), train_cfg=...,
    model_changes={"dropout": 0.1, ...})``. Resume: ``FinetuneTrainer(out, resume=True, changes=...)``.
    ``log_group``: the group of its ``--log-to`` tracker runs (see :class:`~firepe.train.Trainer`).
    """

    def __init__(self, run_dir: str | Path, base_run: str | Path | None = None,
                 finetune: FinetuneConfig | None = None, train_cfg: TrainConfig | None = None,
                 model_changes: dict[str, Any] | None = None, resume: bool = False,
                 changes: dict[str, Any] | None = None, log_group: str | None = None):
        if resume:
            cfg = RunFolder(run_dir).read_config() if RunFolder(run_dir).has_run() else {}
            if cfg and "finetune" not in cfg:
                raise ValueError(f"--resume: {str(run_dir)!r} is a pretraining run, not a fine-tuning run; "
                                 "continue it with firepe train --resume.")
            self.ft = finetune_section(cfg, f"{run_dir}/config.json [finetune]") if cfg else FinetuneConfig()
            self.base_ckpt = None
            super().__init__(run_dir, resume=True, changes=changes, log_group=log_group)
            return
        if base_run is None:
            raise ValueError("fine-tuning needs the run to start from (base_run).")
        base = RunFolder(base_run)
        base.check_exists()
        if not base.has_run():
            raise ValueError(f"{str(base_run)!r} is not a firepe run folder (no config.json); pass the folder "
                             "of a trained run.")
        if Path(run_dir).resolve() == base.path.resolve():
            raise ValueError("--out must be a new folder, not the run fine-tuned from (it would be overwritten).")
        base_model, base_train, base_data = base.configs()
        self.base_ckpt = latest_checkpoint(base.path)
        if self.base_ckpt is None:
            raise ValueError(f"run {str(base_run)!r} has no checkpoint yet; train it first.")
        state = read_state(self.base_ckpt)
        self.base_dir = base.path
        ft = finetune or FinetuneConfig()
        self.ft = replace(ft.resolved(), base_run=str(base.path.resolve()), base_step=state["step"])
        train_cfg = train_cfg or TrainConfig(**{**{f.name: getattr(base_train, f.name) for f in fields(TrainConfig)
                                                   if f.name in ("seq_len", "device", "threads", "precision")},
                                                **FINETUNE_DEFAULTS})
        model_cfg = finetune_model_config(base_model, **(model_changes or {}))
        super().__init__(run_dir, model_cfg, train_cfg, base_data, log_group=log_group)

    @property
    def extra_sections(self) -> dict[str, Any]:  # type: ignore[override]
        return {"finetune": asdict(self.ft)}

    def _build_data(self, resume: bool) -> None:
        source = self.run_dir if resume else self.base_dir
        self.tokenizer = load_tokenizer(source, self.data_cfg, self.model_cfg.vocab_size)
        self.data, self.corpus_description = task_data(self.ft, self.tokenizer, self.data_cfg, self.cfg.seq_len)

    def _initial_weights(self) -> None:
        ckpt = self.base_ckpt
        if ckpt is None:  # a resumed fine-tuning run stopped before its first checkpoint: the step it started
            base = Path(self.ft.base_run)  # from (kept after the base run went on, when keep_checkpoints allows)
            ckpt = base / "checkpoints" / f"step-{self.ft.base_step:07d}"
            if not ckpt.is_dir():
                raise ValueError(f"the base run {str(base)!r} no longer has its step-{self.ft.base_step} checkpoint; "
                                 "start the fine-tuning again with a new --out.")
            read_state(ckpt)
        load_model_weights(self.model, ckpt)
        self.model.to(self.device)


def finetune_section(cfg: dict[str, Any], where: str) -> FinetuneConfig:
    """``cfg["finetune"]`` (a run's config.json) checked: the fields of :class:`FinetuneConfig`, of which
    ``task``, ``base_run`` (an absolute path) and ``base_step`` must be present -- a default there would
    continue on another task or from another run."""
    section = cfg["finetune"]
    if isinstance(section, dict):
        missing = [k for k in ("task", "base_run", "base_step") if k not in section]
        if missing:
            raise ValueError(f"{where}: the required key {missing[0]!r} is missing; the run folder is damaged.")
    ft = dataclass_from_dict(FinetuneConfig, section, where)
    if not Path(ft.base_run).is_absolute():
        raise ValueError(f"{where}: base_run must be the absolute path of the run fine-tuned from, got "
                         f"{ft.base_run!r}.")
    return ft
