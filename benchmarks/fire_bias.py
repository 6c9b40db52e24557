"""FIRE bias alone: Appendix E formulation (``reference``) vs ``exact`` vs ``table`` mode.

    python benchmarks/fire_bias.py --n 2048 --heads 12

Forward and forward+backward (gradient of a random cotangent into the MLP, c and L) time, median
of ``--repeats`` after a warm-up, and the max |bias - reference| over causal entries (fp32).
Rows i <= L and i > L both occur (L = --init-L).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from firepe import positions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--init-L", type=float, default=512.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    n, q = args.n, torch.arange(args.n)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    print(f"n={n}, heads={args.heads}, L={args.init_L:g}, {platform.machine()} CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| MLP hidden layers | mode | forward s | fwd+bwd s | speed-up vs reference (fwd+bwd) | max abs error |")
    print("|---|---|---|---|---|---|")
    for layers in (1, 2):
        torch.manual_seed(0)
        fire = positions.build("fire", num_heads=args.heads, head_dim=64, mlp_layers=layers, init_L=args.init_L)
        grad = torch.randn(args.heads, n, n)
        fire.bias_mode = "reference"
        with torch.no_grad():
            ref = fire.bias(q, q)
        base = None
        for mode in ("reference", "exact", "table"):
            fire.bias_mode = mode
            fwd, both = [], []
            for _ in range(args.repeats + 1):
                t0 = time.perf_counter()
                b = fire.bias(q, q)
                t1 = time.perf_counter()
                b.backward(grad)
                fire.zero_grad(set_to_none=True)
                both.append(time.perf_counter() - t0)
                fwd.append(t1 - t0)
            f, fb = statistics.median(fwd[1:]), statistics.median(both[1:])
            base = base or fb
            err = (b.detach() - ref)[:, causal].abs().max().item()
            print(f"| {layers} | {mode} | {f:.3f} | {fb:.3f} | {base / fb:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
