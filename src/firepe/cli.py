"""``firepe`` command line: train, eval, compare, ablate, synth, prepare, finetune, score, export, plot-bias, generate,
bench-speed.

Every user error ends in one line ``firepe: error: ...`` and exit status 2; nothing already
written is removed.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import typing
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .bench import ROWS, check_rows, run_bench
from .compare import ABLATION_SPECS, DEFAULT_SPECS, compare
from .compare_passkey import PASSKEY_DEFAULTS, compare_passkey
from .config import (
    BACKENDS,
    PRESETS,
    RESUMABLE,
    DataConfig,
    GPTConfig,
    PrepareConfig,
    TrainConfig,
    dataclass_from_dict,
    preset,
    resume_changes,
)
from .data import PreparedData, load_tokenizer, prepare, resolve
from .evaluate import evaluate_run, parse_lengths, write_results
from .experiment import split_specs
from .finetune import FINETUNE_DEFAULTS, FinetuneConfig, FinetuneTrainer, finetune_section
from .hints import split_optional
from .kinds import kind_of
from .limits import MAX_BATCH_TOKENS, MAX_EXAMPLES, MAX_LENGTH, MAX_STEPS, MAX_TOKENS, check_at_most
from .loading import load_run, resolve_device
from .positions import parse_spec, training_options
from .runs import RunFolder, error_line, refuse_link, writing
from .score import format_scores, score_runs, write_scores
from .seeds import parse_seeds
from .synth import SYNTH_DEFAULTS, synth
from .tasks import TASK_HELP, expand_tasks, parse_depths
from .tasks.metrics import check_metric
from .tasks.synthetic import SynthConfig, SynthTask
from .train import Trainer, process_group

# Per-command defaults as dataclass instances (litgpt style); flags are derived from the fields.
# The laptop comparison (`firepe compare` with no options) is measured to finish in well under
# 15 minutes on a 2-core CPU (see README).
COMPARE_PRESET = "cpu"


def _compare_defaults():
    return (TrainConfig(seq_len=256, batch_size=8, steps=800, lr=2e-3, warmup_steps=50),
            DataConfig(max_train_tokens=4_000_000, val_tokens=32768))


def _train_defaults():
    return TrainConfig(), DataConfig()


_DATA_HELP = {
    "corpus": "stdlib | PATH[,PATH...] | hf:NAME[:CONFIG]",
    "tokenizer": "byte | bpe | path/to/tokenizer.json",
    "bpe_vocab_size": "vocabulary of --tokenizer bpe",
    "val_percent": "percent of the corpus held out for validation",
    "max_train_tokens": "cap on training tokens (and the budget pulled from streaming corpora)",
    "val_tokens": "validation tokens scored at every evaluation length",
    "hf_data_files": "local files for hf:json / hf:text / hf:parquet (comma-separated)",
    "hf_text_field": "text field of Hugging Face rows",
    "data": "a folder made by firepe prepare (instead of --corpus: its tokens, tokenizer and split)",
}


class Parser(argparse.ArgumentParser):
    """argparse with the error contract: one line ``firepe: error: ...``, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"firepe: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_dataclass_args(group, cls, defaults, help_fallback: dict[str, str] | None = None,
                       skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass ``cls`` (``seq_len`` -> ``--seq-len``): type from the annotation,
    default from the instance ``defaults``, help from the field metadata; ``bool`` fields that
    default to true get ``--no-NAME``. Fields with ``metadata["cli"] = False`` get no flag."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = getattr(defaults, f.name)
        text = f.metadata.get("help") or (help_fallback or {}).get(f.name, "")
        flag = "--" + f.name.replace("_", "-")
        kind = split_optional(hints[f.name])[0]  # int | None -> int
        if kind is bool:
            if default:
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                   default=True, help=f"no {text}" if text else None)
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=False, help=text or None)
            continue
        conv = {int: _int, float: _float, str: str}.get(kind)
        if conv is None:
            continue
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(flag, dest=f.name, type=conv, default=default, choices=f.metadata.get("choices"),
                           help=(text + shown) or None)


def dataclass_from_args(cls, args) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def _add_model_args(p: argparse.ArgumentParser, with_position: bool, preset: str = "cpu") -> None:
    """``--preset``, ``--position`` (a spec, train only), ``--untied``, and one flag per :class:`GPTConfig`
    field with a flag (:func:`add_dataclass_args`; the preset's fields default to None: the preset's)."""
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=preset, help="tiny | cpu | small | base | large (Table 8)")
    if with_position:
        g.add_argument("--position", default="fire",
                       help="encoding spec, e.g. fire, rope, fire:mlp_layers=1,activation=gelu")
    defaults = GPTConfig()
    add_dataclass_args(g, GPTConfig, argparse.Namespace(**{
        f.name: None if f.metadata.get("preset") else getattr(defaults, f.name) for f in fields(GPTConfig)}))
    g.add_argument("--untied", action="store_true", help="untie input and output embeddings")


def _add_train_args(p: argparse.ArgumentParser, train_defaults, data_defaults) -> None:
    add_dataclass_args(p.add_argument_group("training"), TrainConfig, train_defaults)
    add_dataclass_args(p.add_argument_group("data"), DataConfig, data_defaults, _DATA_HELP)


