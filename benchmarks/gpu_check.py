"""The checks only a CUDA machine can run, in one command, in under 8 minutes.

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.md]

It runs firepe from the source tree against the machine's own torch and installs nothing. Checks
(each prints one ``PASS``/``FAIL``/``SKIP`` line; the Markdown file holds the numbers):

1. ``flex``: FlexAttention vs the dense backend, outputs and gradients (q, k, v and the encoding's
   parameters), fp32 with TF32 off, for every bias encoding -- the only place flex's backward runs
   (PyTorch has none on CPU); then a whole tiny model trained 3 steps with ``attention="flex"``.
2. ``bf16``: a training step under bf16 autocast vs fp32: loss within 0.05 nats, FIRE's bias equal to
   fp32's (position encodings run outside autocast).
3. ``generate``: KV-cache greedy decoding on CUDA equals full recomputation, every encoding.
4. ``attention speed``: one attention layer fwd+bwd, bf16, head dim 64, 12 heads, at 2k and 8k:
   FIRE (dense and flex backends) vs NoPE's SDPA; target FIRE <= 1.3x NoPE (issue 4).
5. ``train step``: a ``base``-preset (125M) fwd+bwd at 2048 tokens per encoding, bf16.
6. ``eval 32k``: peak memory and time of a 32,768-token forward with the ``base`` preset.
7. ``nccl``: ``firepe prepare`` a small corpus, then ``torchrun --nproc_per_node 1`` trains 2 steps from it
   (``--data``) with NCCL (needs numpy, safetensors and
   tqdm; skipped with the reason when the machine lacks them).

Without CUDA it refuses in one line (exit 2); ``--only flex,bf16`` runs a subset. The check functions
take the device, so the CPU-runnable ones are tested on CPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from firepe.bench import median_time  # noqa: E402  (warm-up call, then the median of the timed calls)

BIAS_ENCODINGS = [("alibi", {}), ("kerple_log", {}), ("kerple_power", {}), ("t5", {}), ("sandwich", {}),
                  ("fire", {"init_L": 96.0}), ("fire_s", {"init_L": 96.0}),
                  ("fire", {"init_L": 96.0, "bias_mode": "exact"})]
ALL_ENCODINGS = [("nope", {}), ("rope", {}), ("rope_pi", {"factor": 2.0}), ("yarn", {"factor": 2.0}),
                 ("p_rope", {}), ("longrope", {"factor": 4.0, "original_max_position_embeddings": 128}),
                 ("fox", {}), ("cope", {"npos_max": 128}), *BIAS_ENCODINGS[:6]]
SPEED_TARGET = 1.3
FLEX_BOUND = 2e-3    # relative to the largest magnitude of each compared tensor
BF16_LOSS_BOUND = 0.05


class Report:
    """One line per target on stdout, and the Markdown sections of the result file."""

    def __init__(self):
        self.lines: list[str] = []
        self.sections: list[str] = []
        self.failed = 0

    def target(self, status: str, name: str, summary: str) -> None:
        self.failed += status == "FAIL"
        line = f"{status} {name}: {summary}"
        print(line, flush=True)
        self.lines.append(line)

    def section(self, title: str, rows: list[str]) -> None:
        self.sections.append(f"## {title}\n\n" + "\n".join(rows) + "\n")

    def markdown(self, header: str) -> str:
        summary = "\n".join(f"- {line}" for line in self.lines)
        return f"# GPU check\n\n{header}\n\n## Summary\n\n{summary}\n\n" + "\n".join(self.sections)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max(max |b|, 1e-6)``."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))


def _spec(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items())


# -- 1. flex vs dense ---------------------------------------------------------------------------


def check_flex(report: Report, device: torch.device, n: int = 256) -> None:
    from firepe import positions
    from firepe.attention import attend_backend

    torch.backends.cuda.matmul.allow_tf32 = False
    rows, worst = ["| encoding | out | dq | dk | dv | d params |", "|---|---|---|---|---|---|"], 0.0
    for name, opts in BIAS_ENCODINGS:
        torch.manual_seed(0)
        enc = positions.build(name, num_heads=4, head_dim=64, **opts).to(device)
        with torch.no_grad():
            for p in enc.parameters():
                p.add_(0.1 * torch.randn_like(p))
        q, k, v = (torch.randn(2, 4, n, 64, device=device, requires_grad=True) for _ in range(3))
        pos = torch.arange(n, device=device)
        grad_out = torch.randn(2, 4, n, 64, device=device)
        got = []
        for backend in ("dense", "flex"):
            out = attend_backend(backend, q, k, v, enc, pos, pos, True)
            grads = torch.autograd.grad(out, [q, k, v, *enc.parameters()], grad_out)
            got.append([out, *grads])
        diffs = [rel_diff(f, d) for d, f in zip(*got)]
        params = max(diffs[4:], default=0.0)
        worst = max(worst, *diffs[:4], params)
        rows.append(f"| {name} {_spec(opts)} | " + " | ".join(f"{x:.1e}" for x in diffs[:4]) + f" | {params:.1e} |")
    status = "PASS" if worst <= FLEX_BOUND else "FAIL"
    report.target(status, "flex vs dense (fwd+bwd, fp32)", f"worst relative difference {worst:.1e} "
                  f"(bound {FLEX_BOUND:.0e}) over {len(BIAS_ENCODINGS)} bias encodings at n={n}")
    rows.append("")
    rows.append(f"Relative difference ``max|flex - dense| / max|dense|``; bound {FLEX_BOUND:.0e}.")
    report.section("1. FlexAttention vs dense, fp32 (TF32 off)", rows)
    check_flex_training(report, device)


def check_flex_training(report: Report, device: torch.device, steps: int = 3) -> None:
    from firepe.config import preset
    from firepe.model import GPT

    rows = ["| encoding | loss dense | loss flex | max rel. grad difference |", "|---|---|---|---|"]
    worst = 0.0
    for name, opts in [("fire", {"init_L": 48.0}), ("kerple_log", {}), ("t5", {})]:
        losses, grads = {}, {}
        for backend in ("dense", "flex"):
            torch.manual_seed(0)
            model = GPT(preset("tiny", position=name, position_options=opts, vocab_size=64,
                               attention=backend)).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            x = torch.randint(0, 64, (2, 129), generator=torch.Generator().manual_seed(1)).to(device)
            for _ in range(steps):
                opt.zero_grad()
                _, loss = model(x[:, :-1], x[:, 1:])
                loss.backward()
                opt.step()
            losses[backend] = loss.item()
            grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
        diff = max(rel_diff(grads["flex"][k], grads["dense"][k]) for k in grads["dense"])
        worst = max(worst, diff)
        rows.append(f"| {name} | {losses['dense']:.5f} | {losses['flex']:.5f} | {diff:.1e} |")
    status = "PASS" if worst <= 10 * FLEX_BOUND else "FAIL"
    report.target(status, "flex training (tiny model, 3 AdamW steps)",
                  f"worst relative gradient difference to dense {worst:.1e} (bound {10 * FLEX_BOUND:.0e})")
    report.section("1b. Training with attention=flex vs dense", rows)


# -- 2. bf16 --------------------------------------------------------------------------------------


def check_bf16(report: Report, device: torch.device) -> None:
    from firepe.config import preset
    from firepe.model import GPT

    rows = ["| encoding | loss fp32 | loss bf16 | difference | position values equal |", "|---|---|---|---|---|"]
    worst, equal_all = 0.0, True
    for name, opts in ALL_ENCODINGS:
        torch.manual_seed(0)
        model = GPT(preset("tiny", position=name, position_options=opts, vocab_size=64)).to(device)
        x = torch.randint(0, 64, (2, 257), generator=torch.Generator().manual_seed(2)).to(device)
        losses = {}
        for dtype in ("fp32", "bf16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            losses[dtype] = loss.item()
            model.zero_grad()
        enc = model.position_modules()[0]
        pos = torch.arange(1024, device=device)
        values = []
        for on in (False, True):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on), torch.no_grad():
                values.append(enc.bias(pos, pos) if enc.kind == "bias" else
                              enc.angles(pos)[0] if enc.kind == "rotary" else torch.zeros(1, device=device))
        equal = values[1].dtype == torch.float32 and torch.equal(*values)
        equal_all &= equal
        diff = abs(losses["bf16"] - losses["fp32"])
        worst = max(worst, diff)
        rows.append(f"| {name} {_spec(opts)} | {losses['fp32']:.4f} | {losses['bf16']:.4f} | {diff:.4f} | {equal} |")
    status = "PASS" if worst <= BF16_LOSS_BOUND and equal_all else "FAIL"
    report.target(status, "bf16 autocast vs fp32", f"worst loss difference {worst:.4f} (bound {BF16_LOSS_BOUND}); "
                  f"position biases/angles equal to fp32 under autocast: {equal_all}")
    report.section("2. bf16 autocast vs fp32 (tiny model, 256 tokens)", rows)


# -- 3. KV-cache generation -----------------------------------------------------------------------


def check_generate(report: Report, device: torch.device, new: int = 24) -> None:
    from firepe.config import preset
    from firepe.model import GPT

    torch.backends.cuda.matmul.allow_tf32 = False
    rows = ["| encoding | tokens equal to full recomputation |", "|---|---|"]
    bad = []
    for name, opts in ALL_ENCODINGS:
        torch.manual_seed(0)
        model = GPT(preset("tiny", position=name, position_options=opts, vocab_size=64)).to(device).eval()
        prompt = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(3)).to(device)
        with torch.no_grad():
            cached = model.generate(prompt, new, temperature=0)
            full = prompt
            for _ in range(new):
                logits, _ = model(full)
                full = torch.cat([full, logits[:, -1].argmax(-1, keepdim=True)], 1)
        same = int((cached == full).all(1).sum())
        if same != 2:
            bad.append(name)
        rows.append(f"| {name} {_spec(opts)} | {same}/2 rows |")
    report.target("FAIL" if bad else "PASS", "KV-cache generation on CUDA",
                  f"{len(ALL_ENCODINGS) - len(bad)}/{len(ALL_ENCODINGS)} encodings decode the tokens of full "
                  f"recomputation ({new} greedy tokens)" + (f"; differ: {', '.join(bad)}" if bad else ""))
    report.section("3. Greedy decoding with the KV cache vs full recomputation (fp32)", rows)


# -- 4. attention speed ---------------------------------------------------------------------------


def check_attention_speed(report: Report, device: torch.device, lengths=(2048, 8192), heads: int = 12) -> None:
    from firepe import positions
    from firepe.attention import attend_backend

    rows = ["| n | row | fwd+bwd ms | x NoPE SDPA |", "|---|---|---|---|"]
    ratios = {}
    for n in lengths:
        base = None
        for label, name, backend in [("nope (SDPA)", "nope", "dense"), ("alibi dense", "alibi", "dense"),
                                     ("fire dense", "fire", "dense"), ("fire flex", "fire", "flex"),
                                     ("kerple_log flex", "kerple_log", "flex")]:
            enc = positions.build(name, num_heads=heads, head_dim=64).to(device)
            bias_enc = enc if enc.kind == "bias" else None
            q, k, v = (torch.randn(1, heads, n, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            pos = torch.arange(n, device=device)

            def step(q=q, k=k, v=v, bias_enc=bias_enc, backend=backend, pos=pos):
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = attend_backend(backend, q, k, v, bias_enc, pos, pos, True)
                out.float().sum().backward()

            try:
                t = median_time(step, 5, device)
            except Exception as e:  # noqa: BLE001 -- report and go on
                rows.append(f"| {n} | {label} | error: {str(e).splitlines()[0][:80]} | |")
                continue
            base = t if name == "nope" else base
            ratio = t / base if base else float("nan")
            ratios[(n, label)] = ratio
            rows.append(f"| {n} | {label} | {1000 * t:.2f} | {ratio:.2f} |")
    fire = {n: min(ratios.get((n, "fire dense"), float("inf")), ratios.get((n, "fire flex"), float("inf")))
            for n in lengths}
    ok = all(r <= SPEED_TARGET for r in fire.values())
    report.target("PASS" if ok else "FAIL", "FIRE attention speed (bf16, fwd+bwd)",
                  ", ".join(f"{n}: {r:.2f}x NoPE" for n, r in fire.items()) + f" (target <= {SPEED_TARGET}x)")
    report.section(f"4. One attention layer, bf16, {heads} heads, head dim 64, batch 1 (median of 5)", rows)


def check_flash_cpu(report: Report, device: torch.device, lengths=(2048, 8192), heads: int = 12) -> None:
    """The flash-style CPU kernel (firepe.attention_flash) on this machine's host CPU, against CPU SDPA and the
    materializing kernel, and against the GPU's flex and SDPA on the same shapes (fp32, fwd+bwd): where each
    path stands on one machine. Measured, no target (the CPU targets are the 2-core CPU's, benchmarks/README)."""
    from firepe import attention_flash, positions
    from firepe.attention import attend_backend
    from firepe.devices import cpu_description

    cpu = torch.device("cpu")
    rows = [f"host CPU: {cpu_description()}, {torch.get_num_threads()} threads; flash variant "
            f"{attention_flash.variant()}", "", "| n | row | fwd+bwd ms | x NoPE SDPA (same device) |",
            "|---|---|---|---|"]
    for n in lengths:
        for dev in (cpu, device):
            base = None
            paths = [("nope SDPA", "nope", "dense"), ("alibi", "alibi", "blocked"), ("fire", "fire", "blocked")]
            if dev.type == "cpu":
                paths += [("fire materialized kernel", "fire", "materialized")]
            else:
                paths = [("nope SDPA", "nope", "dense"), ("alibi flex", "alibi", "flex"), ("fire flex", "fire", "flex")]
            for label, name, backend in paths:
                enc = positions.build(name, num_heads=heads, head_dim=64).to(dev)
                bias_enc = enc if enc.kind == "bias" else None
                q, k, v = (torch.randn(1, heads, n, 64, device=dev, requires_grad=True) for _ in range(3))
                pos = torch.arange(n, device=dev)

                def step(q=q, k=k, v=v, bias_enc=bias_enc, backend=backend, pos=pos):
                    if backend == "materialized":
                        with attention_flash.switched_off():
                            out = attend_backend("blocked", q, k, v, bias_enc, pos, pos, True)
                    else:
                        out = attend_backend(backend, q, k, v, bias_enc, pos, pos, True)
                    out.sum().backward()

                try:
                    t = median_time(step, 3, dev)
                except Exception as e:  # noqa: BLE001 -- report and go on
                    rows.append(f"| {n} | {dev.type} {label} | error: {str(e).splitlines()[0][:80]} | |")
                    continue
                base = t if name == "nope" else base
                rows.append(f"| {n} | {dev.type} {label} | {1000 * t:.1f} | {t / base:.2f} |")
    report.target("PASS", "flash CPU kernel vs SDPA and flex measured", "see section 4b")
    report.section(f"4b. The flash-style CPU kernel vs SDPA and flex, fp32, {heads} heads x 64, batch 1 "
                   "(median of 3)", rows)


# -- 5. base-preset training step -----------------------------------------------------------------


def check_train_step(report: Report, device: torch.device, n: int = 2048) -> None:
    from firepe.config import preset
    from firepe.model import GPT

    rows = ["| encoding | fwd+bwd s | tokens/s | x nope | peak GiB |", "|---|---|---|---|---|"]
    base, done = None, 0
    for name, opts in [("nope", {}), ("rope", {}), ("alibi", {}), ("kerple_log", {}), ("t5", {}), ("fire", {}),
                       ("fire_s", {})]:
        torch.manual_seed(0)
        model = GPT(preset("base", position=name, position_options=opts)).to(device)
        x = torch.randint(0, model.cfg.vocab_size, (1, n + 1), device=device)
        torch.cuda.reset_peak_memory_stats(device)

        def step(model=model, x=x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            model.zero_grad(set_to_none=True)

        try:
            t = median_time(step, 3, device)
        except Exception as e:  # noqa: BLE001
            rows.append(f"| {name} | error: {str(e).splitlines()[0][:80]} | | | |")
            continue
        done += 1
        base = t if name == "nope" else base
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(f"| {name} | {t:.4f} | {n / t:,.0f} | {t / base:.2f} | {peak:.2f} |")
        model = step = None
        torch.cuda.empty_cache()
    report.target("PASS" if done == 7 else "FAIL", "base-preset training step at 2048 (bf16)",
                  f"{done}/7 encodings measured; see the table")
    report.section(f"5. `base` preset (12 layers, d=768), fwd+bwd of {n} tokens, batch 1, bf16, backend auto", rows)


# -- 6. 32k evaluation ----------------------------------------------------------------------------


def check_eval_32k(report: Report, device: torch.device, n: int = 32768) -> None:
    from firepe.config import preset
    from firepe.model import GPT

    rows = ["| encoding | forward s | peak GiB |", "|---|---|---|"]
    done = 0
    for name in ("nope", "rope", "alibi", "fire"):
        torch.manual_seed(0)
        model = GPT(preset("base", position=name)).to(device).eval()
        x = torch.randint(0, model.cfg.vocab_size, (1, n), device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                t = median_time(lambda model=model, x=x: model(x), 1, device)
        except Exception as e:  # noqa: BLE001
            rows.append(f"| {name} | error: {str(e).splitlines()[0][:80]} | |")
            continue
        done += 1
        rows.append(f"| {name} | {t:.2f} | {torch.cuda.max_memory_allocated(device) / 2**30:.2f} |")
        model = None
    report.target("PASS" if done == 4 else "FAIL", f"{n}-token evaluation, base preset",
                  f"{done}/4 encodings ran; peak memory in the table")
    report.section(f"6. Evaluation forward of {n:,} tokens, `base` preset, bf16, backend auto", rows)


# -- 7. torchrun + NCCL ---------------------------------------------------------------------------


def missing_modules(names=("numpy", "safetensors", "tqdm")) -> list[str]:
    return [m for m in names if importlib.util.find_spec(m) is None]


def check_nccl(report: Report, device: torch.device) -> None:
    missing = missing_modules()
    if missing:
        report.target("SKIP", "torchrun NCCL training", f"needs {', '.join(missing)}, not on this machine "
                      "(put their wheels' contents on PYTHONPATH to run it)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i in range(8):
            (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 200)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        # the data comes from a prepared folder (firepe prepare, then --data): the path of the paper's scale
        subprocess.run([sys.executable, "-m", "firepe", "prepare", "--corpus", str(corpus), "--out",
                        str(Path(tmp) / "data"), "--no-progress"], capture_output=True, env=env, timeout=120)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "firepe", "train",
               "--out", str(Path(tmp) / "run"), "--steps", "2", "--preset", "tiny", "--seq-len", "128",
               "--batch-size", "2", "--data", str(Path(tmp) / "data"), "--device", "cuda", "--no-progress",
               "--val-tokens", "256"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
        ok = proc.returncode == 0 and any((Path(tmp) / "run" / "checkpoints").glob("step-*"))
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    report.target("PASS" if ok else "FAIL", "torchrun --nproc_per_node 1 NCCL training (2 steps)",
                  f"exit {proc.returncode} in {time.perf_counter() - t0:.0f} s; last line: {tail[-1] if tail else ''}")
    report.section("7. torchrun NCCL", ["```", " ".join(cmd[2:]), *tail, "```"])


def check_hf(report: Report, device: torch.device, new: int = 8) -> None:
    """firepe.hf.with_position on the device: a tiny Llama turned into each encoding, greedy generation with
    transformers' cache equal to full recomputation, and a training step's gradients finite."""
    missing = [m for m in ("transformers", "safetensors") if importlib.util.find_spec(m) is None]
    if missing:
        report.target("SKIP", "transformers Llama with firepe encodings",
                      f"needs {', '.join(missing)}, not on this machine")
        return
    try:
        from firepe.hf import with_position  # refuses a transformers older than firepe's lower bound
    except ImportError as e:
        report.target("SKIP", "transformers Llama with firepe encodings", str(e))
        return
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    rows = ["| encoding | generate: rows equal to full recomputation | grads finite |", "|---|---|---|"]
    bad = []
    for name, opts in [("fire", {"init_L": 96.0}), ("alibi", {}), ("kerple_log", {}), ("rope", {}), ("nope", {})]:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = with_position(LlamaForCausalLM(cfg), name, opts).to(device)
        ids = torch.randint(3, 64, (2, 40), generator=torch.Generator().manual_seed(3)).to(device)
        mask = torch.ones_like(ids)
        ids[1, :5], mask[1, :5] = 0, 0
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        model.eval()
        with torch.no_grad():
            cached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False)
            full, m = ids, mask
            for _ in range(new):
                nxt = model(input_ids=full, attention_mask=m, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                full, m = torch.cat([full, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
        same = int((cached == full).all(1).sum())
        if same != 2 or not finite:
            bad.append(name)
        rows.append(f"| {name} {_spec(opts)} | {same}/2 | {finite} |")
    report.target("FAIL" if bad else "PASS", "transformers Llama with firepe encodings",
                  f"{5 - len(bad)}/5 encodings decode as full recomputation with finite gradients"
                  + (f"; differ: {', '.join(bad)}" if bad else ""))
    report.section("8. firepe.hf.with_position on the device (fp32)", rows)


CHECKS = [("flex", check_flex), ("bf16", check_bf16), ("generate", check_generate),
          ("attention", check_attention_speed), ("flashcpu", check_flash_cpu), ("train", check_train_step),
          ("eval32k", check_eval_32k),
          ("nccl", check_nccl), ("hf", check_hf)]


def run(out: Path, only: list[str] | None, device: torch.device, budget: float = 450.0) -> int:
    report = Report()
    t0 = time.perf_counter()
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        if start - t0 > budget:
            report.target("SKIP", name, f"the time budget of {budget:.0f} s was spent (rerun with --only {name})")
            continue
        try:
            fn(report, device)
        except Exception as e:  # noqa: BLE001 -- one failed check must not hide the others
            report.target("FAIL", name, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            report.section(f"{name}: traceback", ["```", traceback.format_exc()[-3000:], "```"])
        print(f"  ({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    header = (f"{name}; torch {torch.__version__} (CUDA {torch.version.cuda}); Python {platform.python_version()}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.perf_counter() - t0:.0f} s in all.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown(header))
    print(f"wrote {out}; {report.failed} target(s) failed")
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.md")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(n for n, _ in CHECKS))
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds after which the remaining checks are skipped (default 450: the whole run stays "
                        "under 8 minutes)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    unknown = [s for s in only or [] if s not in dict(CHECKS)]
    if unknown:
        print(f"gpu_check: error: unknown check {unknown[0]!r}; valid: {', '.join(n for n, _ in CHECKS)}.",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"gpu_check: error: no usable CUDA device (torch {torch.__version__}); this check runs only on a "
              "CUDA machine.", file=sys.stderr)
        return 2
    return run(args.out, only, torch.device("cuda"), args.budget)


if __name__ == "__main__":
    sys.exit(main())
