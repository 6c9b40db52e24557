"""firepe.attend against firepe's own GPT attention layer at the same shapes (issue 34's speed bar).

Both compute one layer's causal attention with FIRE's bias, forward and backward, on ``[1, 12, n, 64]`` float32
tensors: ``attend`` through the public function (argument checks, positions, the kind's ``attend_keys``), the
layer through what ``firepe bench-speed --scope layer`` times (the kind's call with the model's inputs). Rounds
alternate A and B; prints the median of each and of the per-round ratios.

    python benchmarks/attend_speed.py --n 2048 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import firepe
from firepe import positions
from firepe.devices import cpu_description
from firepe.kinds import kind_of


def timed(fn, q, k, v) -> float:
    for t in (q, k, v):
        t.grad = None
    start = time.perf_counter()
    fn().sum().backward()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--position", default="fire")
    args = ap.parse_args()
    torch.manual_seed(0)
    enc = positions.build(args.position, 12, 64, **({"init_L": args.n / 4} if args.position == "fire" else {}))
    q, k, v = (torch.randn(1, 12, args.n, 64, requires_grad=True) for _ in range(3))
    pos = torch.arange(args.n)
    layer = kind_of(enc).bench(enc, q, k, v, lambda: torch.randn(1, args.n, 768), pos, "auto", 1024)
    fns = {"attend": lambda: firepe.attend(q, k, v, enc), "layer": layer}
    for fn in fns.values():
        timed(fn, q, k, v)  # warm-up: kernels built, tables cached
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, q, k, v))
    ratios = [a / b for a, b in zip(times["attend"], times["layer"])]
    print(f"{cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.position} "
          f"n={args.n} fwd+bwd, {args.rounds} alternating rounds")
    for name, ts in times.items():
        med, lo, hi = statistics.median(ts) * 1e3, min(ts) * 1e3, max(ts) * 1e3
        print(f"  {name}: median {med:.1f} ms (min {lo:.1f}, max {hi:.1f})")
    print(f"  attend / layer: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
