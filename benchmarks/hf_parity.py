"""Parity of exported models (``firepe export``) with firepe, for every encoding.

For each encoding: a run folder with one checkpoint of a ``cpu``-preset model (3 layers, 4 heads,
d=128) trained for ``--steps`` steps at ``--seq-len`` on the stdlib corpus, exported, loaded with
``AutoModelForCausalLM.from_pretrained``; then

* the max |logit difference| against firepe's own model at 1x and 8x the training length (fp32), and
* greedy decoding: ``model.generate(do_sample=False)`` (transformers' loop and DynamicCache) against
  ``GPT.generate(temperature=0)``, ``--new`` tokens after a prompt; the share of equal tokens;
* ``pipeline("text-generation")`` after a ``save_pretrained`` -> ``from_pretrained`` round trip: its text
  equals firepe's greedy continuation, and the reloaded logits equal the export's (bit for bit).

Writes a Markdown table to ``--out``. Usage::

    python benchmarks/hf_parity.py --steps 30 --out benchmarks/results/hf_parity_cpu.md
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

import firepe.hf  # noqa: F401
from firepe.config import DataConfig, TrainConfig, preset
from firepe.hf import export_run
from firepe.loading import load_run
from firepe.train import Trainer

ENCODINGS = [("nope", {}), ("rope", {}), ("rope_pi", {"factor": 2.0}),
             ("yarn", {"factor": 4.0, "original_max_position_embeddings": 128}), ("alibi", {}), ("kerple_log", {}),
             ("kerple_power", {}), ("t5", {}), ("sandwich", {}), ("fire", {}), ("fire_s", {}),
             ("p_rope", {}), ("longrope", {"factor": 4.0, "original_max_position_embeddings": 128}),
             ("fox", {}), ("cope", {"npos_max": 128})]


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--out", default="benchmarks/results/hf_parity_cpu.md")
    p.add_argument("--append", action="store_true", help="append the table to --out (one per transformers release)")
    args = p.parse_args()
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, opts in ENCODINGS:
            run = Path(tmp) / name
            trainer = Trainer(run, preset("cpu", position=name, position_options=opts),
                              TrainConfig(seq_len=args.seq_len, batch_size=8, steps=args.steps, warmup_steps=5,
                                          checkpoint_every=args.steps, progress=False),
                              DataConfig(max_train_tokens=2_000_000, val_tokens=4096))
            trainer.fit()
            out = export_run(run, Path(tmp) / f"{name}-hf")
            ref, _ = load_run(run)
            hf = AutoModelForCausalLM.from_pretrained(out)
            g = torch.Generator().manual_seed(0)
            diffs = []
            for factor in (1, 8):
                ids = torch.randint(0, 256, (2, factor * args.seq_len), generator=g)
                with torch.no_grad():
                    diffs.append((hf(ids).logits - ref(ids)[0]).abs().max().item())
            prompt = torch.tensor([list(b"import os\nimport sys\n\ndef main(")])
            ours = ref.generate(prompt, args.new, temperature=0)[0, prompt.shape[1]:]
            theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=args.new, min_new_tokens=args.new)[0, prompt.shape[1]:]
            same = (ours == theirs).float().mean().item()
            again = Path(tmp) / f"{name}-again"
            hf.save_pretrained(again)
            tok = AutoTokenizer.from_pretrained(out)
            tok.save_pretrained(again)
            reloaded = AutoModelForCausalLM.from_pretrained(again)
            with torch.no_grad():
                round_trip = torch.equal(reloaded(ids).logits, hf(ids).logits)
            text = pipeline("text-generation", model=reloaded, tokenizer=tok)(
                "import os\nimport sys\n\ndef main(", max_new_tokens=32, do_sample=False)[0]["generated_text"]
            piped = text == tok.decode(ref.generate(prompt, 32, temperature=0)[0])
            rows.append((name, diffs[0], diffs[1], same, round_trip and piped))
            print(f"{name:>12}  1x {diffs[0]:.2e}  8x {diffs[1]:.2e}  greedy tokens equal {same:.1%}  "
                  f"round trip + pipeline {round_trip and piped}", flush=True)
    lines = [f"Exported-model parity, measured by `python benchmarks/hf_parity.py --steps {args.steps}` on "
             f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"transformers {__import__('transformers').__version__}; cpu preset trained {args.steps} steps at "
             f"{args.seq_len} tokens; {time.perf_counter() - t0:.0f} s in all.", "",
             f"| encoding | max abs logit diff, {args.seq_len} tokens (1x) | {8 * args.seq_len} tokens (8x) | "
             f"greedy tokens equal ({args.new} new) | save_pretrained round trip + pipeline equal |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {a:.1e} | {b:.1e} | {s:.0%} | {'yes' if ok else 'NO'} |" for n, a, b, s, ok in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    old = Path(args.out).read_text() + "\n" if args.append and Path(args.out).exists() else ""
    Path(args.out).write_text(old + "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
