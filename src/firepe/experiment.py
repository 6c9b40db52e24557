"""One sweep layer for every experiment: plan -> train, reuse or resume -> score -> aggregate -> write.

``compare``/``ablate`` (:mod:`firepe.compare`), ``compare --task passkey`` (:mod:`firepe.compare_passkey`)
and ``synth`` (:mod:`firepe.synth`) are short recipes on it:

* :class:`Sweep` -- the plan: every (encoding spec, seed) :class:`Cell` under ``out`` (``out/<label>``, or
  ``out/<label>/seed-<s>`` for several seeds), each checked before anything trains or is created -- links at
  every level refused, a folder holding a run must hold the same settings (:func:`check_same_settings`)
  and not be past the budget (:func:`check_not_past`), plus the recipe's own check.
* :func:`train_or_reuse` -- the one rule for a cell's run: reused when trained to the budget, resumed when it
  holds a run (runtime settings and a larger budget may change), else trained anew.
* aggregation -- :func:`firepe.seeds.seed_table` (mean ± std, paired differences, best in every seed).
* :func:`write_results` -- ``results.json``, ``.csv``, ``.md`` and the recipe's plots.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .checkpoint import latest_checkpoint, read_state
from .config import RESUMABLE, DataConfig, GPTConfig, TrainConfig, check_model_training, config_diff, resume_changes
from .positions import Spec, parse_spec, training_options
from .runs import RunFolder, refuse_links_below, write_json, write_text, writing
from .tracking import check_installed

__all__ = ["Cell", "Sweep", "split_specs", "check_same_settings", "check_not_past", "check_finetune_base",
           "train_or_reuse", "fit_logged", "SAYS", "log_group", "steps_done", "write_results"]


def split_specs(text: str, flag: str = "--encodings", sep: str | None = None) -> list[str]:
    """``--encodings`` text -> spec strings: ``,`` between plain names, ``;`` once a spec carries
    options (``;`` between plain names works too). Empty items are an error (``--encodings ''`` or ``nope,,fire``)."""
    sep = sep or (";" if ":" in text or ";" in text else ",")
    items = [s.strip() for s in text.split(sep)]
    if not text.strip() or any(not s for s in items):
        raise ValueError(f"{flag} {text!r} has an empty entry; pass names separated by '{sep}', e.g. nope,rope,fire.")
    return items


def log_group(out: Path) -> str:
    """The tracker group of a sweep's runs: the name of its folder."""
    return Path(out).resolve().name


def steps_done(run_dir: Path) -> int:
    """The step of the run's latest checkpoint (0 without one)."""
    ckpt = latest_checkpoint(run_dir) if (Path(run_dir) / "checkpoints").exists() else None
    return read_state(ckpt)["step"] if ckpt is not None else 0


def check_not_past(run: RunFolder, steps: int, flag: str) -> None:
    """A run already trained past ``steps`` would be reused as is while the results name ``steps``."""
    done = steps_done(run.path)
    if done > steps:
        raise ValueError(f"{run.path} is already at step {done}, past {flag} {steps} (it would be reused as is while "
                         f"the results name {steps} steps); pass {flag} {done} or more, or use another --out.")


def check_same_settings(run: RunFolder, model: GPTConfig, train: TrainConfig, data: DataConfig) -> None:
    """A label folder holding a run must hold these settings (one error naming the differences): the model
    (its vocabulary comes from the tokenizer) and the data as saved, the train fields other than
    :data:`~firepe.config.RESUMABLE` (:func:`~firepe.config.resume_changes`)."""
    saved_model, saved_train, saved_data = run.configs()
    saved_data, data = saved_data.resolved(), data.resolved()  # as a new run stores it (older runs: relative)
    diffs = [f"model.{k} ({getattr(saved_model, k)!r} != {getattr(model, k)!r})"
             for k in config_diff(saved_model, model) if k != "vocab_size"]
    diffs += [f"train.{k} ({a!r} != {b!r})" for k, (a, b) in resume_changes(saved_train, asdict(train))[1].items()]
    diffs += [f"data.{k} ({getattr(saved_data, k)!r} != {getattr(data, k)!r})" for k in config_diff(saved_data, data)]
    if diffs:
        raise ValueError(f"{run.path} holds a run with other settings: {', '.join(diffs[:4])}; use another --out "
                         "or remove that folder.")


