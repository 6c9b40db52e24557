"""``firepe compare --task passkey``: every run of a comparison fine-tuned on passkey retrieval at its training
length, then scored at the comparison's lengths and key depths -- a recipe on :mod:`firepe.experiment`.

A fine-tune is reused only when it was made from the same base run, at the same step, with the same
encoding (:func:`firepe.experiment.check_finetune_base`; otherwise one error before anything trains), and
with the same settings; an unfinished one is resumed.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, resume_changes
from .experiment import Sweep, check_finetune_base, check_not_past, fit_logged, log_group, steps_done
from .positions import Spec
from .runs import RunFolder
from .seeds import format_seed_table, seed_table

__all__ = ["compare_passkey", "passkey_train_config", "passkey_seed_summary", "format_passkey", "PASSKEY_DEFAULTS"]

#: ``firepe compare --task passkey``: fine-tuning settings of the laptop companion table (README)
PASSKEY_DEFAULTS = dict(steps=2500, lr=2e-3, warmup_steps=50, min_lr_ratio=0.1, checkpoint_every=300)

#: how the sweep words reusing, resuming and starting a fine-tune
SAYS = ("passkey fine-tuning done, reusing {path}", "resuming passkey fine-tuning", "fine-tuning on passkey at {what}")


def compare_passkey(out: str | Path, summary: dict[str, Any], train_cfg: TrainConfig, dropout: float = 0.0,
                    depths: list[float] | None = None, examples: int = 10, filler: str = "corpus",
                    log=print) -> dict[str, Any]:
    """The companion of the perplexity table: fine-tune every run of ``summary`` (``compare``'s
    result) on passkey at its training length into ``out/passkey/<label>`` (several seeds:
    ``out/passkey/<label>/seed-<s>``, fine-tuned with that seed from the run of that seed), score each at
    the compare lengths and depths, and write ``out/passkey/score.{json,csv,md,png}`` and one heat map
    per encoding (pooled over seeds). Several seeds: ``score.md`` is the mean ± std table over seeds of the
    accuracy averaged over depths, with the paired differences (:mod:`firepe.seeds`), also in ``score.json``
    under ``"table"``. Finished fine-tuning runs are reused, unfinished ones resumed."""
    from .finetune import FinetuneConfig, FinetuneTrainer
    from .score import format_scores, score_runs, write_scores

    out = Path(out)
    several = "seeds" in summary
    seeds = summary["seeds"] if several else [summary.get("seed", train_cfg.seed)]
    specs = list({r["label"]: Spec(r["label"], r["position"], r["options"]) for r in summary["runs"]}.values())
    sweep = Sweep(out, specs, seeds, train_cfg.log_to, group=f"{log_group(out)}-passkey")
    plans = []
    for row in summary["runs"]:
        seed = row["seed"] if several else seeds[0]
        base = Path(row["run"]) if several else out / row["label"]
        ft, tcfg = sweep.folder(row["label"], seed, "passkey"), replace(train_cfg, seed=seed)
        if ft.has_run():
            base_model = RunFolder(base).configs()[0]
            check_finetune_base(ft, base, steps_done(base), base_model.position, base_model.position_options)
            diffs = list(resume_changes(ft.configs()[1], asdict(tcfg))[1])
            saved_ft = ft.read_config().get("finetune")
            if not isinstance(saved_ft, dict) or saved_ft.get("task") != "passkey" or saved_ft.get("filler") != filler:
                diffs.append("finetune")
            if diffs:
                raise ValueError(f"{ft.path} holds a fine-tuning run with other settings ({', '.join(diffs)}); "
                                 "use another --out or remove that folder.")
            check_not_past(ft, tcfg.steps, "--task-steps")
        plans.append((row["label"], seed, base, ft, tcfg))
    for label, seed, base, ft, tcfg in plans:
        name = sweep.name(label, seed)
        trainer = sweep.train_run(ft, tcfg, f"{tcfg.seq_len} tokens", FinetuneTrainer,
                                  (base, FinetuneConfig(task="passkey", filler=filler), tcfg, {"dropout": dropout}),
                                  name, log, SAYS)
        if trainer is not None:
            fit_logged(trainer, name, log)
    res = score_runs([ft.path for *_, ft, _ in plans], "passkey", lengths=summary["lengths"], depths=depths,
                     examples=examples, filler=filler, progress=train_cfg.progress, log=log)
    if several:
        who = {str(ft.path): (label, seed) for label, seed, _, ft, _ in plans}
        for r in res["results"]:
            r["label"], r["seed"] = who[r["run"]]
        res["seeds"] = summary["seeds"]
        res["table"] = passkey_seed_summary(res)
    table = format_passkey(res, summary["train_len"]) if several else format_scores(res)
    log(table)
    write_scores(out / "passkey", res, table=table if several else None)
    return res


def passkey_train_config(train: TrainConfig, task_steps: int | None = None, task_lr: float | None = None,
                         task_examples: int = 10) -> TrainConfig:
    """The fine-tuning settings of ``compare --task passkey``: the comparison's, :data:`PASSKEY_DEFAULTS`, and
    ``--task-steps`` / ``--task-lr`` (``--task-examples`` is checked here too)."""
    from .limits import MAX_EXAMPLES, MAX_STEPS, check_at_most

    for flag, value, limit in (("--task-steps", task_steps, MAX_STEPS), ("--task-examples", task_examples,
                                                                        MAX_EXAMPLES)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
        check_at_most(value, flag, limit)
    changes = dict(PASSKEY_DEFAULTS)
    if task_steps is not None:
        changes["steps"] = task_steps
        changes["checkpoint_every"] = task_steps
    if task_lr is not None:
        changes["lr"] = task_lr
    return replace(train, **changes)


def passkey_seed_summary(res: dict[str, Any]) -> dict[str, Any]:
    """:func:`firepe.seeds.seed_table` of passkey accuracy (%, the mean over depths of each run; higher is
    better, reference ``fire`` if present) from several-seed score rows (``label``, ``seed``, ``length``)."""
    cells: dict[tuple[str, int, int], list[float]] = {}
    for r in res["results"]:
        cells.setdefault((r["label"], r["seed"], r["length"]), []).append(r["score"])
    value = {k: sum(v) / len(v) for k, v in cells.items()}
    labels = list(dict.fromkeys(r["label"] for r in res["results"]))
    lengths = sorted({r["length"] for r in res["results"]})
    return seed_table(value, labels, res["seeds"], lengths, higher_is_better=True, reference="fire")


def format_passkey(res: dict[str, Any], train_len: int) -> str:
    lengths = sorted({r["length"] for r in res["results"]})
    return format_seed_table(res["table"], lengths, lambda n: f"{n} ({n / train_len:g}x)", 1, True,
                             len(res["seeds"]), "accuracy points, mean over depths")
