"""``firepe`` command line: train, eval, compare, ablate, synth, suite, report, prepare, finetune, score, export,
plot-bias, generate, bench-speed. Each command parses its options (:mod:`firepe.cliargs`), calls one library
function and prints.

Every user error ends in one line ``firepe: error: ...`` and exit status 2; nothing already
written is removed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from . import __version__
from .bench import bench_speed
from .cliargs import (
    DATA_HELP,
    Parser,
    add_dataclass_args,
    add_model_args,
    add_train_args,
    check_out,
    dataclass_from_args,
    float_arg,
    given_options,
    int_arg,
    model_values,
    one_line_warning,
    positive,
)
from .compare import ABLATION_SPECS, DEFAULT_SPECS, compare
from .compare_passkey import PASSKEY_DEFAULTS, compare_passkey, passkey_train_config
from .config import BACKENDS, DataConfig, PrepareConfig, TrainConfig
from .data import PreparedData, prepare, resolve
from .evaluate import evaluate_run, lengths_up_to, parse_lengths, write_results
from .experiment import split_specs
from .finetune import FINETUNE_DEFAULTS, FinetuneConfig, FinetuneTrainer
from .limits import MAX_BATCH_TOKENS, MAX_TOKENS
from .loading import resolve_device
from .plots import plot_run_bias
from .report import report
from .resume import check_task_options, finetune_inputs, model_config, resume_changes_given, resume_finetune_changes
from .runs import error_line, locked_output
from .score import format_scores, generate_text, score_runs, write_scores
from .seeds import parse_seeds
from .suite import SUITE_TASKS, parse_tasks, suite
from .synth import SYNTH_DEFAULTS, synth, synth_levels
from .synth_runs import task_defaults
from .tasks import TASK_HELP, parse_depths
from .tasks.metrics import check_metric
from .tasks.synthetic import SynthConfig, make_task
from .train import Trainer, process_group

# Per-command defaults as dataclass instances (litgpt style); flags are derived from the fields.
# The laptop comparison (`firepe compare` with no options) is measured to finish in well under
# 15 minutes on a 2-core CPU (see README).
COMPARE_PRESET = "cpu"


def _compare_defaults():
    return (TrainConfig(seq_len=256, batch_size=8, steps=800, lr=2e-3, warmup_steps=50),
            DataConfig(max_train_tokens=4_000_000, val_tokens=32768))


def _configs(args, position: str = "nope"):
    train = dataclass_from_args(TrainConfig, args)
    data = resolve(dataclass_from_args(DataConfig, args))
    return model_config(model_values(args), getattr(args, "position", position), args.seq_len), train, data


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train one GPT (single process or under torchrun)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_model_args(t, with_position=True)
    add_train_args(t, TrainConfig(), DataConfig())
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    check_out(args.out)
    with process_group():
        # built in the call: _fit_and_report holds the only reference and frees it in the group
        _fit_and_report(Trainer(args.out, resume=True, changes=resume_changes_given(args.out, vars(args), args.given))
                        if args.resume else Trainer(args.out, *_configs(args)), f"trained {args.out}")


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


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="zero-shot log perplexity at several lengths")
    e.add_argument("run", help="run folder or exported folder (firepe export)")
    e.add_argument("--lengths", required=True, help="comma-separated, e.g. 512,1024,2048")
    e.add_argument("--val-tokens", type=int_arg, help="validation tokens scored at every length")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="output prefix (default RUN/eval -> eval.json, eval.csv)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--attention", choices=list(BACKENDS),
                   help="attention backend (chunked: no n x n bias; evaluation at 32k+ tokens)")
    e.add_argument("--batch-tokens", type=int_arg, default=16384, help="tokens per forward pass")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> None:
    positive(args.val_tokens, "--val-tokens", 1, MAX_TOKENS)
    positive(args.batch_tokens, "--batch-tokens", 1, MAX_BATCH_TOKENS)
    resolve_device(args.device)
    res = evaluate_run(args.run, parse_lengths(args.lengths), val_tokens=args.val_tokens, device=args.device,
                       progress=not args.no_progress, attention=args.attention, batch_tokens=args.batch_tokens,
                       write=False)
    print(f"{'length':>8} {'log ppl':>9} {'ppl':>10}")
    for r in res["results"]:
        print(f"{r['length']:>8} {r['log_ppl']:>9.4f} {r['ppl']:>10.3f}")
    sys.stdout.flush()
    write_results(Path(args.out) if args.out else Path(args.run) / "eval", res)


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
        c.add_argument("--max-factor", type=int_arg, default=8)
        c.add_argument("--seeds", help="a count N (seeds --seed .. --seed+N-1) or a list like 0,1,2: mean ± std "
                                       "over seeds, OUT/<label>/seed-<s> (default: the one --seed, OUT/<label>)")
        if name == "compare":
            c.add_argument("--task", choices=["passkey"], help="then fine-tune every model on passkey at its "
                                                               "training length and score it at every length")
            c.add_argument("--task-steps", type=int_arg,
                           help=f"passkey fine-tuning steps (default {PASSKEY_DEFAULTS['steps']})")
            c.add_argument("--task-lr", type=float_arg,
                           help=f"passkey fine-tuning learning rate (default {PASSKEY_DEFAULTS['lr']:g})")
            c.add_argument("--task-examples", type=int_arg, default=10, help="passkey examples per length and depth")
            c.add_argument("--depths", help="passkey key depths (default 0,0.25,0.5,0.75,1)")
        add_model_args(c, with_position=False, preset=COMPARE_PRESET)
        add_train_args(c, *_compare_defaults())
        c.set_defaults(func=cmd_compare if name == "compare" else cmd_ablate, position="nope")


def cmd_compare(args, specs: list[str] | None = None) -> None:
    model, train, data = _configs(args)
    out = check_out(args.out)
    if specs is None:
        specs = split_specs(args.encodings, "--encodings")
    task = getattr(args, "task", None)
    for dest in ("task_steps", "task_lr", "task_examples", "depths"):
        if task is None and dest in args.given:
            raise ValueError(f"--{dest.replace('_', '-')} applies with --task passkey only.")
    seeds = parse_seeds(args.seeds, first=train.seed) if args.seeds is not None else None
    task_train = passkey_train_config(train, args.task_steps, args.task_lr, args.task_examples) if task else None
    depths = parse_depths(args.depths) if task and args.depths is not None else None
    summary = compare(out, specs, replace(model, position="nope", position_options={}), train, data,
                      lengths_up_to(args.lengths, args.max_factor, train.seq_len), val_tokens=args.val_tokens,
                      progress=train.progress, seeds=seeds, passkey=task is not None)
    print(f"wrote {out / 'results.md'}, results.json, results.csv and perplexity.png")
    if task:
        compare_passkey(out, summary, task_train, depths=depths, examples=args.task_examples)
        print(f"wrote {out / 'passkey'}/score.md, score.json, score.csv, score.png and passkey_<label>.png")


def cmd_ablate(args) -> None:
    cmd_compare(args, specs=split_specs(args.variants, "--variants", sep=";") if args.variants is not None
                else ABLATION_SPECS)


def add_synth(sub) -> None:
    y = sub.add_parser("synth", help="train every encoding from scratch on a synthetic task (recall, copy, "
                                     "reverse, addition) and score it from 1x to 16x")
    y.add_argument("--out", default="runs/synth", help="output folder")
    y.add_argument("--encodings", default=",".join(DEFAULT_SPECS),
                   help="comma-separated encodings; use ';' between specs that carry options")
    y.add_argument("--seeds", default="3", help="a count N (seeds --seed .. --seed+N-1) or a list like 0,1,2")
    y.add_argument("--lengths", help="scored lengths (addition: digits); default: training length x 1, 2, 4, ... "
                                     "--max-factor (addition: digits x 1..4)")
    y.add_argument("--max-factor", type=int_arg, default=16)
    y.add_argument("--examples", type=int_arg, default=512, help="answers scored per length")
    add_dataclass_args(y.add_argument_group("task"), SynthConfig, SynthConfig())
    add_model_args(y, with_position=False, preset="tiny")
    add_dataclass_args(y.add_argument_group("training (copy, reverse: --seq-len 32 --steps 3000 unless given; "
                                            "addition: --steps 4000)"), TrainConfig, TrainConfig(**SYNTH_DEFAULTS))
    y.set_defaults(func=cmd_synth)


def cmd_synth(args) -> None:
    task = dataclass_from_args(SynthConfig, args)  # another task's options are refused here
    for name, value in task_defaults(task.task, args.given).items():  # the task's own recipe, unless given
        setattr(args, name, value)
    if task.task == "addition":  # its training length follows from --digits (checked below)
        args.seq_len = make_task(task).train_length(args.seq_len)
    train = dataclass_from_args(TrainConfig, args)
    if task.task == "addition" and "seq_len" in args.given:
        raise ValueError("--seq-len does not apply to --task addition: its training length follows from --digits.")
    out = check_out(args.out)
    seeds = parse_seeds(args.seeds, first=train.seed)
    synth(out, split_specs(args.encodings, "--encodings"), model_config(model_values(args), "nope", args.seq_len),
          train, task, seeds, levels=synth_levels(task, args.lengths), max_factor=args.max_factor,
          examples=args.examples)
    print(f"wrote {out / 'results.md'}, results.json, results.csv and accuracy.png")


def add_suite(sub) -> None:
    s = sub.add_parser("suite", help="firepe synth on several tasks (OUT/<task>), then one report of them all "
                                     "(OUT/report.html, report.md); run again to continue after a kill")
    s.add_argument("--out", default="runs/suite", help="output folder")
    s.add_argument("--tasks", default=",".join(SUITE_TASKS), help="comma-separated synthetic tasks, each with its "
                                                                  "own defaults")
    s.add_argument("--encodings", default=",".join(DEFAULT_SPECS),
                   help="comma-separated encodings; use ';' between specs that carry options")
    s.add_argument("--seeds", default="3", help="a count N (seeds --seed .. --seed+N-1) or a list like 0,1,2")
    s.add_argument("--lengths", help="scored lengths of the tasks scored by length (not addition: digits x 1..4)")
    s.add_argument("--max-factor", type=int_arg, default=16)
    s.add_argument("--examples", type=int_arg, default=512, help="answers scored per length")
    add_dataclass_args(s.add_argument_group("task options (each passed only to the tasks that read it)"),
                       SynthConfig, SynthConfig(), skip=("task",))
    add_model_args(s, with_position=False, preset="tiny")
    add_dataclass_args(s.add_argument_group("training (--seq-len: not addition)"), TrainConfig,
                       TrainConfig(**SYNTH_DEFAULTS))
    s.set_defaults(func=cmd_suite)


def cmd_suite(args) -> None:
    positions, args.random_positions = args.random_positions, None  # checked per task: its own training length
    train = dataclass_from_args(TrainConfig, args)
    out = check_out(args.out)
    res = suite(out, parse_tasks(args.tasks), split_specs(args.encodings, "--encodings"), model_values(args), train,
                parse_seeds(args.seeds, first=train.seed), vars(args), args.given, lengths=args.lengths,
                max_factor=args.max_factor, examples=args.examples, random_positions=positions)
    print("wrote {} and {}".format(*res["report"]))


def add_report(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML page (and Markdown) of every firepe synth "
                                      "results.json under DIR")
    r.add_argument("dir", help="folder searched recursively for results.json of firepe synth (or suite)")
    r.add_argument("--out", help="the HTML file (default DIR/report.html); the Markdown is written beside it (.md)")
    r.set_defaults(func=lambda args: print("wrote {} and {}".format(*report(args.dir, args.out))))


def add_prepare(sub) -> None:
    r = sub.add_parser("prepare", help="tokenize a corpus once into memory-mapped token shards (train with --data)")
    r.add_argument("--out", required=True, help="the prepared folder (new, or one this command was interrupted in)")
    add_dataclass_args(r.add_argument_group("corpus"), DataConfig, DataConfig(), DATA_HELP,
                       skip=("val_tokens", "data"))
    add_dataclass_args(r.add_argument_group("shards"), PrepareConfig, PrepareConfig())
    r.set_defaults(func=cmd_prepare)


def cmd_prepare(args) -> None:
    res = prepare(check_out(args.out), dataclass_from_args(DataConfig, args), dataclass_from_args(PrepareConfig, args))
    folder = PreparedData(args.out)
    if res["already"]:
        print(f"{args.out} is already prepared; every shard verified against its sha256.")
    print(folder.describe())
    if not res["already"] and res["tokens_per_s"]:
        print(f"prepared in {res['seconds']:.1f} s ({res['tokens_per_s']:,.0f} tokens/s); train with --data {args.out}")


def add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a trained run on a task (loss on the answer tokens only)")
    f.add_argument("run", nargs="?", help="the trained run folder to start from (not with --resume)")
    f.add_argument("--task", default="passkey", help=TASK_HELP)
    f.add_argument("--out", required=True, help="new run folder of the fine-tuned model")
    f.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    fm = f.add_argument_group("model changes")
    fm.add_argument("--dropout", type=float_arg, default=0.1, help="dropout (Tables 10/12: 0.1)")
    fm.add_argument("--attention", choices=list(BACKENDS), help="attention backend (chunked: O(n) memory)")
    fm.add_argument("--position-options", help="encoding options that depend on the target length, e.g. "
                                               "factor=4 for rope_pi/yarn from 2048 to 8192")
    fm.add_argument("--position", help="switch to an encoding with the same checkpoint state, e.g. "
                                       "rope_pi:factor=4 for a rope run (position interpolation)")
    add_dataclass_args(f.add_argument_group("task"), FinetuneConfig, FinetuneConfig())
    add_dataclass_args(f.add_argument_group("training"), TrainConfig, TrainConfig(**FINETUNE_DEFAULTS))
    next(a for a in f._actions if a.dest == "seq_len").help = "training length (default: the run's)"
    f.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> None:
    check_out(args.out)
    values = vars(args)
    with process_group():
        # built in the call: _fit_and_report holds the only reference and frees it in the group
        _fit_and_report(FinetuneTrainer(args.out, resume=True, changes=resume_finetune_changes(args.out, values,
                                                                                               args.given))
                        if args.resume else FinetuneTrainer(args.out, args.run, *finetune_inputs(values, args.given)),
                        f"fine-tuned {args.out}")


def add_score(sub) -> None:
    sc = sub.add_parser("score", help="greedy-decode runs on a task and score them, across context lengths")
    sc.add_argument("runs", nargs="+", help="run folders (trained or fine-tuned)")
    sc.add_argument("--task", default="passkey", help=TASK_HELP)
    sc.add_argument("--lengths", help="context lengths, e.g. 512,2048,8192 (default: the run's training length; "
                                      "passkey: 1x, 2x, 4x, 8x it)")
    sc.add_argument("--depths", help="passkey key depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    sc.add_argument("--examples", type=int_arg, default=10, help="passkey examples per length and depth")
    sc.add_argument("--limit", type=int_arg, help="first N examples of other tasks")
    sc.add_argument("--split", default="validation", help="dataset split of Hugging Face tasks")
    sc.add_argument("--task-files", help="local copies (json/jsonl/parquet/csv, joined by ',') of a Hugging Face task")
    sc.add_argument("--metric", help="main metric of a jsonl:/parquet: task (default f1): em, f1, rgm, accuracy")
    sc.add_argument("--max-new-tokens", type=int_arg, help="default: the longest reference in tokens + 1")
    sc.add_argument("--filler", choices=["corpus", "classic"], default="corpus", help="passkey filler")
    sc.add_argument("--seed", type=int_arg, default=0, help="passkey keys and filler offsets")
    sc.add_argument("--device", default="cpu")
    sc.add_argument("--attention", choices=list(BACKENDS))
    sc.add_argument("--batch-tokens", type=int_arg, default=16384, help="prompt tokens per forward pass")
    sc.add_argument("--out", default="runs/score", help="output folder (score.json, .csv, .md, .png)")
    sc.add_argument("--no-plot", action="store_true")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar (examples decoded, tokens/s)")
    sc.set_defaults(func=cmd_score)


def cmd_score(args) -> None:
    positive(args.examples, "--examples")  # their upper bounds: score_runs checks them
    positive(args.limit, "--limit")
    positive(args.max_new_tokens, "--max-new-tokens")
    positive(args.batch_tokens, "--batch-tokens")
    positive(args.seed, "--seed", 0)
    out = check_out(args.out)
    if args.metric is not None:
        check_metric(args.metric)
    check_task_options(args.task, args.given, passkey_only=("examples", "filler", "seed"))  # after the values
    lengths = parse_lengths(args.lengths) if args.lengths is not None else None
    depths = parse_depths(args.depths) if args.depths is not None else None
    with locked_output(out):  # two commands never write one output folder at once
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
    check_out(args.out)  # '' is refused as empty (it used to be "output folder '.' already exists")
    try:
        from .hf import export_run
    except ImportError as e:  # transformers missing or older than tested
        raise ValueError(f"firepe export: {str(e).splitlines()[0]}") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = export_run(args.run, args.out)
    print(f"wrote {out} (load with transformers' AutoModelForCausalLM.from_pretrained({str(out)!r}, "
          "trust_remote_code=True))")


def add_plot_bias(sub) -> None:
    b = sub.add_parser("plot-bias", help="plot a trained model's bias for one query (Fig. 4)")
    b.add_argument("run", help="run folder or exported folder (firepe export)")
    b.add_argument("--query", type=int_arg, default=None,
                   help="query position (default 128; with --text, the text's last token)")
    b.add_argument("--text", help="the input whose bias is drawn, for data-dependent biases (fox, cope): required "
                                  "there, refused elsewhere")
    b.add_argument("--out", help="PNG path (default RUN/bias_q<query>.png)")
    b.set_defaults(func=lambda args: print(f"wrote {plot_run_bias(args.run, args.query, args.text, args.out)}"))


def add_generate(sub) -> None:
    g = sub.add_parser("generate", help="sample from a trained model with a KV cache")
    g.add_argument("run", help="run folder or exported folder (firepe export)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int_arg, default=200)
    g.add_argument("--temperature", type=float_arg, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int_arg, default=40)
    g.add_argument("--seed", type=int_arg, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--attention", choices=list(BACKENDS))
    g.set_defaults(func=lambda args: print(generate_text(args.run, args.prompt, args.max_new_tokens, args.temperature,
                                                         args.top_k, args.seed, args.device, args.attention)))


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
    s.add_argument("--job-timeout", type=int_arg, default=600, help="seconds per measurement subprocess (then an "
                                                                  "error row)")
    for name, default, text in (("batch", 1, None), ("heads", 12, None), ("head-dim", 64, None),
                                ("n-layer", 2, "layers of the model scope (0: the preset's)"), ("block", 1024, None),
                                ("repeats", 3, None), ("fire-mlp-layers", 2, None), ("threads", None, None)):
        s.add_argument(f"--{name}", type=int_arg, default=default, help=text)
    s.add_argument("--preset", default="base", help="model preset of the model scope")
    s.add_argument("--attention", choices=list(BACKENDS), default="auto")
    s.add_argument("--forward-only", action="store_true")
    s.add_argument("--out", default="runs/bench")
    s.set_defaults(func=lambda args: bench_speed(check_out(args.out), **{
        k: v for k, v in vars(args).items() if k not in ("out", "func", "command", "given")}))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="firepe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"firepe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_train, add_eval, add_compare, add_synth, add_suite, add_report, add_prepare, add_finetune,
                add_score, add_export, add_plot_bias, add_generate, add_bench_speed):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else 2
    args.given = given_options(parser, argv, args.command)
    old_format = warnings.formatwarning
    warnings.formatwarning = one_line_warning
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
