"""Train short, test long: one model per encoding, identical seeds, data and budget (Sec. 4.1, Fig. 1).

``compare(out, specs, ...)`` trains ``out/<label>`` for every spec (resuming or skipping finished
runs, so an interrupted comparison continues where it stopped), evaluates each at the same lengths
on the same validation tokens, and writes ``out/results.json``, ``out/results.csv``,
``out/results.md`` (the table) and ``out/perplexity.png`` (log perplexity vs length).

Specs are ``name`` or ``name:key=value,key=value`` (``fire:mlp_layers=1,activation=gelu``), with an
optional label prefix ``label=`` (``fire_lin=fire:mlp_layers=0``).

FIRE defaults for training runs (:func:`training_options`): unless given, ``init_L`` is a quarter
of the training length, the paper's ratio (512 for 2048; the positions-level default stays 512),
and ``bias_mode="table"`` (the fast interpolated bias, max error ~3e-5, see docs/backends.md); T5 gets the
paper's 64 buckets (Appendix C.1) unless ``num_buckets`` is given.

With ``train_cfg.log_to`` (``--log-to``), every label's training is its own tracker run, named
after the label folder, in a group named after ``out`` (the passkey fine-tunes: ``<out>-passkey``),
so the curves of the encodings overlay.

A label folder that already holds a run must hold the same settings (else one error naming them):
a finished run is reused, an unfinished one resumed; ``steps`` and the checkpoint/log cadence may
grow, which resumes the run to the new budget.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .checkpoint import latest_checkpoint, read_state
from .config import RESUMABLE, DataConfig, GPTConfig, TrainConfig, config_diff, resume_changes
from .data import resolve
from .evaluate import evaluate_run
from .positions import Spec, parse_spec, training_options
from .runs import RunFolder, refuse_links_below, write_json, write_text, writing
from .seeds import format_seed_table, seed_table
from .tracking import check_installed
from .train import Trainer

__all__ = ["Spec", "parse_spec", "split_specs", "training_options", "compare", "format_table", "DEFAULT_SPECS",
           "ABLATION_SPECS"]

DEFAULT_SPECS = ["nope", "rope", "alibi", "kerple_log", "t5", "fire"]
ABLATION_SPECS = [
    "fire",                                                      # Eq. (23): log transform + threshold
    "fire_no_threshold=fire:threshold=False",                    # Eq. (22)
    "fire_no_log_no_threshold=fire:log_transform=False,threshold=False",  # Eq. (21)
    "fire_linear=fire:mlp_layers=0",                             # Table 5
    "fire_1layer=fire:mlp_layers=1",
    "fire_gelu=fire:activation=gelu",                            # Table 6
    "fire_final_act=fire:mlp_layers=1,final_activation=True",    # Table 7
    "fire_s",                                                    # Table 2 (layer sharing)
]


def split_specs(text: str, flag: str = "--encodings", sep: str | None = None) -> list[str]:
    """``--encodings`` text -> spec strings: ``,`` between plain names, ``;`` once a spec carries
    options (``;`` between plain names works too). Empty items are an error (``--encodings ''`` or ``nope,,fire``)."""
    sep = sep or (";" if ":" in text or ";" in text else ",")
    items = [s.strip() for s in text.split(sep)]
    if not text.strip() or any(not s for s in items):
        raise ValueError(f"{flag} {text!r} has an empty entry; pass names separated by '{sep}', e.g. nope,rope,fire.")
    return items


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


def log_group(out: Path) -> str:
    """The tracker group of a comparison's runs: the name of its folder."""
    return Path(out).resolve().name


def _steps_done(run_dir: Path) -> int:
    """The step of the run's latest checkpoint (0 without one)."""
    ckpt = latest_checkpoint(run_dir) if (Path(run_dir) / "checkpoints").exists() else None
    return read_state(ckpt)["step"] if ckpt is not None else 0


def check_not_past(run: RunFolder, steps: int, flag: str) -> None:
    """A run already trained past ``steps`` would be reused as is while the results name ``steps``."""
    done = _steps_done(run.path)
    if done > steps:
        raise ValueError(f"{run.path} is already at step {done}, past {flag} {steps} (it would be reused as is while "
                         f"the results name {steps} steps); pass {flag} {done} or more, or use another --out.")


def _run_finished(run_dir: Path, steps: int) -> bool:
    return _steps_done(run_dir) >= steps  # steps >= 1 (TrainConfig), so a run without a checkpoint is not


