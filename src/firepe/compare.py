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

import math
from pathlib import Path
from typing import Any

from .config import DataConfig, GPTConfig, TrainConfig
from .data import resolve
from .evaluate import evaluate_run
from .experiment import Sweep, check_finetune_base, write_results
from .positions import Spec
from .seeds import format_seed_table, seed_table
from .train import Trainer

__all__ = ["compare", "format_table", "seed_summary", "DEFAULT_SPECS", "ABLATION_SPECS"]

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


def compare(out: str | Path, specs: list[str | Spec], model: GPTConfig, train_cfg: TrainConfig,
            data_cfg: DataConfig, lengths: list[int], val_tokens: int | None = None,
            progress: bool = True, log=print, seeds: list[int] | None = None,
            passkey: bool = False) -> dict[str, Any]:
    """``seeds``: several seeds train ``out/<label>/seed-<s>`` each (one seed: ``out/<label>``, seed
    ``train_cfg.seed``); the table is then mean ± std over the seeds with paired differences
    (:mod:`firepe.seeds`), on the same validation tokens. ``passkey``: :func:`compare_passkey` follows, so
    its existing fine-tunes are checked against the runs they will be reused for before anything trains."""
    sweep = Sweep(out, specs, list(seeds) if seeds else [train_cfg.seed], train_cfg.log_to)
    data_cfg = resolve(data_cfg)  # as every run stores it (a prepared folder's settings filled in, checked once)

    def fine_tunes_match(cell) -> None:
        ft = sweep.folder(cell.spec.label, cell.seed, "passkey")
        if passkey and ft.has_run():
            check_finetune_base(ft, cell.run.path, cell.train.steps, cell.spec.position, cell.options)

    cells = sweep.plan(model, train_cfg, data_cfg, fine_tunes_match)
    sweep.create()
    rows = []
    for cell in cells:
        trainer = sweep.train(cell, Trainer, (cell.model, cell.train, data_cfg), log)
        if trainer is not None:
            trainer.fit()
        res = evaluate_run(cell.run.path, lengths, val_tokens=val_tokens, progress=progress)
        row = {"label": cell.spec.label, "position": cell.spec.position, "options": cell.options,
               "results": res["results"]}
        rows.append({**row, "seed": cell.seed, "run": str(cell.run.path)} if sweep.several else row)
    summary = {"train_len": train_cfg.seq_len, "lengths": lengths, "steps": train_cfg.steps,
               "model": {k: v for k, v in model.to_dict().items() if k not in ("position", "position_options")},
               "runs": rows}
    if sweep.several:
        summary["seeds"] = sweep.seeds
        summary["table"] = seed_summary(summary)
    else:
        summary["seed"] = sweep.seeds[0]
    table = format_table(summary)
    log(table)
    seed_col = ["seed"] if sweep.several else []
    csv_rows = [[r["label"], r["position"], *([r["seed"]] if sweep.several else []), x["length"],
                 f"{x['log_ppl']:.6f}", f"{x['ppl']:.4f}"] for r in rows for x in r["results"]]
    write_results(sweep.out, summary, table, ["label", "position", *seed_col, "length", "log_ppl", "ppl"], csv_rows)
    from .plots import perplexity_vs_length

    perplexity_vs_length(summary, sweep.out / "perplexity.png")
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
