"""Interleaved A/B timing of the training step of two position encodings, in one process.

    python benchmarks/train_step_ab.py fire nope --rounds 40

Both models are built at the ``firepe compare`` shapes (``--preset cpu``, batch 8, 256 tokens; FIRE in
table mode as ``firepe train`` builds it, by ``train_speed.make_step``) with the same seed; each round
times ``--steps`` AdamW steps (forward, backward, update) of A, then of B, on the same random tokens, so
drift of the machine's speed hits both alike. Prints the median milliseconds per step of each, and the
median and range of the per-round ratios ``tokens/s(A) / tokens/s(B)`` (= B's time / A's time).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_speed import make_step  # benchmarks/ is on sys.path when this script runs

from firepe.devices import cpu_description


def build(name: str, args):
    """Seconds per step of ``n`` steps of encoding ``name``, as a callable of ``n``."""
    step = make_step(name, args.preset, args.seq_len, args.batch_size, seed=args.seed)

    def steps(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t0) / n

    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--steps", type=int, default=3, help="steps per round and encoding")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for flag in ("rounds", "steps", "seq_len", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    a, b = build(args.a, args), build(args.b, args)
    a(args.warmup), b(args.warmup)
    ta, tb = [], []
    for _ in range(args.rounds):
        ta.append(a(args.steps))
        tb.append(b(args.steps))
    ratios = [y / x for x, y in zip(ta, tb)]
    print(f"{cpu_description()}, torch {torch.__version__},"
          f" {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps, "
          f"batch {args.batch_size} x {args.seq_len} tokens, preset {args.preset}")
    for name, t in ((args.a, ta), (args.b, tb)):
        ms = statistics.median(t) * 1e3
        print(f"{name}: median {ms:.1f} ms/step, {args.batch_size * args.seq_len / ms * 1e3:,.0f} tokens/s")
    print(f"tokens/s {args.a} / {args.b}: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
