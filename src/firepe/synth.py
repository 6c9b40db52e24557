"""``firepe synth``: every encoding trained from scratch on a synthetic task, scored from 1x to 16x.

``synth(out, specs, model, train_cfg, task_cfg, seeds=[0, 1, 2])`` trains ``out/<label>`` (one
seed) or ``out/<label>/seed-<s>`` (several) for every encoding spec and seed on the same generated
data (a seed fixes the initialization and the data order; the evaluation examples are fixed by
``task_cfg.eval_seed``), scores each at every level (sequence length; addition: digits) by one
teacher-forced pass, and writes ``out/results.json``, ``results.csv``, ``results.md`` (mean +- std
over seeds, paired per-seed differences), ``accuracy.png`` (mean with a +-1 std band) and for
recall ``recall_<label>.png`` (length x distance heat map). Finished runs are reused, unfinished
ones resumed, as in ``compare``.

Table marks (per column): **bold** = highest mean; ``*`` = best (ties included) in every seed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .compare import check_not_past, check_same_settings, log_group, train_or_reuse
from .config import DataConfig, GPTConfig, TrainConfig, dataclass_from_dict
from .limits import MAX_LENGTH, check_at_most
from .loading import load_run, resolve_device
from .positions import Spec, parse_spec, training_options
from .runs import RunFolder, refuse_links_below, write_json, write_text, writing
from .seeds import format_seed_table, parse_seeds, seed_table
from .tasks.synthetic import SynthConfig, SynthTask, bin_of, distance_bins, score_batch
from .tracking import check_installed
from .train import Trainer

__all__ = ["SynthTrainer", "synth", "score_synth_run", "parse_seeds", "format_synth", "SYNTH_DEFAULTS"]

#: training settings of ``firepe synth`` (measured: README); the model is the ``tiny`` preset
SYNTH_DEFAULTS = dict(seq_len=64, batch_size=32, steps=1500, lr=2e-3, warmup_steps=100, weight_decay=0.0,
                      checkpoint_every=500, log_every=50)


class SynthTokenizer:
    """The vocabulary of a synthetic task (ids only); ``save`` writes its description."""

    def __init__(self, task: SynthTask):
        self.task, self.vocab_size = task, task.vocab_size

    def save(self, path: Path) -> None:
        write_json(path, {"type": "synthetic", "task": asdict(self.task.cfg), "vocab_size": self.vocab_size})


class SynthData:
    """``batch(step, batch_size, seed) -> (x, y)``: generated anew for every step (never repeats)."""

    def __init__(self, task: SynthTask, seq_len: int):
        self.task, self.seq_len = task, seq_len

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rank, rank + world, ...`` of global batch ``step``."""
        x, y = self.task.training_rows(batch_size, self.seq_len, seed, step)
        return x[rank::world], y[rank::world]


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
        train_cfg = train_cfg or TrainConfig(**SYNTH_DEFAULTS)
        length = SynthTask(self.synth).checked_train_length(train_cfg.seq_len)
        if length != train_cfg.seq_len:
            train_cfg = replace(train_cfg, seq_len=length)
        super().__init__(run_dir, model_cfg, train_cfg, DataConfig(), log_group=log_group)

    @property
    def extra_sections(self) -> dict[str, Any]:  # type: ignore[override]
        return {"synth": asdict(self.synth)}

    def _build_data(self, resume: bool) -> None:
        task = SynthTask(self.synth)
        self.tokenizer = SynthTokenizer(task)
        self.model_cfg.vocab_size = task.vocab_size
        self.corpus_description = f"synthetic {task.name}"
        self.data = SynthData(task, self.cfg.seq_len)


#: most evaluation tokens per level (rows x length) and most logits per forward pass (rows x length x vocab)
MAX_EVAL_TOKENS = 1 << 24
MAX_LOGITS = 1 << 27


