"""``firepe`` command line: train, eval, compare, ablate, plot-bias, generate, bench-speed.

Every user error ends in one line ``firepe: error: ...`` and exit status 2; nothing already
written is removed.
"""

from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .attention import BACKENDS

# Defaults of the laptop comparison (`firepe compare` with no options): measured to finish in
# well under 15 minutes on a 2-core CPU (see README).
COMPARE_DEFAULTS = dict(preset="cpu", seq_len=256, batch_size=8, steps=800, lr=2e-3, warmup_steps=50,
                        max_train_tokens=4_000_000, val_tokens=32768)


def _add_model_args(p: argparse.ArgumentParser, with_position: bool) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="cpu", help="tiny | cpu | small | base | large (Table 8)")
    if with_position:
        g.add_argument("--position", default="fire",
                       help="encoding spec, e.g. fire, rope, fire:mlp_layers=1,activation=gelu")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--d-model", type=int)
    g.add_argument("--untied", action="store_true", help="untie input and output embeddings")
    g.add_argument("--dropout", type=float, default=0.0)


def _add_train_args(p: argparse.ArgumentParser, defaults: dict) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--seq-len", type=int, default=defaults.get("seq_len", 128), help="training length")
    g.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 16),
                   help="global sequences per optimizer step")
    g.add_argument("--micro-batch-size", type=int, help="sequences per forward per process (grad accumulation)")
    g.add_argument("--steps", type=int, default=defaults.get("steps", 1000))
    g.add_argument("--lr", type=float, default=defaults.get("lr", 1e-3))
    g.add_argument("--min-lr-ratio", type=float, default=0.1)
    g.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 50))
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint-every", type=int, default=200)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--no-progress", action="store_true")
    d = p.add_argument_group("data")
    d.add_argument("--corpus", default="stdlib", help="stdlib | PATH[,PATH...] | hf:NAME[:CONFIG]")
    d.add_argument("--tokenizer", default="byte", help="byte | bpe | path/to/tokenizer.json")
    d.add_argument("--bpe-vocab-size", type=int, default=4096)
    d.add_argument("--max-train-tokens", type=int, default=defaults.get("max_train_tokens"))
    d.add_argument("--val-tokens", type=int, default=defaults.get("val_tokens", 65536))
    d.add_argument("--hf-data-files", help="local files for hf:json / hf:text / hf:parquet")
    d.add_argument("--hf-text-field", default="text")


def _configs(args, position: str = "nope"):
    from .compare import parse_spec, training_options
    from .data import DataConfig
    from .model import preset
    from .train import TrainConfig

    overrides = {k: v for k, v in (("n_layer", args.n_layer), ("n_head", args.n_head),
                                   ("d_model", args.d_model)) if v is not None}
    spec = parse_spec(getattr(args, "position", position))
    opts = training_options(spec.position, spec.options, args.seq_len)
    model = preset(args.preset, position=spec.position, position_options=opts,
                   tie_embeddings=not args.untied, dropout=args.dropout, **overrides)
    train = TrainConfig(seq_len=args.seq_len, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                        steps=args.steps, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
                        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                        seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                        device=args.device, precision=args.precision, threads=args.threads,
                        progress=not args.no_progress)
    data = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, bpe_vocab_size=args.bpe_vocab_size,
                      max_train_tokens=args.max_train_tokens, val_tokens=args.val_tokens,
                      hf_data_files=args.hf_data_files, hf_text_field=args.hf_text_field)
    return model, train, data


def cmd_train(args) -> None:
    from .train import Trainer

    model, train, data = _configs(args)
    if args.resume:
        trainer = Trainer(args.out, train_cfg=train if args.steps_given else None, resume=True)
    else:
        trainer = Trainer(args.out, model, train, data)
    losses = trainer.fit()
    rank, step = trainer.rank, trainer.step
    import torch.distributed as dist

    if dist.is_initialized():
        # Free the DDP model (and the gloo work it holds) while the interpreter is fully alive: left to
        # interpreter shutdown, gloo's threads now and then abort the process (SIGABRT) after training.
        del trainer
        gc.collect()
        dist.destroy_process_group()
    if rank == 0:
        last = f"{losses[-1]:.4f}" if losses else "n/a (already at the last step)"
        print(f"trained {args.out} to step {step}; last loss {last}")


def cmd_eval(args) -> None:
    from .evaluate import evaluate_run, parse_lengths

    res = evaluate_run(args.run, parse_lengths(args.lengths), val_tokens=args.val_tokens, device=args.device,
                       progress=not args.no_progress, out=args.out, attention=args.attention,
                       batch_tokens=args.batch_tokens)
    print(f"{'length':>8} {'log ppl':>9} {'ppl':>10}")
    for r in res["results"]:
        print(f"{r['length']:>8} {r['log_ppl']:>9.4f} {r['ppl']:>10.3f}")


def _lengths_for(args, train_len: int) -> list[int]:
    from .evaluate import parse_lengths

    if args.lengths:
        return parse_lengths(args.lengths)
    if args.max_factor < 1:
        raise ValueError(f"--max-factor must be >= 1, got {args.max_factor}.")
    out, f = [], 1
    while f <= args.max_factor:
        out.append(train_len * f)
        f *= 2
    return out


def cmd_compare(args, specs: list[str] | None = None) -> None:
    from .compare import compare

    model, train, data = _configs(args)
    if specs is None:  # ',' between plain names, ';' once a spec carries options
        specs = [s for s in args.encodings.split(";" if ":" in args.encodings else ",") if s.strip()]
    compare(args.out, specs, replace(model, position="nope", position_options={}), train, data,
            _lengths_for(args, train.seq_len), val_tokens=args.val_tokens, progress=not args.no_progress)
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, results.csv and perplexity.png")