def train_or_reuse(run: RunFolder, train_cfg: TrainConfig, what: str, trainer: type[Trainer], new_args: tuple,
                   name: str, log_group: str | None, log=print) -> tuple[Trainer, list[float]] | None:
    """One run of a comparison: reuse it when trained to ``train_cfg.steps``, resume it (runtime settings and
    a larger budget from ``train_cfg``) when it holds a run, else start ``trainer(run.path, *new_args)``;
    ``(trainer, losses)`` of the fit, or None when reused."""
    if _run_finished(run.path, train_cfg.steps):
        log(f"[{name}] already trained, reusing {run.path}")
        return None
    again = run.has_run()
    log(f"[{name}] {'resuming' if again else 'training'} {what}")
    if again:
        fitted = trainer(run.path, resume=True, changes={k: getattr(train_cfg, k) for k in RESUMABLE},
                         log_group=log_group)
    else:
        fitted = trainer(run.path, *new_args, log_group=log_group)
    if getattr(fitted, "data_summary", None):
        log(f"[{name}] {fitted.data_summary}")
    return fitted, fitted.fit()


def compare(out: str | Path, specs: list[str | Spec], model: GPTConfig, train_cfg: TrainConfig,
            data_cfg: DataConfig, lengths: list[int], val_tokens: int | None = None,
            progress: bool = True, log=print, seeds: list[int] | None = None,
            passkey: bool = False) -> dict[str, Any]:
    """``seeds``: several seeds train ``out/<label>/seed-<s>`` each (one seed: ``out/<label>``, seed
    ``train_cfg.seed``); the table is then mean ± std over the seeds with paired differences
    (:mod:`firepe.seeds`), on the same validation tokens. ``passkey``: :func:`compare_passkey` follows, so
    its existing fine-tunes are checked against the runs they will be reused for before anything trains."""
    out = Path(out)
    seeds = list(seeds) if seeds else [train_cfg.seed]
    several = len(seeds) > 1
    if not specs:
        raise ValueError("no encodings to compare; pass e.g. --encodings nope,rope,fire.")
    parsed = [s if isinstance(s, Spec) else parse_spec(s) for s in specs]
    labels = [s.label for s in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}; give each spec a label=...")
    check_installed(train_cfg.log_to)
    data_cfg = resolve(data_cfg)  # as every run stores it (a prepared folder's settings filled in, checked once)
    group = log_group(out)
    plans = []
    for spec in parsed:  # refuse before training (or creating) anything
        opts = training_options(spec.position, spec.options, train_cfg.seq_len)
        mcfg = replace(model, position=spec.position, position_options=opts)
        for seed in seeds:
            run = RunFolder(out / spec.label / f"seed-{seed}" if several else out / spec.label)
            refuse_links_below(out, run.path)
            tcfg = replace(train_cfg, seed=seed)
            if run.has_run():
                check_same_settings(run, mcfg, tcfg, data_cfg)
                check_not_past(run, tcfg.steps, "--steps")
            ft = RunFolder(out / "passkey" / spec.label / f"seed-{seed}" if several else out / "passkey" / spec.label)
            if passkey and ft.has_run():
                refuse_links_below(out, ft.path)
                check_finetune_base(ft, run.path, tcfg.steps, spec.position, opts)
            plans.append((spec, opts, run, mcfg, tcfg, seed))
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec, opts, run, mcfg, tcfg, seed in plans:
        name = f"{spec.label} seed {seed}" if several else spec.label
        train_or_reuse(run, tcfg, f"{spec.position} {opts or ''}", Trainer, (mcfg, tcfg, data_cfg), name, group, log)
        res = evaluate_run(run.path, lengths, val_tokens=val_tokens, progress=progress)
        row = {"label": spec.label, "position": spec.position, "options": opts, "results": res["results"]}
        rows.append({**row, "seed": seed, "run": str(run.path)} if several else row)
    summary = {"train_len": train_cfg.seq_len, "lengths": lengths, "steps": train_cfg.steps,
               "model": {k: v for k, v in model.to_dict().items() if k not in ("position", "position_options")},
               "runs": rows}
    if several:
        summary["seeds"] = seeds
        summary["table"] = seed_summary(summary)
    else:
        summary["seed"] = seeds[0]
    table = format_table(summary)
    log(table)
    write_json(out / "results.json", summary)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "position", *(["seed"] if several else []), "length", "log_ppl", "ppl"])
    for r in rows:
        for x in r["results"]:
            w.writerow([r["label"], r["position"], *([r["seed"]] if several else []), x["length"],
                        f"{x['log_ppl']:.6f}", f"{x['ppl']:.4f}"])
    write_text(out / "results.csv", buf.getvalue())
    write_text(out / "results.md", table + "\n")
    from .plots import perplexity_vs_length

    perplexity_vs_length(summary, out / "perplexity.png")
    return summary


