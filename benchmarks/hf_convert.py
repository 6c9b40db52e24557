"""A RoPE model converted to FIRE and trained on, against the same model kept on RoPE (issue 34).

For each seed: ``firepe train --arch llama --position rope`` at the ``firepe compare`` settings (``--base-steps``
steps: the "pretrained" RoPE checkpoint); then, from its weights, on the same next ``--more-steps`` batches with a
fresh AdamW (constant ``--lr``, no warm-up):

* ``rope``: the model kept on RoPE, trained on;
* ``fire``: the same weights with the rotary replaced by FIRE (``firepe.hf.with_position``'s rule: rotary off,
  FIRE freshly initialized with ``init_L = seq_len / 4`` as ``firepe train`` does), trained on;
* ``fire+0``: the converted model before any further step (what the conversion alone costs).

Every model is scored on the same held-out tokens at 1x-8x the training length (log perplexity). Writes
``OUT/hf_convert.json`` and prints a Markdown table (mean ± std over seeds, and fire minus rope paired per seed).

    python benchmarks/hf_convert.py --out /tmp/hf_convert --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from firepe.arch import LlamaGPT
from firepe.checkpoint import latest_checkpoint, read_state
from firepe.config import DataConfig, TrainConfig, dataclass_from_dict
from firepe.data import split_tokens, training_data
from firepe.evaluate import eval_tokens, evaluate_lengths
from firepe.loading import load_run
from firepe.positions import training_options
from firepe.train import build_optimizer

SETTINGS = ["--preset", "cpu", "--seq-len", "256", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "50",
            "--max-train-tokens", "4000000", "--val-tokens", "32768"]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def convert(base: LlamaGPT, position: str, seq_len: int) -> LlamaGPT:
    """``base``'s weights under ``position`` (its options at their training defaults for ``seq_len``)."""
    cfg = replace(base.cfg, position=position, position_options=training_options(position, {}, seq_len))
    model = LlamaGPT(cfg)
    missing, unexpected = model.llama.load_state_dict(base.llama.state_dict(), strict=False)
    assert not unexpected and all("firepe_position" in k for k in missing), (missing, unexpected)
    return model


def train_on(model, data, first_step: int, steps: int, batch_size: int, seed: int, lr: float) -> list[float]:
    model.train()
    opt = build_optimizer(model, TrainConfig(lr=lr))
    losses = []
    for step in range(first_step, first_step + steps):
        x, y = data.batch(step, batch_size, seed)
        logits, _ = model(x.long())
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.long().reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--base-steps", type=positive, default=800)
    ap.add_argument("--more-steps", type=positive, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lengths", default="256,512,1024,2048")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    lengths = [int(n) for n in args.lengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[int, list[float]]] = {"rope": {}, "fire": {}, "fire+0": {}, "base": {}}
    started = time.time()
    for seed in seeds:
        run = out / f"base-{seed}"
        ckpt = latest_checkpoint(run) if (run / "config.json").exists() else None
        if ckpt is None or read_state(ckpt)["step"] < args.base_steps:  # a new base, or one a kill interrupted
            again = ["--resume"] if (run / "config.json").exists() else ["--arch", "llama", "--position", "rope",
                                                                          "--seed", str(seed), *SETTINGS]
            subprocess.run(["firepe", "train", "--steps", str(args.base_steps), "--out", str(run), *again,
                            "--no-progress"], check=True)
        base, cfg = load_run(run)
        data_cfg = dataclass_from_dict(DataConfig, cfg["data"])
        seq_len, batch = cfg["train"]["seq_len"], cfg["train"]["batch_size"]
        tok, data, _ = training_data(data_cfg, seq_len, run_dir=run, vocab_size=base.cfg.vocab_size)
        stream = split_tokens(data_cfg, tok, "validation", data_cfg.val_tokens + max(lengths) + 1)
        tokens = eval_tokens(stream, lengths, data_cfg.val_tokens)

        def score(model, tokens=tokens):
            with torch.no_grad():
                return [r["log_ppl"] for r in evaluate_lengths(model, tokens, lengths, progress=False)]

        rows["base"][seed] = score(base)
        fire = convert(base, "fire", seq_len)
        rows["fire+0"][seed] = score(fire)
        for name, model in (("rope", copy.deepcopy(base)), ("fire", fire)):
            torch.manual_seed(seed)
            losses = train_on(model, data, args.base_steps, args.more_steps, batch, seed, args.lr)
            rows[name][seed] = score(model)
            print(f"seed {seed} {name}: last loss {losses[-1]:.4f}; log ppl {rows[name][seed]}", flush=True)
    wall = time.time() - started
    result = {"seeds": seeds, "lengths": lengths, "base_steps": args.base_steps, "more_steps": args.more_steps,
              "lr": args.lr, "log_ppl": rows, "wall_s": round(wall, 1), "torch": torch.__version__}
    (out / "hf_convert.json").write_text(json.dumps(result, indent=1))
    head = " | ".join(f"{n} ({n // lengths[0]}x)" for n in lengths)
    print(f"\n| model ({len(seeds)} seeds) | {head} |\n|---|" + "---|" * len(lengths))
    for name in ("base", "fire+0", "rope", "fire"):
        cells = []
        for i in range(len(lengths)):
            vals = [rows[name][s][i] for s in seeds]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = []
    for i in range(len(lengths)):
        diffs = [rows["fire"][s][i] - rows["rope"][s][i] for s in seeds]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        cells.append(f"{statistics.mean(diffs):+.3f} ± {sd:.3f} ({sum(d < 0 for d in diffs)})")
    print("| fire minus rope | " + " | ".join(cells) + " |")
    print(f"\nwall {wall:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
