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

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .config import DataConfig, GPTConfig, TrainConfig
from .experiment import Sweep, fit_logged, write_results
from .limits import MAX_LENGTH, check_at_most
from .loading import resolve_device
from .positions import Spec
from .seeds import format_seed_table, seed_table
from .synth_runs import SYNTH_DEFAULTS, SynthTrainer, check_position_ids, eval_rows, score_synth_run, synth_section
from .tasks.synthetic import SynthConfig, make_task

__all__ = ["synth", "synth_levels", "aggregate", "format_synth", "write_synth", "heat_map_name", "HEAT_MAPS",
           "SYNTH_DEFAULTS"]


def synth(out: str | Path, specs: list[str | Spec], model: GPTConfig, train_cfg: TrainConfig, task_cfg: SynthConfig,
          seeds: list[int], levels: list[int] | None = None, max_factor: int = 16, examples: int = 256,
          log=print, check_only: bool = False) -> dict[str, Any]:
    """See the module docstring; ``check_only``: every check (settings, folders), nothing trained or
    written, ``{}`` returned (``firepe suite`` checks every task before the first trains)."""
    if not specs:
        raise ValueError("no encodings to train; pass e.g. --encodings nope,rope,fire.")
    if not seeds:
        raise ValueError("no seeds; pass --seeds N or a list like 0,1,2.")
    if not isinstance(examples, int) or isinstance(examples, bool) or not 1 <= examples <= 1_000_000:
        raise ValueError(f"--examples must be an integer in [1, 1000000], got {examples!r}.")
    check_position_ids(task_cfg, train_cfg, model)
    task = make_task(task_cfg)
    train_len = task.checked_train_length(train_cfg.seq_len)
    train_cfg = replace(train_cfg, seq_len=train_len)
    if not isinstance(max_factor, int) or isinstance(max_factor, bool) or not 1 <= max_factor <= MAX_LENGTH:
        raise ValueError(f"--max-factor must be an integer in [1, {MAX_LENGTH}], got {max_factor!r}.")
    levels = levels or task.levels(train_len, max_factor)
    for lv in levels:
        task.check_level(lv, task.level_name)
        n = task.length_of(lv)
        check_at_most(n, f"the scored length {n}", MAX_LENGTH, " tokens")
        eval_rows(task, examples, n)
    sweep = Sweep(out, specs, seeds, train_cfg.log_to, what="train", name_seed=True)

    def same_task(cell) -> None:
        if cell.run.has_run():
            cfg = cell.run.read_config()
            saved = synth_section(cfg, str(cell.run.config_path))
            # a run from before --attn-std/--embed-std started from the model's own initialization, whatever the
            # defaults now fill in for its task (recall split): it is not the run these settings would train
            older = [f"--{n.replace('_', '-')}" for n in ("attn_std", "embed_std")
                     if n not in cfg["synth"] and getattr(task_cfg, n) is not None]
            if older:
                raise ValueError(f"{cell.run.path} holds a run trained before {' and '.join(older)} existed (the "
                                 "model's own initialization), not with this task's; use another --out or remove "
                                 "that folder.")
            if replace(saved, eval_seed=task_cfg.eval_seed) != task_cfg:  # the evaluation set may change
                raise ValueError(f"{cell.run.path} holds a run on another task ({saved.task} {asdict(saved)}); use "
                                 "another --out or remove that folder.")

    cells = sweep.plan(model, train_cfg, DataConfig(), same_task, vocab_size=task.vocab_size)
    if check_only:
        return {}
    sweep.create()
    runs = []
    t_all = time.perf_counter()
    for cell in cells:
        trainer = sweep.train(cell, SynthTrainer, (task_cfg, cell.model, cell.train), log)
        if trainer is not None:
            fit_logged(trainer, cell.name, log, "trained")
        t1 = time.perf_counter()
        scores = score_synth_run(cell.run.path, task, levels, examples, device=str(resolve_device(cell.train.device)))
        seconds = time.perf_counter() - t1
        tokens = sum(s["tokens"] for s in scores)
        log(f"[{cell.name}] scored {tokens:,} tokens in {seconds:.1f} s ({tokens / seconds:,.0f} "
            "tokens/s): " + " ".join(f"{s['level']}:{s['accuracy']:.1f}%" for s in scores))
        runs.append({"label": cell.spec.label, "position": cell.spec.position, "options": cell.options,
                     "seed": cell.seed, "run": str(cell.run.path),
                     "train_tokens_per_s": trainer.tokens_per_s if trainer is not None else None, "results": scores})
    summary = {"task": asdict(task_cfg), "train_len": train_len, "level_name": task.level_name,
               "levels": levels, "seeds": sweep.seeds, "steps": train_cfg.steps, "examples": examples,
               "model": {k: v for k, v in model.to_dict().items() if k not in ("position", "position_options")},
               "random_positions": train_cfg.random_positions,
               "wall_seconds": time.perf_counter() - t_all, "runs": runs}
    summary["table"] = aggregate(summary)
    text = format_synth(summary)
    log(text)
    write_synth(sweep.out, summary, text)
    return summary


def synth_levels(task_cfg: SynthConfig, lengths: str | None) -> list[int] | None:
    """``--lengths`` of ``synth``: scored lengths, or digit counts for addition (None: the task's default)."""
    from .evaluate import parse_lengths

    if not lengths:
        return None
    if task_cfg.task != "addition":
        return parse_lengths(lengths)
    try:
        return [int(x) for x in lengths.split(",")]
    except ValueError:
        raise ValueError(f"--lengths of addition are digit counts like 8,16,32, got {lengths!r}.") from None


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
    """``results.json``, ``.csv``, ``.md``, ``accuracy.png`` and one heat map per encoding: recall by distance
    (``recall_<label>.png``), the RULER needle tasks by depth (``depth_<label>.png``)."""
    rows = [[r["label"], r["position"], r["seed"], s["level"], s["length"], f"{s['accuracy']:.4f}", s["correct"],
             s["answers"]] for r in summary["runs"] for s in r["results"]]
    write_results(out, summary, text, ["label", "position", "seed", summary["level_name"], "length", "accuracy",
                                       "correct", "answers"], rows)
    from .plots import synth_accuracy, synth_depth_heatmap, synth_distance_heatmap

    synth_accuracy(summary, out / "accuracy.png")
    first = summary["runs"][0]["results"][0] if summary["runs"] else {}
    for lab in summary["table"]["cells"]:
        if summary["task"]["task"] == "recall":
            synth_distance_heatmap(summary, lab, out / heat_map_name(lab))
        if "by_depth" in first:
            synth_depth_heatmap(summary, lab, out / heat_map_name(lab, "depth"))


#: the prefixes of synth's per-encoding heat maps: recall by distance, the RULER needles by depth
HEAT_MAPS = ("recall", "depth")


def heat_map_name(label: str, kind: str = "recall") -> str:
    """The file name of a heat map of the encoding ``label``: ``<kind>_<label>.png`` (``kind`` in
    :data:`HEAT_MAPS`), every character of the label but letters, digits and ``-_.`` as ``_``."""
    return f"{kind}_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".png"