def check_finetune_base(ft: RunFolder, base: Path, step: int, position: str, options: dict[str, Any]) -> None:
    """A fine-tuning run is reused only when it was made from ``base`` at ``step`` with that encoding: a
    base run trained further, or deleted and trained again as another encoding, leaves a stale fine-tune
    (one error naming what differs; decision: refuse, never delete it)."""
    from .finetune import finetune_section

    cfg = ft.read_config()
    try:
        saved = finetune_section(cfg, f"{ft.config_path} [finetune]") if "finetune" in cfg else None
    except ValueError:
        saved = None
    if saved is None:
        raise ValueError(f"{ft.path} holds a fine-tuning run with other settings (finetune); use another --out or "
                         "remove that folder.")
    model = cfg["model"]
    made = (Path(saved.base_run), saved.base_step, model.get("position"), model.get("position_options"))
    wanted = (Path(base).resolve(), step, position, options)
    if made != wanted:
        raise ValueError(f"{ft.path} holds a fine-tune of {made[0]} at step {made[1]} ({made[2]} {made[3]}), not of "
                         f"{wanted[0]} at step {wanted[1]} ({wanted[2]} {wanted[3]}); remove that folder to fine-tune "
                         "again (nothing was changed).")


#: what :func:`train_or_reuse` says: a run reused, resumed, started (``{path}``, ``{what}`` filled in)
SAYS = ("already trained, reusing {path}", "resuming {what}", "training {what}")


def train_or_reuse(run: RunFolder, train_cfg: TrainConfig, what: str, trainer: type, new_args: tuple, name: str,
                   group: str | None, log=print, says: tuple[str, str, str] = SAYS):
    """The one rule for a run of a sweep: None (reused) when trained to ``train_cfg.steps``; else a trainer to
    ``fit()``: resuming it (runtime settings and a larger budget from ``train_cfg``) when the folder holds a
    run, or ``trainer(run.path, *new_args)`` for a new one. ``says`` words the line logged for each case."""
    if steps_done(run.path) >= train_cfg.steps:  # steps >= 1 (TrainConfig), so a run without a checkpoint is not
        log(f"[{name}] " + says[0].format(path=run.path, what=what))
        return None
    again = run.has_run()
    log(f"[{name}] " + says[1 if again else 2].format(path=run.path, what=what))
    if again:
        fitted = trainer(run.path, resume=True, changes={k: getattr(train_cfg, k) for k in RESUMABLE}, log_group=group)
    else:
        fitted = trainer(run.path, *new_args, log_group=group)
    if getattr(fitted, "data_summary", None):
        log(f"[{name}] {fitted.data_summary}")
    return fitted


def fit_logged(trainer, label: str, log, done: str = "fine-tuned") -> None:
    """``trainer.fit()`` and one line: the step reached, the time, the last loss and tokens/s."""
    t0 = time.perf_counter()
    losses = trainer.fit()
    speed = f", {trainer.tokens_per_s:,.0f} tokens/s" if trainer.tokens_per_s else ""
    last = f"{losses[-1]:.4f}" if losses else "n/a"
    log(f"[{label}] {done} to step {trainer.step} in {time.perf_counter() - t0:.0f} s: last loss {last}{speed}")


@dataclass
class Cell:
    """One run of a sweep: an encoding spec at one seed, its folder, model and training settings."""

    spec: Spec
    seed: int
    run: RunFolder
    model: GPTConfig
    train: TrainConfig
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return self.model.position_options

    @property
    def what(self) -> str:
        return f"{self.spec.position} {self.options or ''}"