def _model_config(args, position: str):
    given = {f.name: getattr(args, f.name) for f in _MODEL_FIELDS if getattr(args, f.name) is not None}
    spec = parse_spec(position)
    opts = training_options(spec.position, spec.options, args.seq_len)
    return preset(args.preset, position=spec.position, position_options=opts, tie_embeddings=not args.untied,
                  **given)


def _configs(args, position: str = "nope"):
    train = dataclass_from_args(TrainConfig, args)
    data = resolve(dataclass_from_args(DataConfig, args))
    return _model_config(args, getattr(args, "position", position)), train, data


def _check_out(path: str, what: str = "--out") -> Path:
    if not str(path).strip():
        raise ValueError(f"{what} is empty; pass a folder name.")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} {str(out)!r} is an existing file, not a folder.")
    return out


#: the GPTConfig fields with a flag of their own (the model group of train, compare, ablate, synth)
_MODEL_FIELDS = [f for f in fields(GPTConfig) if f.metadata.get("cli") is not False]
#: model flag -> the GPTConfig fields it sets (what a --resume compares)
_MODEL_FLAGS = {"preset": tuple(f.name for f in _MODEL_FIELDS if f.metadata.get("preset")),
                "untied": ("tie_embeddings",), **{f.name: (f.name,) for f in _MODEL_FIELDS}}


def _resumed_run(args):
    """The run folder ``--resume --out`` names (ValueError if it holds no run)."""

    run = RunFolder(_check_out(args.out))
    run.check_exists()
    if not run.has_run():
        raise ValueError(f"--resume: {args.out!r} holds no run (no config.json); drop --resume to start one.")
    return run


def _train_changes(args, given: set[str], saved_train) -> tuple[dict[str, Any], list[str]]:
    """``(changes, conflicts)`` of the TrainConfig flags given on a ``--resume``
    (:func:`~firepe.config.resume_changes`), the conflicts written as flags."""
    wanted = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name in given}
    changes, refused = resume_changes(saved_train, wanted)
    return changes, [f"--{k.replace('_', '-')} {new} (run: {old})" for k, (old, new) in refused.items()]


def _resume_changes(args, given: set[str]) -> dict[str, Any]:
    """The TrainConfig changes a ``--resume`` command asks for; ValueError naming every given option
    that differs from the saved run and may not change."""

    run = _resumed_run(args)
    saved_model, saved_train, saved_data = run.configs()
    changes, conflicts = _train_changes(args, given, saved_train)
    flag = {d: "--" + d.replace("_", "-") for d in given}
    wanted_data = dataclass_from_args(DataConfig, args).resolved()
    for f in fields(DataConfig):
        if f.name in given and getattr(wanted_data, f.name) != getattr(saved_data, f.name):
            conflicts.append(f"{flag[f.name]} {getattr(args, f.name)} (run: {getattr(saved_data, f.name)})")
    if "position" in given:
        spec = parse_spec(args.position)
        if spec.position != saved_model.position or any(
                saved_model.position_options.get(k) != v for k, v in spec.options.items()):
            conflicts.append(f"--position {args.position} (run: {saved_model.position} "
                             f"{saved_model.position_options})")
    wanted = _model_config(argparse.Namespace(**{**vars(args), "position": saved_model.position,
                                                 "seq_len": saved_train.seq_len}), saved_model.position)
    for dest, names in _MODEL_FLAGS.items():
        if dest in given and any(getattr(wanted, n) != getattr(saved_model, n) for n in names):
            conflicts.append(f"{flag[dest]} (run: " + ", ".join(f"{n}={getattr(saved_model, n)}" for n in names) + ")")
    if conflicts:
        raise ValueError("--resume continues a run with its saved settings; these options differ and cannot "
                         f"change: {'; '.join(conflicts)}. Only {', '.join(RESUMABLE)} may.")
    return changes


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train one GPT (single process or under torchrun)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_model_args(t, with_position=True)
    _add_train_args(t, *_train_defaults())
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    _check_out(args.out)
    with process_group():
        # built in the call: _fit_and_report holds the only reference and frees it in the group
        _fit_and_report(Trainer(args.out, resume=True, changes=_resume_changes(args, args.given)) if args.resume
                        else Trainer(args.out, *_configs(args)), f"trained {args.out}")


def _fit_and_report(trainer, done: str) -> None:
    """Train to the end; rank 0 prints the data description first and the last loss and tokens/s
    after. The trainer is freed here, inside :func:`process_group` (DDP before the group goes)."""
    if trainer.rank == 0:
        print(trainer.corpus_description, flush=True)
        if getattr(trainer, "data_summary", None):
            print(trainer.data_summary, flush=True)
    losses = trainer.fit()
    if trainer.rank == 0:
        last = f"{losses[-1]:.4f}" if losses else "n/a (already at the last step)"
        speed = f"; {trainer.tokens_per_s:,.0f} tokens/s" if trainer.tokens_per_s else ""
        print(f"{done} to step {trainer.step}; last loss {last}{speed}", flush=True)
    del trainer


