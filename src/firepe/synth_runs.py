"""What ``firepe synth`` trains and scores: a :class:`~firepe.train.Trainer` on a generated task
(:class:`SynthTrainer`, its vocabulary and endless data) and the exact-match scorer of a trained run
(:func:`score_synth_run`)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .config import DataConfig, GPTConfig, TrainConfig, dataclass_from_dict
from .loading import load_run
from .runs import RunFolder, write_json
from .tasks.ruler import by_depth
from .tasks.synthetic import SynthConfig, SynthTask, bin_of, distance_bins, make_task, score_batch
from .train import Trainer

__all__ = ["SynthTrainer", "SynthData", "SynthTokenizer", "synth_section", "score_synth_run", "eval_rows",
           "init_weights", "SYNTH_DEFAULTS", "TASK_DEFAULTS", "task_defaults", "MAX_EVAL_TOKENS", "MAX_LOGITS"]

#: training settings of ``firepe synth`` (measured: README); the model is the ``tiny`` preset
SYNTH_DEFAULTS = dict(seq_len=64, batch_size=32, steps=1500, lr=2e-3, warmup_steps=100, weight_decay=0.0,
                      checkpoint_every=500, log_every=50)
#: a task's own training defaults over :data:`SYNTH_DEFAULTS` (the recipes measured in docs/synthetic.md:
#: copy and reverse learn at length 32 with 3,000 steps, not at 64 with 1,500)
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"copy": dict(seq_len=32, steps=3000),
                                            "reverse": dict(seq_len=32, steps=3000),
                                            "addition": dict(steps=4000)}


def task_defaults(task: str, given: Any = ()) -> dict[str, Any]:
    """The training settings ``task`` changes from :data:`SYNTH_DEFAULTS`, less those the user gave
    (``given``: option names)."""
    return {k: v for k, v in TASK_DEFAULTS.get(task, {}).items() if k not in given}


class SynthTokenizer:
    """The vocabulary of a synthetic task (ids only); ``save`` writes its description."""

    def __init__(self, task: SynthTask):
        self.task, self.vocab_size = task, task.vocab_size

    def save(self, path: Path) -> None:
        write_json(path, {"type": "synthetic", "task": asdict(self.task.cfg), "vocab_size": self.vocab_size})


class SynthData:
    """``batch(step, batch_size, seed) -> (x, y, positions)``: generated anew for every step (never repeats);
    ``positions`` is None unless the task sets its own position ids."""

    def __init__(self, task: SynthTask, seq_len: int):
        self.task, self.seq_len = task, seq_len

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows ``rank, rank + world, ...`` of global batch ``step``."""
        x, y, pos = self.task.training_rows(batch_size, self.seq_len, seed, step)
        return x[rank::world], y[rank::world], None if pos is None else pos[rank::world]


def check_position_ids(synth: SynthConfig, train_cfg: TrainConfig, model_cfg: GPTConfig | None = None) -> None:
    """One line when a task's own position ids (``--position-ids``) meet ``--random-positions`` (both set
    the positions of a training row, so they are refused together, never silently one of them) or
    ``--arch llama`` (which takes no ``positions=``)."""
    if synth.position_ids == "default":
        return
    if model_cfg is not None and model_cfg.arch == "llama":
        raise ValueError(f"--position-ids {synth.position_ids} is not available with --arch llama (it takes no "
                         "position ids); use --arch gpt.")
    if train_cfg.random_positions is not None:
        raise ValueError(f"--random-positions does not combine with --position-ids {synth.position_ids}: both set "
                         "the training positions; pass one of them.")


def synth_section(cfg: dict[str, Any], where: str) -> SynthConfig:
    if "synth" not in cfg:
        raise ValueError(f"{where} holds no synthetic-task run (no 'synth' section).")
    return dataclass_from_dict(SynthConfig, cfg["synth"], f"{where} [synth]")


class SynthTrainer(Trainer):
    """A :class:`~firepe.train.Trainer` on a synthetic task: vocabulary and data from ``synth``; the
    ``data`` section of config.json is unused. Resume: ``SynthTrainer(run, resume=True, changes=...)``."""

    def __init__(self, run_dir: str | Path, synth: SynthConfig | None = None, model_cfg: GPTConfig | None = None,
                 train_cfg: TrainConfig | None = None, resume: bool = False, changes: dict[str, Any] | None = None,
                 log_group: str | None = None):
        if resume:
            run = RunFolder(run_dir)
            self.synth = synth_section(run.read_config(), str(run.config_path))
            super().__init__(run_dir, resume=True, changes=changes, log_group=log_group)
            return
        self.synth = synth or SynthConfig()
        train_cfg = train_cfg or TrainConfig(**{**SYNTH_DEFAULTS, **task_defaults(self.synth.task)})
        check_position_ids(self.synth, train_cfg, model_cfg)
        length = make_task(self.synth).checked_train_length(train_cfg.seq_len)
        if length != train_cfg.seq_len:
            train_cfg = replace(train_cfg, seq_len=length)
        super().__init__(run_dir, model_cfg, train_cfg, DataConfig(), log_group=log_group)

    @property
    def extra_sections(self) -> dict[str, Any]:  # type: ignore[override]
        return {"synth": asdict(self.synth)}

    def _initial_weights(self) -> None:
        super()._initial_weights()
        init_weights(self.model, self.synth)

    def _build_data(self, resume: bool) -> None:
        task = make_task(self.synth)
        self.tokenizer = SynthTokenizer(task)
        self.model_cfg.vocab_size = task.vocab_size
        self.corpus_description = f"synthetic {task.name}"
        self.data = SynthData(task, self.cfg.seq_len)