class Sweep:
    """Every (spec, seed) cell of one experiment under ``out`` (see the module docstring)."""

    def __init__(self, out: str | Path, specs: list[str | Spec], seeds: list[int], log_to: str | None = None,
                 what: str = "compare", group: str | None = None, name_seed: bool = False):
        self.out, self.name_seed = Path(out), name_seed
        if not specs:
            raise ValueError(f"no encodings to {what}; pass e.g. --encodings nope,rope,fire.")
        self.specs = [s if isinstance(s, Spec) else parse_spec(s) for s in specs]
        labels = [s.label for s in self.specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels in {labels}; give each spec a label=...")
        if not seeds:
            raise ValueError("no seeds; pass --seeds N or a list like 0,1,2.")
        self.seeds, self.several = list(seeds), len(seeds) > 1
        check_installed(log_to)
        self.group = group or log_group(self.out)

    def folder(self, label: str, seed: int, *above: str) -> RunFolder:
        """``out/[above/]<label>[/seed-<s>]``; a link at any level below ``out`` (and ``out`` itself) refused."""
        path = self.out.joinpath(*above, label)
        run = RunFolder(path / f"seed-{seed}" if self.several else path)
        refuse_links_below(self.out, run.path)
        return run

    def name(self, label: str, seed: int) -> str:
        """How logs name a cell: the label, with its seed when there are several (or ``name_seed``)."""
        return f"{label} seed {seed}" if self.several or self.name_seed else label

    def plan(self, model: GPTConfig, train_cfg: TrainConfig, data: DataConfig,
             check: Callable[[Cell], None] | None = None, **model_changes: Any) -> list[Cell]:
        """Every cell, checked before anything trains: a folder that holds a run must hold these settings
        and not be past ``train_cfg.steps``; ``check(cell)`` adds the recipe's own (for every cell)."""
        cells = []
        for spec in self.specs:
            opts = training_options(spec.position, spec.options, train_cfg.seq_len)
            mcfg = replace(model, position=spec.position, position_options=opts, **model_changes)
            check_model_training(mcfg, train_cfg)
            for seed in self.seeds:
                cell = Cell(spec, seed, self.folder(spec.label, seed), mcfg, replace(train_cfg, seed=seed),
                            self.name(spec.label, seed))
                if cell.run.has_run():
                    check_same_settings(cell.run, cell.model, cell.train, data)
                    check_not_past(cell.run, cell.train.steps, "--steps")
                if check is not None:
                    check(cell)
                cells.append(cell)
        return cells

    def create(self) -> None:
        with writing(self.out):
            self.out.mkdir(parents=True, exist_ok=True)

    def train(self, cell: Cell, trainer: type, new_args: tuple, log=print, says: tuple[str, str, str] = SAYS):
        """:func:`train_or_reuse` of ``cell``: None (reused) or the trainer to fit."""
        return self.train_run(cell.run, cell.train, cell.what, trainer, new_args, cell.name, log, says)

    def train_run(self, run: RunFolder, train_cfg: TrainConfig, what: str, trainer: type, new_args: tuple, name: str,
                  log=print, says: tuple[str, str, str] = SAYS):
        """:func:`train_or_reuse` of any run of this sweep (a fine-tune of a cell's run), in its tracker group."""
        return train_or_reuse(run, train_cfg, what, trainer, new_args, name, self.group, log, says)


def write_results(out: Path, summary: dict[str, Any], table: str, header: list[str], rows: list[list[Any]],
                  stem: str = "results") -> None:
    """``out/<stem>.json`` (the summary), ``.csv`` (``header`` and ``rows``) and ``.md`` (``table``)."""
    write_json(out / f"{stem}.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(out / f"{stem}.csv", buf.getvalue())
    write_text(out / f"{stem}.md", table + "\n")