def _positive(value: Any, flag: str, minimum: int = 1, maximum: int | None = None) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}.")
    if maximum is not None:
        check_at_most(value, flag, maximum)


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="zero-shot log perplexity at several lengths")
    e.add_argument("run", help="run folder or exported folder (firepe export)")
    e.add_argument("--lengths", required=True, help="comma-separated, e.g. 512,1024,2048")
    e.add_argument("--val-tokens", type=_int, help="validation tokens scored at every length")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="output prefix (default RUN/eval -> eval.json, eval.csv)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--attention", choices=list(BACKENDS),
                   help="attention backend (chunked: no n x n bias; evaluation at 32k+ tokens)")
    e.add_argument("--batch-tokens", type=_int, default=16384, help="tokens per forward pass")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    _positive(args.val_tokens, "--val-tokens", 1, MAX_TOKENS)
    _positive(args.batch_tokens, "--batch-tokens", 1, MAX_BATCH_TOKENS)
    resolve_device(args.device)
    res = evaluate_run(args.run, parse_lengths(args.lengths), val_tokens=args.val_tokens, device=args.device,
                       progress=not args.no_progress, attention=args.attention, batch_tokens=args.batch_tokens,
                       write=False)
    print(f"{'length':>8} {'log ppl':>9} {'ppl':>10}")
    for r in res["results"]:
        print(f"{r['length']:>8} {r['log_ppl']:>9.4f} {r['ppl']:>10.3f}")
    sys.stdout.flush()
    write_results(Path(args.out) if args.out else Path(args.run) / "eval", res)


def _lengths_for(args, train_len: int) -> list[int]:
    if args.lengths:
        return parse_lengths(args.lengths)
    if args.max_factor < 1:
        raise ValueError(f"--max-factor must be >= 1, got {args.max_factor}.")
    check_at_most(train_len * args.max_factor, f"the longest length (--max-factor {args.max_factor} x {train_len})",
                  MAX_LENGTH, " tokens")
    out, f = [], 1
    while f <= args.max_factor:
        out.append(train_len * f)
        f *= 2
    return out