def seed_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """:func:`firepe.seeds.seed_table` of the log perplexities of a several-seed comparison (lower is
    better; reference ``fire`` if present)."""
    labels = list(dict.fromkeys(r["label"] for r in summary["runs"]))
    value = {(r["label"], r["seed"], x["length"]): x["log_ppl"] for r in summary["runs"] for x in r["results"]}
    return seed_table(value, labels, summary["seeds"], summary["lengths"], higher_is_better=False, reference="fire")


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of log perplexity: rows encodings, columns lengths, best per column in bold.
    Several seeds: mean ± std, ``*`` best in every seed, and the paired differences."""
    lengths = summary["lengths"]
    train_len = summary["train_len"]
    if "table" in summary:
        return format_seed_table(summary["table"], lengths, lambda n: f"{n} ({n / train_len:g}x)", 3, False,
                                 len(summary["seeds"]), "log perplexity")
    best = {n: min(r_["log_ppl"] for run in summary["runs"] for r_ in run["results"] if r_["length"] == n)
            for n in lengths}
    head = "| encoding | " + " | ".join(
        f"{n} ({n / train_len:g}x)" for n in lengths) + " |"
    lines = [head, "|---" * (len(lengths) + 1) + "|"]
    for run in summary["runs"]:
        by_len = {r["length"]: r["log_ppl"] for r in run["results"]}
        cells = []
        for n in lengths:
            v = by_len.get(n, math.nan)
            cells.append(f"**{v:.3f}**" if math.isclose(v, best[n], rel_tol=0, abs_tol=5e-4) else f"{v:.3f}")
        lines.append(f"| {run['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: ``firepe compare --task passkey``: fine-tuning settings of the laptop companion table (README)
PASSKEY_DEFAULTS = dict(steps=2500, lr=2e-3, warmup_steps=50, min_lr_ratio=0.1, checkpoint_every=300)


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
    folder = out / "passkey"
    check_installed(train_cfg.log_to)
    group = f"{log_group(out)}-passkey"
    several = "seeds" in summary
    plans = []
    for row in summary["runs"]:
        seed = row["seed"] if several else summary.get("seed", train_cfg.seed)
        base = Path(row["run"]) if several else out / row["label"]
        ft = RunFolder(folder / row["label"] / f"seed-{seed}" if several else folder / row["label"])
        refuse_links_below(out, ft.path)
        tcfg = replace(train_cfg, seed=seed)
        if ft.has_run():
            base_model = RunFolder(base).configs()[0]
            check_finetune_base(ft, base, _steps_done(base), base_model.position, base_model.position_options)
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
        name = f"{label} seed {seed}" if several else label
        if _run_finished(ft.path, tcfg.steps):
            log(f"[{name}] passkey fine-tuning done, reusing {ft.path}")
        elif ft.has_run():
            log(f"[{name}] resuming passkey fine-tuning")
            changes = {k: getattr(tcfg, k) for k in RESUMABLE}
            _fit_logged(FinetuneTrainer(ft.path, resume=True, changes=changes, log_group=group), name, log)
        else:
            log(f"[{name}] fine-tuning on passkey at {tcfg.seq_len} tokens")
            _fit_logged(FinetuneTrainer(ft.path, base, FinetuneConfig(task="passkey", filler=filler), tcfg,
                                        model_changes={"dropout": dropout}, log_group=group), name, log)
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
    write_scores(folder, res, table=table if several else None)
    return res


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


def _fit_logged(trainer: Trainer, label: str, log) -> None:
    t0 = time.perf_counter()
    losses = trainer.fit()
    speed = f", {trainer.tokens_per_s:,.0f} tokens/s" if trainer.tokens_per_s else ""
    last = f"{losses[-1]:.4f}" if losses else "n/a"
    log(f"[{label}] fine-tuned to step {trainer.step} in {time.perf_counter() - t0:.0f} s: last loss {last}{speed}")