@torch.no_grad()
def init_weights(model: torch.nn.Module, synth: SynthConfig) -> None:
    """``--attn-std``/``--embed-std`` (when set): redraw the attention's q, k, v weights (their biases stay 0)
    and the token embedding (tied: the output layer too) from a normal of that std, in place, after the
    model's own seeded initialization; position encodings keep theirs."""
    pos = {id(p) for m in model.position_modules() for p in m.parameters()}
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if id(p) not in pos]
        if synth.embed_std is not None and isinstance(mod, torch.nn.Embedding) and own:
            torch.nn.init.normal_(mod.weight, std=synth.embed_std)
        elif synth.attn_std is not None and isinstance(mod, torch.nn.Linear) and own and \
                name.endswith(("attn.qkv", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
            torch.nn.init.normal_(mod.weight, std=synth.attn_std)


#: most evaluation tokens per level (rows x length) and most logits per forward pass (rows x length x vocab)
MAX_EVAL_TOKENS = 1 << 24
MAX_LOGITS = 1 << 27


def eval_rows(task: SynthTask, examples: int, length: int) -> int:
    rows = max(1, math.ceil(examples / task.answers_per_row()))
    if rows * length > MAX_EVAL_TOKENS:
        raise ValueError(f"--examples {examples} at length {length} would score {rows * length:,} tokens; at most "
                         f"{MAX_EVAL_TOKENS:,} per length: pass fewer --examples or shorter --lengths.")
    return rows


@torch.no_grad()
def score_synth_run(run_dir: str | Path, task: SynthTask, levels: list[int], examples: int = 256,
                    device: str = "cpu", batch_tokens: int = 32768) -> list[dict[str, Any]]:
    """Accuracy (exact match of every answer) of a trained run at every level, on the fixed evaluation
    examples. Recall counts the first query of each key (``accuracy_all_queries``: every query) and adds
    ``by_distance`` (those answers by binding-query distance, power-of-two bins); the RULER needle tasks add
    ``by_depth`` (answers by the depth of their needle in the context, bins 0-20%, ..., 80-100%)."""
    model, _ = load_run(run_dir, device)
    dev = next(model.parameters()).device
    out = []
    for level in levels:
        n = task.length_of(level)
        rows = eval_rows(task, examples, n)
        tokens, answer, extra = task.eval_batch(rows, level)
        chunk = max(1, min(batch_tokens // n, MAX_LOGITS // (n * task.vocab_size)))
        correct = []
        t0 = time.perf_counter()
        for i in range(0, rows, chunk):
            pos = extra["positions"][i:i + chunk].to(dev) if "positions" in extra else None  # the task's ids
            logits, _ = model(tokens[i:i + chunk].to(dev), positions=pos)
            correct.append(score_batch(logits.cpu(), tokens[i:i + chunk], answer[i:i + chunk]))
        ok = torch.cat(correct).flatten()  # row-major: the order of ``answer >= 0`` below
        seconds = time.perf_counter() - t0
        res = {"level": level, "length": n, "tokens": rows * n, "tokens_per_s": rows * n / max(seconds, 1e-9)}
        if "first" in extra:
            first = extra["first"][answer >= 0]
            res["accuracy_all_queries"] = 100.0 * float(ok.float().mean())
            dist = extra["distance"][answer >= 0][first]
            ok = ok[first]
            edges = distance_bins(n)
            bins = [[0, 0] for _ in edges]
            for d, c in zip(dist.tolist(), ok.tolist()):
                b = bins[bin_of(d, edges)]
                b[0] += int(c)
                b[1] += 1
            res["by_distance"] = [{"max_distance": e, "correct": c, "answers": a} for e, (c, a) in zip(edges, bins)]
        if "depth" in extra:  # the RULER needle tasks: answers by the depth of their needle, 5 bins
            res["by_depth"] = by_depth(extra["depth"], answer, ok)
        res.update(correct=int(ok.sum()), answers=ok.numel(), accuracy=100.0 * float(ok.float().mean()))
        out.append(res)
    return out