def add_compare(sub) -> None:
    """``compare`` and ``ablate``: the same flags, ablate with --variants instead of --encodings."""
    for name, helptext in (("compare", "the main job: train every encoding short, test long"),
                           ("ablate", "Appendix B ablations of FIRE through the compare machinery")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--out", default=f"runs/{name}", help="output folder")
        if name == "compare":
            c.add_argument("--encodings", default=",".join(DEFAULT_SPECS),
                           help="comma-separated encodings; use ';' between specs that carry options")
        else:
            c.add_argument("--variants", help="';'-separated specs (default: the Appendix B set)")
        c.add_argument("--lengths", help="evaluation lengths (default: train length x 1, 2, 4, ... max-factor)")
        c.add_argument("--max-factor", type=_int, default=8)
        c.add_argument("--seeds", help="a count N (seeds --seed .. --seed+N-1) or a list like 0,1,2: mean ± std "
                                       "over seeds, OUT/<label>/seed-<s> (default: the one --seed, OUT/<label>)")
        if name == "compare":
            c.add_argument("--task", choices=["passkey"], help="then fine-tune every model on passkey at its "
                                                               "training length and score it at every length")
            c.add_argument("--task-steps", type=_int,
                           help=f"passkey fine-tuning steps (default {PASSKEY_DEFAULTS['steps']})")
            c.add_argument("--task-lr", type=_float,
                           help=f"passkey fine-tuning learning rate (default {PASSKEY_DEFAULTS['lr']:g})")
            c.add_argument("--task-examples", type=_int, default=10, help="passkey examples per length and depth")
            c.add_argument("--depths", help="passkey key depths (default 0,0.25,0.5,0.75,1)")
        _add_model_args(c, with_position=False, preset=COMPARE_PRESET)
        _add_train_args(c, *_compare_defaults())
        c.set_defaults(func=cmd_compare if name == "compare" else cmd_ablate, position="nope")


def cmd_compare(args, specs: list[str] | None = None) -> None:
    model, train, data = _configs(args)
    out = _check_out(args.out)
    if specs is None:
        specs = split_specs(args.encodings, "--encodings")
    task = getattr(args, "task", None)
    for dest in ("task_steps", "task_lr", "task_examples", "depths"):
        if task is None and dest in args.given:
            raise ValueError(f"--{dest.replace('_', '-')} applies with --task passkey only.")
    if task is not None and task != "passkey":
        raise ValueError(f"compare --task supports passkey only, got {task!r}; fine-tune and score other tasks "
                         "with firepe finetune and firepe score.")

    seeds = parse_seeds(args.seeds, first=train.seed) if args.seeds is not None else None
    task_train = _passkey_train(args, train) if task else None
    depths = None
    if task and args.depths is not None:

        depths = parse_depths(args.depths)
    summary = compare(out, specs, replace(model, position="nope", position_options={}), train, data,
                      _lengths_for(args, train.seq_len), val_tokens=args.val_tokens, progress=train.progress,
                      seeds=seeds, passkey=task is not None)
    print(f"wrote {out / 'results.md'}, results.json, results.csv and perplexity.png")
    if task:

        compare_passkey(out, summary, task_train, depths=depths, examples=args.task_examples)
        print(f"wrote {out / 'passkey'}/score.md, score.json, score.csv, score.png and passkey_<label>.png")


def _passkey_train(args, train):
    """TrainConfig of compare's passkey fine-tuning: the compare run's settings, PASSKEY_DEFAULTS,
    and the --task-* flags."""

    _positive(args.task_steps, "--task-steps", 1, MAX_STEPS)
    _positive(args.task_examples, "--task-examples", 1, MAX_EXAMPLES)
    changes = dict(PASSKEY_DEFAULTS)
    if args.task_steps is not None:
        changes["steps"] = args.task_steps
        changes["checkpoint_every"] = args.task_steps
    if args.task_lr is not None:
        changes["lr"] = args.task_lr
    return replace(train, **changes)


def cmd_ablate(args) -> None:
    cmd_compare(args, specs=split_specs(args.variants, "--variants", sep=";") if args.variants is not None
                else ABLATION_SPECS)


#: the synth options that apply to some tasks only (given for another task, they are refused)
SYNTH_OPTIONS = {**{k: ("recall",) for k in ("pairs", "keys", "values", "queries", "format", "filler")},
                 "symbols": ("copy", "reverse"), "digits": ("addition",), "hints": ("addition",)}


def add_synth(sub) -> None:
    y = sub.add_parser("synth", help="train every encoding from scratch on a synthetic task (recall, copy, "
                                     "reverse, addition) and score it from 1x to 16x")
    y.add_argument("--out", default="runs/synth", help="output folder")
    y.add_argument("--encodings", default=",".join(DEFAULT_SPECS),
                   help="comma-separated encodings; use ';' between specs that carry options")
    y.add_argument("--seeds", default="3", help="a count N (seeds --seed .. --seed+N-1) or a list like 0,1,2")
    y.add_argument("--lengths", help="scored lengths (addition: digits); default: training length x 1, 2, 4, ... "
                                     "--max-factor (addition: digits x 1..4)")
    y.add_argument("--max-factor", type=_int, default=16)
    y.add_argument("--examples", type=_int, default=512, help="answers scored per length")
    add_dataclass_args(y.add_argument_group("task"), SynthConfig, SynthConfig())
    _add_model_args(y, with_position=False, preset="tiny")
    add_dataclass_args(y.add_argument_group("training"), TrainConfig, TrainConfig(**SYNTH_DEFAULTS))
    y.set_defaults(func=cmd_synth)


def cmd_synth(args) -> None:
    task = dataclass_from_args(SynthConfig, args)
    if task.task == "addition":  # its training length follows from --digits (checked below)

        args.seq_len = SynthTask(task).train_length(args.seq_len)
    train = dataclass_from_args(TrainConfig, args)
    wrong = sorted(f for f in args.given if f in SYNTH_OPTIONS and task.task not in SYNTH_OPTIONS[f])
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        raise ValueError(f"{flag} applies to {' and '.join(SYNTH_OPTIONS[wrong[0]])} only, not to --task {task.task}.")
    if task.task == "addition" and "seq_len" in args.given:
        raise ValueError("--seq-len does not apply to --task addition: its training length follows from --digits.")
    out = _check_out(args.out)
    seeds = parse_seeds(args.seeds, first=train.seed)
    levels = None
    if args.lengths and task.task == "addition":
        try:
            levels = [int(x) for x in args.lengths.split(",")]
        except ValueError:
            raise ValueError(f"--lengths of addition are digit counts like 8,16,32, got {args.lengths!r}.") from None
    elif args.lengths:

        levels = parse_lengths(args.lengths)
    synth(out, split_specs(args.encodings, "--encodings"), _model_config(args, "nope"), train, task, seeds,
          levels=levels, max_factor=args.max_factor, examples=args.examples)
    print(f"wrote {out / 'results.md'}, results.json, results.csv and accuracy.png")


def add_prepare(sub) -> None:
    r = sub.add_parser("prepare", help="tokenize a corpus once into memory-mapped token shards (train with --data)")
    r.add_argument("--out", required=True, help="the prepared folder (new, or one this command was interrupted in)")
    add_dataclass_args(r.add_argument_group("corpus"), DataConfig, DataConfig(), _DATA_HELP,
                       skip=("val_tokens", "data"))
    add_dataclass_args(r.add_argument_group("shards"), PrepareConfig, PrepareConfig())
    r.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    res = prepare(_check_out(args.out), dataclass_from_args(DataConfig, args), dataclass_from_args(PrepareConfig, args))
    folder = PreparedData(args.out)
    if res["already"]:
        print(f"{args.out} is already prepared; every shard verified against its sha256.")
    print(folder.describe())
    if not res["already"] and res["tokens_per_s"]:
        print(f"prepared in {res['seconds']:.1f} s ({res['tokens_per_s']:,.0f} tokens/s); train with --data {args.out}")


def _finetune_defaults():
    return TrainConfig(**FINETUNE_DEFAULTS), FinetuneConfig()


def _position_options(text: str | None, position: str) -> dict[str, Any]:
    if text is None:
        return {}
    if not text.strip():
        raise ValueError("--position-options is empty; pass e.g. factor=4.")
    return parse_spec(f"{position}:{text}").options


def _finetune_resume_changes(args) -> dict[str, Any]:
    """TrainConfig changes of ``finetune --resume``; every other given option must match the run."""

    run = _resumed_run(args)
    cfg = run.read_config()
    if "finetune" not in cfg:
        raise ValueError(f"--resume: {args.out!r} is a pretraining run; continue it with firepe train --resume.")
    _, saved_train, _ = run.configs()
    saved_ft = asdict(finetune_section(cfg, f"{run.config_path} [finetune]"))
    changes, conflicts = _train_changes(args, args.given, saved_train)
    for f in fields(FinetuneConfig):
        if f.name not in args.given:
            continue
        value = getattr(args, f.name)
        if f.name == "task":  # saved with absolute paths: the same relative path is the same task
            value = FinetuneConfig.absolute_task(value)
        elif f.name == "task_files":
            value = FinetuneConfig.absolute_files(value)
        if value != saved_ft[f.name]:
            conflicts.append(f"--{f.name.replace('_', '-')} {getattr(args, f.name)} (run: {saved_ft[f.name]})")
    for flag in ("dropout", "attention", "position_options", "position"):
        if flag in args.given:
            conflicts.append(f"--{flag.replace('_', '-')} (fixed by the run's model configuration)")
    if args.run is not None:
        conflicts.append(f"RUN {args.run} (the run started from {saved_ft['base_run']})")
    if conflicts:
        raise ValueError("--resume continues a fine-tuning run with its saved settings; these options differ and "
                         f"cannot change: {'; '.join(conflicts)}. Only {', '.join(RESUMABLE)} may.")
    return changes


def add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a trained run on a task (loss on the answer tokens only)")
    f.add_argument("run", nargs="?", help="the trained run folder to start from (not with --resume)")
    f.add_argument("--task", default="passkey", help=TASK_HELP)
    f.add_argument("--out", required=True, help="new run folder of the fine-tuned model")
    f.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    fm = f.add_argument_group("model changes")
    fm.add_argument("--dropout", type=_float, default=0.1, help="dropout (Tables 10/12: 0.1)")
    fm.add_argument("--attention", choices=list(BACKENDS), help="attention backend (chunked: O(n) memory)")
    fm.add_argument("--position-options", help="encoding options that depend on the target length, e.g. "
                                               "factor=4 for rope_pi/yarn from 2048 to 8192")
    fm.add_argument("--position", help="switch to an encoding with the same checkpoint state, e.g. "
                                       "rope_pi:factor=4 for a rope run (position interpolation)")

    ft_train, ft_task = _finetune_defaults()
    add_dataclass_args(f.add_argument_group("task"), FinetuneConfig, ft_task)
    add_dataclass_args(f.add_argument_group("training"), TrainConfig, ft_train)
    next(a for a in f._actions if a.dest == "seq_len").help = "training length (default: the run's)"
    f.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> None:
    _check_out(args.out)
    with process_group():
        # built in the call: _fit_and_report holds the only reference and frees it in the group
        _fit_and_report(FinetuneTrainer(args.out, resume=True, changes=_finetune_resume_changes(args)) if args.resume
                        else FinetuneTrainer(args.out, args.run, *_finetune_configs(args)), f"fine-tuned {args.out}")


def _finetune_configs(args):
    """``(FinetuneConfig, TrainConfig, model changes)`` of a new fine-tuning run (``--seq-len``
    defaults to the base run's; task file paths made absolute)."""

    if args.run is None:
        raise ValueError("finetune needs RUN, the trained run folder to start from (or --resume --out FT).")
    base = RunFolder(args.run)
    base.check_exists()
    if not base.has_run():
        raise ValueError(f"{args.run!r} is not a firepe run folder (no config.json); pass the folder of a "
                         "trained run.")
    base_model, base_train, _ = base.configs()
    train = dataclass_from_args(TrainConfig, args)
    if "seq_len" not in args.given:
        train = replace(train, seq_len=base_train.seq_len)
    ft = dataclass_from_args(FinetuneConfig, args)
    _check_task_flags(args, passkey_only=("filler",))  # after the values' own checks
    ft = ft.resolved()
    position = None
    if args.position is not None:

        spec = parse_spec(args.position)
        position = spec.position
        if args.position_options is not None:
            raise ValueError("give the encoding's options in --position (e.g. rope_pi:factor=4), not also in "
                             "--position-options.")
    changes = {"dropout": args.dropout, "attention": args.attention, "position": position,
               "position_options": spec.options if position else _position_options(args.position_options,
                                                                                  base_model.position)}
    return ft, train, changes


def _check_task_flags(args, passkey_only: tuple[str, ...]) -> None:
    """A given option the task does not read is an error rather than ignored: ``passkey_only`` options
    with another task, ``--limit`` / ``--metric`` with passkey, ``--split`` without a Hugging Face task
    (``--task-files`` and ``--depths`` are checked by the library)."""

    specs = expand_tasks(args.task)
    passkey = specs == ["passkey"]
    for dest in passkey_only:
        if dest in args.given and not passkey:
            raise ValueError(f"--{dest} applies to the passkey task only; --task {args.task} does not read it.")
    for dest in ("limit", "metric"):
        if dest in args.given and passkey:
            raise ValueError(f"--{dest} does not apply to the passkey task (generated per length and depth, "
                             "--examples of each, scored by accuracy).")
    if "split" in args.given and not any(s.partition(":")[0] in ("scrolls", "glue", "super_glue") for s in specs):
        raise ValueError(f"--split applies to scrolls:, glue: and super_glue: tasks only; --task {args.task} does not "
                         "read it.")


def add_score(sub) -> None:
    sc = sub.add_parser("score", help="greedy-decode runs on a task and score them, across context lengths")
    sc.add_argument("runs", nargs="+", help="run folders (trained or fine-tuned)")
    sc.add_argument("--task", default="passkey", help=TASK_HELP)
    sc.add_argument("--lengths", help="context lengths, e.g. 512,2048,8192 (default: the run's training length; "
                                      "passkey: 1x, 2x, 4x, 8x it)")
    sc.add_argument("--depths", help="passkey key depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    sc.add_argument("--examples", type=_int, default=10, help="passkey examples per length and depth")
    sc.add_argument("--limit", type=_int, help="first N examples of other tasks")
    sc.add_argument("--split", default="validation", help="dataset split of Hugging Face tasks")
    sc.add_argument("--task-files", help="local copies (json/jsonl/parquet/csv, joined by ',') of a Hugging Face task")
    sc.add_argument("--metric", help="main metric of a jsonl:/parquet: task (default f1): em, f1, rgm, accuracy")
    sc.add_argument("--max-new-tokens", type=_int, help="default: the longest reference in tokens + 1")
    sc.add_argument("--filler", choices=["corpus", "classic"], default="corpus", help="passkey filler")
    sc.add_argument("--seed", type=_int, default=0, help="passkey keys and filler offsets")
    sc.add_argument("--device", default="cpu")
    sc.add_argument("--attention", choices=list(BACKENDS))
    sc.add_argument("--batch-tokens", type=_int, default=16384, help="prompt tokens per forward pass")
    sc.add_argument("--out", default="runs/score", help="output folder (score.json, .csv, .md, .png)")
    sc.add_argument("--no-plot", action="store_true")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar (examples decoded, tokens/s)")
    sc.set_defaults(func=cmd_score)


def cmd_score(args) -> None:
    _positive(args.examples, "--examples")  # their upper bounds: score_runs checks them
    _positive(args.limit, "--limit")
    _positive(args.max_new_tokens, "--max-new-tokens")
    _positive(args.batch_tokens, "--batch-tokens")
    _positive(args.seed, "--seed", 0)
    out = _check_out(args.out)
    if args.metric is not None:

        check_metric(args.metric)
    _check_task_flags(args, passkey_only=("examples", "filler", "seed"))  # after the values' own checks
    lengths = parse_lengths(args.lengths) if args.lengths is not None else None
    depths = parse_depths(args.depths) if args.depths is not None else None

    refuse_link(out)
    created, had_lock = not out.exists(), (out / ".lock").exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(out)  # locked as runs are: two commands never write one output folder at once
    try:
        folder.lock()
        _score_into(args, folder, lengths, depths)
    except BaseException:
        folder.unlock()
        if created:  # a refused or failed score leaves no folder behind (only its .lock was in it)
            shutil.rmtree(out, ignore_errors=True)
        elif not had_lock and not (out / ".lock").is_symlink():
            (out / ".lock").unlink(missing_ok=True)
        raise
    finally:
        folder.unlock()


def _score_into(args, folder, lengths, depths) -> None:
    out = folder.path
    res = score_runs(args.runs, args.task, lengths=lengths, depths=depths, split=args.split,
                     task_files=args.task_files, limit=args.limit, examples=args.examples,
                     max_new_tokens=args.max_new_tokens, metric=args.metric, filler=args.filler, seed=args.seed,
                     device=args.device, attention=args.attention, batch_tokens=args.batch_tokens,
                     progress=not args.no_progress)
    print(format_scores(res))
    sys.stdout.flush()
    paths = write_scores(out, res, plot=not args.no_plot)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def add_export(sub) -> None:
    x = sub.add_parser("export", help="write a run as a Hugging Face transformers model folder")
    x.add_argument("run", help="run folder (its latest checkpoint is exported)")
    x.add_argument("--out", required=True, help="new folder to write (must not exist)")
    x.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    _check_out(args.out)  # '' is refused as empty (it used to be "output folder '.' already exists")
    try:
        from .hf import export_run
    except ImportError as e:  # transformers missing or older than tested
        raise ValueError(f"firepe export: {str(e).splitlines()[0]}") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = export_run(args.run, args.out)
    print(f"wrote {out} (load with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r}, "
          "trust_remote_code=True))")


#: the largest query position plot-bias draws (a [H, query + 1] row per layer)
MAX_PLOT_QUERY = 1 << 20
#: the most tokens of ``--text`` plot-bias runs through a data-dependent encoding (its bias is ``[H, T, T]`` per
#: layer: 2,048 tokens are 64 MiB a layer with 4 heads; CoPE's logits as many)
MAX_PLOT_TEXT = 2048


def add_plot_bias(sub) -> None:
    b = sub.add_parser("plot-bias", help="plot a trained model's bias for one query (Fig. 4)")
    b.add_argument("run", help="run folder or exported folder (firepe export)")
    b.add_argument("--query", type=_int, default=None,
                   help="query position (default 128; with --text, the text's last token)")
    b.add_argument("--text", help="the input whose bias is drawn, for data-dependent biases (fox, cope): required "
                                  "there, refused elsewhere")
    b.add_argument("--out", help="PNG path (default RUN/bias_q<query>.png)")
    b.set_defaults(func=cmd_plot_bias)


def cmd_plot_bias(args) -> None:
    from .plots import bias_curves

    if args.query is not None and not 0 <= args.query <= MAX_PLOT_QUERY:
        raise ValueError(f"--query must be a position in 0..{MAX_PLOT_QUERY}, got {args.query}.")
    if args.out is not None and (Path(args.out).suffix.lower() != ".png" or Path(args.out).is_dir()):
        raise ValueError(f"--out {args.out!r} must be a PNG file path ending in .png.")
    model, cfg = load_run(args.run)
    mods = model.position_modules()
    name = cfg["model"]["position"]
    kind = kind_of(mods[0])
    if kind.reads_input:
        panels, query = _data_bias_panels(args, model, cfg)
    else:
        if args.text is not None:
            raise ValueError(f"--text applies to data-dependent biases (fox, cope); run {args.run} uses {name!r}, "
                             "whose bias depends on positions only: leave --text out.")
        if not kind.draws_position_bias:
            raise ValueError(f"run {args.run} uses {name!r}, which has no additive bias to plot.")
        query = 128 if args.query is None else args.query
        panels = {"all layers (shared)": mods[0]} if model.position_shared is not None else {
            f"layer {i}": m for i, m in enumerate(mods)}
    out = bias_curves(panels, query_pos=query, path=args.out or Path(args.run) / f"bias_q{query}.png")
    print(f"wrote {out}")


def _data_bias_panels(args, model, cfg) -> tuple[dict, int]:
    """Per layer, the bias of a data-dependent encoding for ``--text``, row ``--query`` (``[H, query + 1]``)."""
    if args.text is None:
        raise ValueError(f"run {args.run} uses {cfg['model']['position']!r}, whose bias depends on the input; "
                         "pass --text TEXT to draw it for that text.")
    if len(args.text) > 64 * MAX_PLOT_TEXT:  # before tokenizing: no tokenizer makes fewer tokens than this
        raise ValueError(f"--text holds {len(args.text):,} characters; plot-bias draws the bias of at most "
                         f"{MAX_PLOT_TEXT:,} tokens: cut the text to the part before the query.")
    tok = load_tokenizer(Path(args.run), dataclass_from_dict(DataConfig, cfg["data"]), model.cfg.vocab_size)
    ids = tok.encode(args.text)
    if not ids:
        raise ValueError("--text is empty; give at least one character.")
    if len(ids) > MAX_PLOT_TEXT:
        raise ValueError(f"--text is {len(ids):,} tokens; plot-bias draws the bias of at most {MAX_PLOT_TEXT:,} "
                         "tokens: cut the text to the part before the query.")
    last = len(ids) - 1
    query = last if args.query is None else args.query
    if query > last:
        raise ValueError(f"--query {query} is past the text's last token (position {last}); pass --query 0..{last} "
                         "or a longer --text.")
    device = next(model.parameters()).device
    biases = model.input_biases(torch.tensor([ids[: query + 1]], device=device))
    return {f"layer {i}": b[0, :, query, :] for i, b in enumerate(biases)}, query


def add_generate(sub) -> None:
    g = sub.add_parser("generate", help="sample from a trained model with a KV cache")
    g.add_argument("run", help="run folder or exported folder (firepe export)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=_int, default=200)
    g.add_argument("--temperature", type=_float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=_int, default=40)
    g.add_argument("--seed", type=_int, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--attention", choices=list(BACKENDS))
    g.set_defaults(func=cmd_generate)


def cmd_generate(args) -> None:
    _positive(args.max_new_tokens, "--max-new-tokens", 0, MAX_LENGTH)
    _positive(args.seed, "--seed", 0)
    _positive(args.top_k, "--top-k")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}.")
    device = resolve_device(args.device)
    model, cfg = load_run(args.run, device=device)
    if args.attention:
        model.set_attention(args.attention)
    tok = load_tokenizer(Path(args.run), dataclass_from_dict(DataConfig, cfg["data"]), model.cfg.vocab_size)
    ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt is empty; give at least one character.")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    prompt = torch.tensor([ids], device=device)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         generator=gen)
    print(tok.decode(out[0].tolist()))


def add_bench_speed(sub) -> None:
    s = sub.add_parser("bench-speed", help="time and peak memory per encoding across lengths (Fig. 5)")
    s.add_argument("--lengths", default="512,1024,2048,4096,8192")
    s.add_argument("--encodings", help="comma-separated rows, or ';'-separated specs once one carries options "
                                       "(longrope:factor=8;fox;cope) (default: nope, rope, alibi, kerple_log, t5, "
                                       "fire_appendix_e, fire_exact, fire, fire_s)")
    s.add_argument("--scope", choices=["layer", "model", "both"], default="both")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 on CUDA, fp32 on CPU")
    s.add_argument("--no-tf32", action="store_true", help="CUDA fp32: full-precision matmuls (TF32 is on by default)")
    s.add_argument("--job-timeout", type=_int, default=600, help="seconds per measurement subprocess (then an "
                                                               "error row)")
    s.add_argument("--batch", type=_int, default=1)
    s.add_argument("--heads", type=_int, default=12)
    s.add_argument("--head-dim", type=_int, default=64)
    s.add_argument("--preset", default="base", help="model preset of the model scope")
    s.add_argument("--n-layer", type=_int, default=2, help="layers of the model scope (0: the preset's)")
    s.add_argument("--attention", choices=list(BACKENDS), default="auto")
    s.add_argument("--block", type=_int, default=1024)
    s.add_argument("--repeats", type=_int, default=3)
    s.add_argument("--forward-only", action="store_true")
    s.add_argument("--fire-mlp-layers", type=_int, default=2)
    s.add_argument("--threads", type=_int)
    s.add_argument("--out", default="runs/bench")
    s.set_defaults(func=cmd_bench_speed)


def cmd_bench_speed(args) -> None:
    rows = split_specs(args.encodings, "--encodings") if args.encodings is not None else ROWS
    for flag, value, minimum in (("--repeats", args.repeats, 1), ("--heads", args.heads, 1),
                                 ("--head-dim", args.head_dim, 1), ("--batch", args.batch, 1),
                                 ("--block", args.block, 1), ("--n-layer", args.n_layer, 0),
                                 ("--fire-mlp-layers", args.fire_mlp_layers, 0), ("--threads", args.threads, 1),
                                 ("--job-timeout", args.job_timeout, 1)):
        _positive(value, flag, minimum)
    check_rows(rows, args.heads, args.head_dim, args.attention, args.fire_mlp_layers)
    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")

    if args.preset not in PRESETS:
        raise ValueError(f"unknown model preset {args.preset!r}; valid: {', '.join(PRESETS)}.")
    scopes = ["layer", "model"] if args.scope == "both" else [args.scope]
    settings = {"device": args.device, "dtype": dtype, "tf32": device.type == "cuda" and not args.no_tf32,
                "job_timeout": args.job_timeout, "batch": args.batch, "heads": args.heads,
                "head_dim": args.head_dim, "preset": args.preset, "n_layer": args.n_layer,
                "attention": args.attention, "block": args.block, "repeats": args.repeats,
                "backward": not args.forward_only, "fire_layers": args.fire_mlp_layers, "threads": args.threads}
    run_bench(rows, parse_lengths(args.lengths), scopes, settings, _check_out(args.out))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="firepe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"firepe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_eval(sub)
    add_compare(sub)
    add_synth(sub)
    add_prepare(sub)
    add_finetune(sub)
    add_score(sub)
    add_export(sub)
    add_plot_bias(sub)
    add_generate(sub)
    add_bench_speed(sub)
    return p


def given_options(parser: argparse.ArgumentParser, argv: list[str], command: str) -> set[str]:
    """Destinations the user gave on the command line (``--steps=6`` and abbreviations included):
    the command's parser re-run with every default suppressed."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    saved = [(a, a.default) for a in sub._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = sub.parse_known_args(argv[argv.index(command) + 1:])
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings of a command print as one line ``firepe: warning: ...`` (not file, line and source)."""
    text = " ".join(str(message).split())
    return f"firepe: warning: {text[len('firepe: '):] if text.startswith('firepe: ') else text}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else 2
    args.given = given_options(parser, argv, args.command)
    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        args.func(args)
    except (ValueError, FloatingPointError, FileNotFoundError) as e:
        print(f"firepe: error: {error_line(e)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"firepe: error: out of memory ({str(e).splitlines()[0] if str(e) else 'MemoryError'}); "
              "use a smaller model, batch or length.", file=sys.stderr)
        return 2
    except RuntimeError as e:  # PyTorch reports a failed allocation as RuntimeError / OutOfMemoryError
        text = str(e)
        if "allocate" not in text and "out of memory" not in text.lower():
            raise
        print(f"firepe: error: out of memory ({text.splitlines()[0][:200]}); use a smaller model, batch or "
              "length.", file=sys.stderr)
        return 2
    except OSError as e:  # a write or read the user can act on (full disk, permissions)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"firepe: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("the shards completed so far are kept (run the same command again to continue)"
                if args.command == "prepare" else "checkpoints written so far are kept (continue with --resume)")
        print(f"firepe: interrupted; {kept}.", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = old_format
    return 0


if __name__ == "__main__":
    sys.exit(main())
