"""``firepe suite``: :func:`firepe.synth.synth` on several tasks, ``out/<task>/`` each, then one report.

Every task keeps its own defaults (those of ``firepe synth --task <task>``); an option of the suite is passed
to the tasks that read it only:

* a task option (:data:`~firepe.tasks.synthetic.TASK_OPTIONS`: ``--pairs`` for recall, ``--symbols`` for copy
  and reverse, ``--digits`` for addition, ...) goes to the tasks it belongs to; given while no task of
  ``--tasks`` reads it, it is refused in one line (never silently dropped);
* ``--seq-len`` and ``--lengths`` go to the tasks whose level is the sequence length (not addition, whose
  training length follows from ``--digits`` and whose columns are digit counts); refused when no such task runs;
* everything else (encodings, seeds, model, training, ``--max-factor``, ``--examples``) goes to every task;
  a training option not given keeps the task's own default (:data:`~firepe.synth_runs.TASK_DEFAULTS`).

Every task is checked (:func:`~firepe.synth.synth` with ``check_only``) before the first one trains. Finished
runs are reused and unfinished ones resumed, so the same command run again after a kill continues. The
report (:func:`firepe.report.write_report`) covers exactly the tasks of ``--tasks``: ``out/report.html`` and
``out/report.md``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import TrainConfig
from .report import write_report
from .resume import model_config
from .runs import refuse_link
from .synth import synth, synth_levels
from .synth_runs import task_defaults
from .tasks.synthetic import TASK_OPTIONS, SynthConfig, make_task

__all__ = ["suite", "parse_tasks", "suite_plan", "SUITE_TASKS"]

#: the tasks of ``firepe suite`` without ``--tasks``
SUITE_TASKS = ("recall", "copy", "reverse", "addition")
#: options that apply only to the tasks scored by sequence length
LENGTH_OPTIONS = ("seq_len", "lengths")


def parse_tasks(text: str) -> list[str]:
    """``--tasks``: comma-separated task names, each once (unknown names are refused by :class:`SynthConfig`)."""
    names = [t.strip() for t in str(text).split(",")]
    if not str(text).strip() or any(not t for t in names):
        raise ValueError(f"--tasks {text!r} has an empty entry; pass names like copy,reverse,addition,recall.")
    dup = sorted({t for t in names if names.count(t) > 1})
    if dup:
        raise ValueError(f"--tasks names {dup[0]} twice; each task once.")
    return names


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def suite_plan(tasks: list[str], values: dict[str, Any], given: Collection[str] = ()) -> list[SynthConfig]:
    """The :class:`SynthConfig` of every task: the task options of ``values`` (flag destinations) that the task
    reads, the others at their defaults. An option in ``given`` that no task reads is refused in one line."""
    names = [f.name for f in fields(SynthConfig) if f.name != "task"]
    configs = []
    for t in tasks:
        opts = {n: values[n] for n in names if n in values and (n not in TASK_OPTIONS or t in TASK_OPTIONS[n])}
        configs.append(SynthConfig(task=t, **opts))
    for n in names:
        if n in given and n in TASK_OPTIONS and not any(t in TASK_OPTIONS[n] for t in tasks):
            raise ValueError(f"{_flag(n)} applies to {', '.join(TASK_OPTIONS[n])} only, and --tasks has none of "
                             "them.")
    if not any(make_task(c).level_name == "length" for c in configs):
        for n in LENGTH_OPTIONS:
            if n in given:
                raise ValueError(f"{_flag(n)} applies to the tasks scored by sequence length, and --tasks has none "
                                 "(addition: its training length follows from --digits, its columns are digits).")
    return configs


def suite(out: str | Path, tasks: list[str], specs: list[str], model_values: dict[str, Any], train_cfg: TrainConfig,
          seeds: list[int], task_values: dict[str, Any] | None = None, given: Collection[str] = (),
          lengths: str | None = None, max_factor: int = 16, examples: int = 512, log=print,
          random_positions: int | None = None) -> dict[str, Any]:
    """Run :func:`~firepe.synth.synth` for every task into ``out/<task>`` (see the module docstring), with a
    progress bar over tasks (``train_cfg.progress``), then write ``out/report.html`` and ``out/report.md``.

    ``model_values``: :func:`firepe.cliargs.model_values`; ``task_values``: task options by field name (the
    rest of the dict is ignored); ``given``: the options the user gave; ``random_positions``: ``--random-positions``
    of every task, checked against each task's own training length (None: ``train_cfg``'s). Returns
    ``{"summaries": {task: summary}, "report": (html, md)}``."""
    out = Path(out)
    refuse_link(out)  # as synth refuses its --out: nothing is written through a link
    for p in (out / "report.html", out / "report.md"):  # the report must be writable before anything trains
        refuse_link(p)
        if p.is_dir():
            raise ValueError(f"{p} is a folder; firepe suite writes its report there (remove or rename it).")
    if not tasks:
        raise ValueError("no tasks; pass e.g. --tasks copy,reverse,addition,recall.")
    configs = suite_plan(tasks, task_values or {}, given)
    positions = train_cfg.random_positions if random_positions is None else random_positions
    jobs = []
    for cfg in configs:
        task = make_task(cfg)
        by_length = task.level_name == "length"
        kwargs = dict(levels=synth_levels(cfg, lengths) if by_length else None, max_factor=max_factor,
                      examples=examples)
        try:
            own = replace(train_cfg, **task_defaults(cfg.task, given))  # the task's recipe where not given
            seq_len = task.train_length(own.seq_len)
            args = (out / cfg.task, specs, model_config(model_values, "nope", seq_len),
                    replace(own, seq_len=seq_len, random_positions=positions), cfg, seeds)
            synth(*args, **kwargs, log=log, check_only=True)
        except ValueError as e:
            raise ValueError(f"--tasks {cfg.task}: {e}") from None
        jobs.append((args, kwargs))
    summaries = {}
    for (args, kwargs), cfg in zip(tqdm(jobs, desc="suite", unit="task", disable=not train_cfg.progress), configs):
        log(f"== {cfg.task} -> {args[0]}")
        summaries[cfg.task] = synth(*args, **kwargs, log=log)
    return {"summaries": summaries,
            "report": write_report([out / t / "results.json" for t in tasks], out / "report.html", root=out)}
