"""Training throughput (tokens/s) per position encoding, on CPU and (when present) on GPU.

    python benchmarks/train_speed.py --preset cpu --seq-len 128 --batch-size 16 --steps 20
    python benchmarks/train_speed.py --device cuda --preset base --seq-len 2048 --batch-size 8

Random tokens, the real model and optimizer step (AdamW, bf16 autocast on CUDA); the first
``--warmup`` steps are not timed. Prints a markdown table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from firepe.config import TrainConfig, preset
from firepe.model import GPT
from firepe.positions import training_options
from firepe.train import build_optimizer

ENCODINGS = ["nope", "rope", "alibi", "kerple_log", "t5", "sandwich", "fire", "fire_s"]


def make_step(name: str, preset_name: str, seq_len: int, batch_size: int, device: str = "cpu", seed: int = 0):
    """One training step of a fresh model with encoding ``name`` (forward, backward, AdamW update, bf16
    autocast on CUDA) on random tokens ``[batch_size, seq_len + 1]`` fixed by ``seed``, as a callable."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    opts = training_options(name, {}, seq_len)  # as `firepe train`: FIRE in table mode
    model = GPT(preset(preset_name, position=name, position_options=opts)).to(dev)
    opt = build_optimizer(model, TrainConfig(lr=1e-4))  # as `firepe train` builds it (fused on CPU/CUDA)
    tokens = torch.Generator().manual_seed(seed)  # the same tokens for every encoding
    x = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len + 1), generator=tokens).to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()

    return step


def measure(name: str, args) -> float:
    step = make_step(name, args.preset, args.seq_len, args.batch_size, args.device)
    cuda = torch.device(args.device).type == "cuda"
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return args.steps * args.batch_size * args.seq_len / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--encodings", default=",".join(ENCODINGS))
    p.add_argument("--json")
    args = p.parse_args()
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    rows = {name: measure(name, args) for name in args.encodings.split(",")}
    base = rows.get("nope")
    print(f"{args.preset} preset, seq {args.seq_len}, batch {args.batch_size}, {machine}, torch {torch.__version__}")
    print("| encoding | tokens/s | vs nope |\n|---|---|---|")
    for name, tps in rows.items():
        print(f"| {name} | {tps:,.0f} | {tps / base:.2f} |" if base else f"| {name} | {tps:,.0f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "tokens_per_s": rows}, f, indent=2)


if __name__ == "__main__":
    main()