def _eval_rows(task: SynthTask, examples: int, length: int) -> int:
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
    ``by_distance`` (those answers by binding-query distance, power-of-two bins)."""
    model, _ = load_run(run_dir, device)
    dev = next(model.parameters()).device
    out = []
    for level in levels:
        n = task.addition_length(level) if task.name == "addition" else level
        rows = _eval_rows(task, examples, n)
        tokens, answer, extra = task.eval_batch(rows, level)
        chunk = max(1, min(batch_tokens // n, MAX_LOGITS // (n * task.vocab_size)))
        correct = []
        t0 = time.perf_counter()
        for i in range(0, rows, chunk):
            logits, _ = model(tokens[i:i + chunk].to(dev))
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
        res.update(correct=int(ok.sum()), answers=ok.numel(), accuracy=100.0 * float(ok.float().mean()))
        out.append(res)
    return out


def _plan_folder(out: Path, label: str, seed: int, several: bool) -> RunFolder:
    return RunFolder(out / label / f"seed-{seed}" if several else out / label)


def synth(out: str | Path, specs: list[str | Spec], model: GPTConfig, train_cfg: TrainConfig, task_cfg: SynthConfig,
          seeds: list[int], levels: list[int] | None = None, max_factor: int = 16, examples: int = 256,
          log=print) -> dict[str, Any]:
    out = Path(out)
    if not specs:
        raise ValueError("no encodings to train; pass e.g. --encodings nope,rope,fire.")
    if not seeds:
        raise ValueError("no seeds; pass --seeds N or a list like 0,1,2.")
    if not isinstance(examples, int) or isinstance(examples, bool) or not 1 <= examples <= 1_000_000:
        raise ValueError(f"--examples must be an integer in [1, 1000000], got {examples!r}.")
    parsed = [s if isinstance(s, Spec) else parse_spec(s) for s in specs]
    labels = [s.label for s in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}; give each spec a label=...")
    task = SynthTask(task_cfg)
    train_len = task.checked_train_length(train_cfg.seq_len)
    train_cfg = replace(train_cfg, seq_len=train_len)
    if not isinstance(max_factor, int) or isinstance(max_factor, bool) or not 1 <= max_factor <= MAX_LENGTH:
        raise ValueError(f"--max-factor must be an integer in [1, {MAX_LENGTH}], got {max_factor!r}.")
    levels = levels or task.levels(train_len, max_factor)
    for lv in levels:
        task.check_level(lv, "digits" if task.name == "addition" else "length")
        n = task.addition_length(lv) if task.name == "addition" else lv
        check_at_most(n, f"the scored length {n}", MAX_LENGTH, " tokens")
        _eval_rows(task, examples, n)
    check_installed(train_cfg.log_to)
    group = log_group(out)
    several = len(seeds) > 1
    plans = []
    for spec in parsed:  # refuse before training (or creating) anything
        opts = training_options(spec.position, spec.options, train_len)
        mcfg = replace(model, position=spec.position, position_options=opts, vocab_size=task.vocab_size)
        for seed in seeds:
            run, tcfg = _plan_folder(out, spec.label, seed, several), replace(train_cfg, seed=seed)
            refuse_links_below(out, run.path)
            if run.has_run():
                check_same_settings(run, mcfg, tcfg, DataConfig())
                saved = synth_section(run.read_config(), str(run.config_path))
                if replace(saved, eval_seed=task_cfg.eval_seed) != task_cfg:  # the evaluation set may change
                    raise ValueError(f"{run.path} holds a run on another task ({saved.task} {asdict(saved)}); use "
                                     "another --out or remove that folder.")
                check_not_past(run, tcfg.steps, "--steps")
            plans.append((spec, opts, seed, run, mcfg, tcfg))
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    runs = []
    t_all = time.perf_counter()
    for spec, opts, seed, run, mcfg, tcfg in plans:
        t0 = time.perf_counter()
        name = f"{spec.label} seed {seed}"
        fitted = train_or_reuse(run, tcfg, f"{spec.position} {opts or ''}", SynthTrainer, (task_cfg, mcfg, tcfg),
                                name, group, log)
        tok_s = fitted[0].tokens_per_s if fitted is not None else None
        if fitted is not None:
            trainer, losses = fitted
            last = f"{losses[-1]:.4f}" if losses else "n/a"
            log(f"[{name}] trained to step {trainer.step} in {time.perf_counter() - t0:.0f} s: "
                f"last loss {last}" + (f", {tok_s:,.0f} tokens/s" if tok_s else ""))
        t1 = time.perf_counter()
        scores = score_synth_run(run.path, task, levels, examples, device=str(resolve_device(tcfg.device)))
        seconds = time.perf_counter() - t1
        tokens = sum(s["tokens"] for s in scores)
        log(f"[{spec.label} seed {seed}] scored {tokens:,} tokens in {seconds:.1f} s ({tokens / seconds:,.0f} "
            "tokens/s): " + " ".join(f"{s['level']}:{s['accuracy']:.1f}%" for s in scores))
        runs.append({"label": spec.label, "position": spec.position, "options": opts, "seed": seed,
                     "run": str(run.path), "train_tokens_per_s": tok_s, "results": scores})
    summary = {"task": asdict(task_cfg), "train_len": train_len, "level_name": _level_name(task),
               "levels": levels, "seeds": seeds, "steps": train_cfg.steps, "examples": examples,
               "model": {k: v for k, v in model.to_dict().items() if k not in ("position", "position_options")},
               "random_positions": train_cfg.random_positions,
               "wall_seconds": time.perf_counter() - t_all, "runs": runs}
    summary["table"] = aggregate(summary)
    text = format_synth(summary)
    log(text)
    write_synth(out, summary, text)
    return summary


def _level_name(task: SynthTask) -> str:
    return "digits" if task.name == "addition" else "length"


def aggregate(summary: dict[str, Any]) -> dict[str, Any]:
    """:func:`firepe.seeds.seed_table` of the accuracies (reference ``fire`` if present)."""
    labels = list(dict.fromkeys(r["label"] for r in summary["runs"]))
    acc = {(r["label"], r["seed"], s["level"]): s["accuracy"] for r in summary["runs"] for s in r["results"]}
    return seed_table(acc, labels, summary["seeds"], summary["levels"], higher_is_better=True, reference="fire")


def format_synth(summary: dict[str, Any]) -> str:
    """Markdown: accuracy (%) mean ± std over seeds (**bold** highest mean, ``*`` best in every seed), then
    the reference minus each encoding, paired per seed."""
    name = summary["level_name"]
    train = summary["task"]["digits"] if name == "digits" else summary["train_len"]
    return format_seed_table(summary["table"], summary["levels"], lambda lv: f"{lv} ({lv / train:g}x)", 1, True,
                             len(summary["seeds"]), "accuracy points")


def write_synth(out: Path, summary: dict[str, Any], text: str) -> None:
    write_json(out / "results.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "position", "seed", summary["level_name"], "length", "accuracy", "correct", "answers"])
    for r in summary["runs"]:
        for s in r["results"]:
            w.writerow([r["label"], r["position"], r["seed"], s["level"], s["length"], f"{s['accuracy']:.4f}",
                        s["correct"], s["answers"]])
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", text + "\n")
    from .plots import synth_accuracy, synth_distance_heatmap

    synth_accuracy(summary, out / "accuracy.png")
    if summary["task"]["task"] == "recall":
        for lab in summary["table"]["cells"]:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in lab)
            synth_distance_heatmap(summary, lab, out / f"recall_{safe}.png")