def cmd_ablate(args) -> None:
    from .compare import ABLATION_SPECS

    cmd_compare(args, specs=args.variants.split(";") if args.variants else ABLATION_SPECS)


def cmd_plot_bias(args) -> None:
    from .plots import bias_curves
    from .positions.base import BiasEncoding
    from .train import load_run

    model, cfg = load_run(args.run)
    mods = model.position_modules()
    if not isinstance(mods[0], BiasEncoding) or cfg["model"]["position"] == "nope":
        raise ValueError(f"run {args.run} uses {cfg['model']['position']!r}, which has no additive bias to plot.")
    panels = {"all layers (shared)": mods[0]} if model.position_shared is not None else {
        f"layer {i}": m for i, m in enumerate(mods)}
    out = bias_curves(panels, query_pos=args.query, path=args.out or Path(args.run) / f"bias_q{args.query}.png")
    print(f"wrote {out}")


def cmd_generate(args) -> None:
    import torch

    from .checkpoint import dataclass_from_dict
    from .data import DataConfig, load_tokenizer
    from .train import load_run

    model, cfg = load_run(args.run, device=args.device)
    if args.attention:
        model.set_attention(args.attention)
    tok = load_tokenizer(Path(args.run), dataclass_from_dict(DataConfig, cfg["data"]))
    ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt is empty; give at least one character.")
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    prompt = torch.tensor([ids], device=args.device)
    out = model.generate(prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         generator=gen)
    print(tok.decode(out[0].tolist()))


def cmd_bench_speed(args) -> None:
    from .bench import ROWS, run_bench
    from .evaluate import parse_lengths

    rows = [r for r in args.encodings.split(",") if r] if args.encodings else ROWS
    scopes = ["layer", "model"] if args.scope == "both" else [args.scope]
    settings = {"device": args.device, "dtype": args.dtype, "batch": args.batch, "heads": args.heads,
                "head_dim": args.head_dim, "preset": args.preset, "n_layer": args.n_layer,
                "attention": args.attention, "block": args.block, "repeats": args.repeats,
                "backward": not args.forward_only, "fire_layers": args.fire_mlp_layers, "threads": args.threads}
    run_bench(rows, parse_lengths(args.lengths), scopes, settings, Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firepe", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"firepe {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one GPT (single process or under torchrun)")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_model_args(t, with_position=True)
    _add_train_args(t, {})
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="zero-shot log perplexity at several lengths")
    e.add_argument("run")
    e.add_argument("--lengths", required=True, help="comma-separated, e.g. 512,1024,2048")
    e.add_argument("--val-tokens", type=int, help="validation tokens scored at every length")
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", help="output prefix (default RUN/eval -> eval.json, eval.csv)")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--attention", choices=list(BACKENDS),
                   help="attention backend (chunked: no n x n bias; evaluation at 32k+ tokens)")
    e.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward pass")
    e.set_defaults(func=cmd_eval)

    for name, helptext in (("compare", "the main job: train every encoding short, test long"),
                           ("ablate", "Appendix B ablations of FIRE through the compare machinery")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--out", default=f"runs/{name}", help="output folder")
        if name == "compare":
            c.add_argument("--encodings", default=",".join(__import__("firepe.compare").compare.DEFAULT_SPECS),
                           help="comma-separated encodings; use ';' between specs that carry options")
        else:
            c.add_argument("--variants", help="';'-separated specs (default: the Appendix B set)")
        c.add_argument("--lengths", help="evaluation lengths (default: train length x 1, 2, 4, ... max-factor)")
        c.add_argument("--max-factor", type=int, default=8)
        _add_model_args(c, with_position=False)
        _add_train_args(c, COMPARE_DEFAULTS)
        c.set_defaults(func=cmd_compare if name == "compare" else cmd_ablate, position="nope",
                       preset=COMPARE_DEFAULTS["preset"])

    b = sub.add_parser("plot-bias", help="plot a trained model's bias for one query (Fig. 4)")
    b.add_argument("run")
    b.add_argument("--query", type=int, default=128)
    b.add_argument("--out", help="PNG path (default RUN/bias_q<query>.png)")
    b.set_defaults(func=cmd_plot_bias)

    g = sub.add_parser("generate", help="sample from a trained model with a KV cache")
    g.add_argument("run")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="cpu")
    g.add_argument("--attention", choices=list(BACKENDS))
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("bench-speed", help="time and peak memory per encoding across lengths (Fig. 5)")
    s.add_argument("--lengths", default="512,1024,2048,4096,8192")
    s.add_argument("--encodings", help="comma-separated rows (default: every encoding, fire_appendix_e, "
                                       "fire_exact, fire, fire_s)")
    s.add_argument("--scope", choices=["layer", "model", "both"], default="both")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--heads", type=int, default=12)
    s.add_argument("--head-dim", type=int, default=64)
    s.add_argument("--preset", default="base", help="model preset of the model scope")
    s.add_argument("--n-layer", type=int, default=2, help="layers of the model scope (0: the preset's)")
    s.add_argument("--attention", choices=list(BACKENDS), default="auto")
    s.add_argument("--block", type=int, default=1024)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--forward-only", action="store_true")
    s.add_argument("--fire-mlp-layers", type=int, default=2)
    s.add_argument("--threads", type=int)
    s.add_argument("--out", default="runs/bench")
    s.set_defaults(func=cmd_bench_speed)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.steps_given = "--steps" in argv
    try:
        args.func(args)
    except (ValueError, FloatingPointError, FileNotFoundError) as e:
        print(f"firepe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("firepe: interrupted; checkpoints written so far are kept (continue with --resume).", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
