"""Train short, test long: one model per encoding, identical seeds, data and budget (Sec. 4.1, Fig. 1).

``compare(out, specs, ...)`` trains ``out/<label>`` for every spec (resuming or skipping finished
runs, so an interrupted comparison continues where it stopped), evaluates each at the same lengths
on the same validation tokens, and writes ``out/results.json``, ``out/results.csv``,
``out/results.md`` (the table) and ``out/perplexity.png`` (log perplexity vs length).

Specs are ``name`` or ``name:key=value,key=value`` (``fire:mlp_layers=1,activation=gelu``), with an
optional label prefix ``label=`` (``fire_lin=fire:mlp_layers=0``).

FIRE defaults for training runs (:func:`training_options`): unless given, ``init_L`` is a quarter
of the training length, the paper's ratio (512 for 2048; the positions-level default stays 512),
and ``bias_mode="table"`` (the fast interpolated bias, max error ~3e-5, see the README).
"""

from __future__ import annotations

import ast
import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import positions
from .checkpoint import latest_checkpoint, read_json, read_run_config
from .data import DataConfig
from .evaluate import evaluate_run
from .model import GPTConfig
from .train import TrainConfig, Trainer

__all__ = ["Spec", "parse_spec", "compare", "format_table", "DEFAULT_SPECS", "ABLATION_SPECS"]

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


@dataclass
class Spec:
    label: str
    position: str
    options: dict[str, Any] = field(default_factory=dict)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_spec(text: str) -> Spec:
    """``[label=]name[:key=value,...]`` -> :class:`Spec`; options are validated against the registry."""
    text = text.strip()
    label = None
    head, sep, rest = text.partition(":")
    if "=" in head:
        label, _, head = head.partition("=")
    name = head.strip()
    options: dict[str, Any] = {}
    if sep:
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, val = item.partition("=")
            if not eq:
                raise ValueError(f"option {item!r} in spec {text!r} must look like key=value.")
            options[key.strip()] = _value(val.strip())
    positions.validate(name, options)
    if label is None:
        label = name if not options else name + "[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]"
    return Spec(label.strip(), name, options)


def training_options(position: str, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """``options`` plus the FIRE defaults used by ``firepe train`` and ``firepe compare``."""
    opts = dict(options)
    if position in ("fire", "fire_s"):
        if "init_L" not in opts and opts.get("threshold", True):
            opts["init_L"] = seq_len / 4
        opts.setdefault("bias_mode", "table")
    return opts


def _run_finished(run_dir: Path, steps: int) -> bool:
    ckpt = latest_checkpoint(run_dir) if (run_dir / "checkpoints").exists() else None
    return ckpt is not None and read_json(ckpt / "state.json").get("step", 0) >= steps


def compare(out: str | Path, specs: list[str | Spec], model: GPTConfig, train_cfg: TrainConfig,
            data_cfg: DataConfig, lengths: list[int], val_tokens: int | None = None,
            progress: bool = True, log=print) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parsed = [s if isinstance(s, Spec) else parse_spec(s) for s in specs]
    labels = [s.label for s in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels in {labels}; give each spec a label=...")
    rows = []
    for spec in parsed:
        opts = training_options(spec.position, spec.options, train_cfg.seq_len)
        run_dir = out / spec.label
        mcfg = replace(model, position=spec.position, position_options=opts)
        if _run_finished(run_dir, train_cfg.steps):
            log(f"[{spec.label}] already trained, reusing {run_dir}")
        else:
            resume = (run_dir / "config.json").exists() and latest_checkpoint(run_dir) is not None
            if (run_dir / "config.json").exists() and not resume:
                saved = read_run_config(run_dir)
                log(f"[{spec.label}] restarting a run that never checkpointed ({saved['model']['position']})")
                for stale in ("config.json", "metrics.jsonl"):
                    (run_dir / stale).unlink(missing_ok=True)
            log(f"[{spec.label}] {'resuming' if resume else 'training'} {spec.position} {opts or ''}")
            Trainer(run_dir, mcfg, train_cfg, data_cfg, resume=resume).fit()
        res = evaluate_run(run_dir, lengths, val_tokens=val_tokens, progress=progress)
        rows.append({"label": spec.label, "position": spec.position, "options": opts,
                     "results": res["results"]})
    summary = {"train_len": train_cfg.seq_len, "lengths": lengths, "steps": train_cfg.steps,
               "model": {k: v for k, v in model.to_dict().items() if k not in ("position", "position_options")},
               "runs": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "position", "length", "log_ppl", "ppl"])
        for r in rows:
            for x in r["results"]:
                w.writerow([r["label"], r["position"], x["length"], f"{x['log_ppl']:.6f}", f"{x['ppl']:.4f}"])
    table = format_table(summary)
    (out / "results.md").write_text(table + "\n")
    from .plots import perplexity_vs_length

    perplexity_vs_length(summary, out / "perplexity.png")
    log(table)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table of log perplexity: rows encodings, columns lengths, best per column in bold."""
    lengths = summary["lengths"]
    train_len = summary["train_len"]
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
