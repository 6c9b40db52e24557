"""``firepe bench-speed``: time and peak memory of attention with each encoding (Fig. 5, extended).

Rows are encodings, plus ``fire_appendix_e`` -- the paper's Appendix E formulation (the MLP on
every (i, j) pair, ``bias_mode="reference"``) of the same FIRE configuration -- and ``fire_exact``.
``fire`` and ``fire_s`` use the fast table mode. Scopes:

* ``layer`` -- one attention layer: bias (or rotation) + causal SDPA on random ``q, k, v``
  ``[batch, heads, n, head_dim]``;
* ``model`` -- a whole GPT (``--preset``, ``--n-layer``) on random tokens.

For each (row, length, scope) the forward time and the forward+backward time (median of
``--repeats`` after one warm-up) and the peak memory are measured in a fresh subprocess, so the
peak is that row's own: ``torch.cuda.max_memory_allocated`` on GPU, growth of the process's peak
resident set size (``ru_maxrss``) on CPU. All rows of one run share the machine and settings, so
their ratios are side by side. Results: a printed table, ``OUT/bench.json``, ``OUT/bench.csv`` and
``OUT/bench.png``.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import kernels
from .devices import cpu_description
from .runs import write_json, write_text, writing

ROWS = ["nope", "rope", "alibi", "kerple_log", "t5", "fire_appendix_e", "fire_exact", "fire", "fire_s"]


def check_rows(rows: list[str], heads: int = 12, head_dim: int = 64, attention: str = "auto",
               fire_layers: int = 2) -> None:
    """ValueError naming the first row that is neither one of the FIRE rows nor an encoding spec
    (a name, or ``name:key=value,...`` such as ``longrope:factor=8``), or whose encoding cannot be built at
    ``heads`` x ``head_dim`` (every option value checked) or run on ``attention`` -- before anything runs."""
    from . import positions
    from .kinds import check_backend

    valid = list(dict.fromkeys(ROWS + positions.available()))
    if not rows:
        raise ValueError("no benchmark rows; pass --encodings with names from: " + ", ".join(valid) + ".")
    for r in rows:
        if r not in valid and ":" not in r:
            raise ValueError(f"unknown benchmark row {r!r}; valid: {', '.join(valid)} (or an encoding spec "
                             "name:key=value).")
        name, opts = row_spec(r, fire_layers)
        try:
            positions.check(name, heads, head_dim, opts)
            check_backend(name, attention)
        except ValueError as e:
            raise ValueError(f"benchmark row {r!r}: {e} Give options as a spec, e.g. yarn:factor=4.") from None


#: the FIRE rows' bias modes (the encodings' training defaults at the paper's training length set the rest)
FIRE_MODES = {"fire_appendix_e": "reference", "fire_exact": "exact"}
PAPER_TRAIN_LEN = 2048


def row_spec(row: str, fire_layers: int) -> tuple[str, dict[str, Any]]:
    """``(encoding, options)`` of a benchmark row: FIRE rows with ``fire_layers`` hidden layers and FIRE's
    training defaults at the paper's training length (``init_L`` 512, table mode unless the row names a
    mode); a spec row (``longrope:factor=8``) with its options; every other encoding with its constructor
    defaults."""
    from .positions import parse_spec, training_options

    if ":" in row:  # a spec: its own options, nothing added
        spec = parse_spec(row)
        return spec.position, spec.options
    name = "fire" if row in FIRE_MODES else row
    if name not in ("fire", "fire_s"):
        return name, {}  # other encodings run with their constructor defaults
    opts = {"mlp_layers": fire_layers, **({"bias_mode": FIRE_MODES[row]} if row in FIRE_MODES else {})}
    return name, training_options(name, opts, PAPER_TRAIN_LEN)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _layer_fn(name, opts, n, args, device, dtype):
    """One attention layer of encoding ``name``: ``(run, parameters)``, ``run()`` computing what a layer computes
    each call (its bias, rotation or gates included: :meth:`firepe.kinds.Kind.bench`)."""
    from . import positions
    from .kinds import kind_of

    enc = positions.build(name, num_heads=args["heads"], head_dim=args["head_dim"], **opts).to(device)
    shape = (args["batch"], args["heads"], n, args["head_dim"])
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    pos = torch.arange(n, device=device)
    width = args["heads"] * args["head_dim"]
    layer_input = lambda: torch.randn(args["batch"], n, width, device=device, dtype=dtype)  # noqa: E731 (FoX's x)
    run = kind_of(enc).bench(enc, q, k, v, layer_input, pos, args["attention"], args["block"])
    return run, [q, k, v, *enc.parameters()]


def _model_fn(name, opts, n, args, device, dtype):
    from .config import preset
    from .model import GPT

    over = {"n_layer": args["n_layer"]} if args.get("n_layer") else {}
    model = GPT(preset(args["preset"], position=name, position_options=opts, attention=args["attention"],
                       attention_block=args["block"], **over)).to(device)
    x = torch.randint(0, model.cfg.vocab_size, (args["batch"], n + 1), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run():
        with autocast:
            return model(x[:, :-1], x[:, 1:])[1]

    return run, list(model.parameters())


def median_time(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one untimed warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Measure one (row, length, scope); runs inside its own process."""
    device = torch.device(job["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[job["dtype"]]
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(job.get("tf32"))
    name, opts = row_spec(job["row"], job["fire_layers"])
    make = _layer_fn if job["scope"] == "layer" else _model_fn
    base = _peak_bytes(device)
    run, params = make(name, opts, job["length"], job, device, dtype)
    result = {k: job[k] for k in ("row", "length", "scope")}
    try:
        with torch.no_grad():
            result["forward_s"] = median_time(run, job["repeats"], device)
        result["forward_peak_mb"] = (_peak_bytes(device) - base) / 2**20
        if job["backward"]:
            def step():
                out = run()
                out.float().sum().backward() if out.dim() else out.backward()
                for p in params:
                    p.grad = None

            result["train_s"] = median_time(step, job["repeats"], device)
            result["train_peak_mb"] = (_peak_bytes(device) - base) / 2**20
    except (torch.OutOfMemoryError, RuntimeError) as e:  # report, keep the other rows
        result["error"] = str(e).splitlines()[0][:200]
    return result


def run_bench(rows: list[str], lengths: list[int], scopes: list[str], settings: dict[str, Any],
              out: Path, log=print) -> list[dict[str, Any]]:
    results = []
    for scope in scopes:
        for n in lengths:
            for row in rows:
                job = {**settings, "row": row, "length": n, "scope": scope}
                timeout = settings.get("job_timeout")
                try:
                    proc = subprocess.run([sys.executable, "-m", "firepe.bench", json.dumps(job)],
                                          capture_output=True, text=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc = None
                if proc is None:
                    res = {"row": row, "length": n, "scope": scope, "error": f"timed out after {timeout} s"}
                elif proc.returncode != 0 or not proc.stdout.strip():
                    res = {"row": row, "length": n, "scope": scope,
                           "error": (proc.stderr.strip().splitlines() or ["worker failed"])[-1][:200]}
                else:
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(res)
                log(_fmt(res))
    if results and all("error" in r for r in results):  # nothing to report: no files of error rows
        raise ValueError(f"every benchmark row failed (first: {results[0]['error']}).")
    machine = (torch.cuda.get_device_name() if settings["device"].startswith("cuda")
               else f"{cpu_description()} ({platform.machine()}), {settings['threads'] or torch.get_num_threads()} "
                    "threads")
    settings = {**settings, "fire_cpu_kernel": kernels.available()}
    report = {"machine": machine, "cpu": cpu_description(), "torch": torch.__version__, "settings": settings,
              "results": results}
    log(format_bench(report))
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", report)
    buf = io.StringIO()
    cols = ["scope", "length", "row", "forward_s", "train_s", "forward_peak_mb", "train_peak_mb", "error"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(results)
    write_text(out / "bench.csv", buf.getvalue())
    plot_bench(report, out / "bench.png")
    return results


def _fmt(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['scope']:>5} n={r['length']:<6} {r['row']:<16} error: {r['error']}"
    train = f"{r['train_s']:.4f}s" if "train_s" in r else "-"
    return (f"{r['scope']:>5} n={r['length']:<6} {r['row']:<16} fwd {r['forward_s']:.4f}s  fwd+bwd {train}  "
            f"peak {r.get('train_peak_mb', r['forward_peak_mb']):.0f} MB")


def format_bench(report: dict[str, Any]) -> str:
    """Markdown: per scope and length, time and peak memory, ratios to ``nope``."""
    kernel = report["settings"].get("fire_cpu_kernel")
    lines = [f"{report['machine']}, torch {report['torch']}"
             + ("" if kernel is None else f", fused FIRE CPU kernel {'on' if kernel else 'off'}")]
    res = report["results"]
    for scope in dict.fromkeys(r["scope"] for r in res):
        lines += ["", f"**{scope}**", "",
                  "| n | encoding | forward s | x nope | fwd+bwd s | x nope | peak MB (fwd+bwd) |",
                  "|---|---|---|---|---|---|---|"]
        for n in dict.fromkeys(r["length"] for r in res if r["scope"] == scope):
            group = [r for r in res if r["scope"] == scope and r["length"] == n]
            ref = next((r for r in group if r["row"] == "nope" and "error" not in r), None)
            for r in group:
                if "error" in r:
                    lines.append(f"| {n} | {r['row']} | error: {r['error'][:60]} | | | | |")
                    continue
                fr = f"{r['forward_s'] / ref['forward_s']:.2f}" if ref else ""
                tr = f"{r['train_s']:.4f}" if "train_s" in r else "-"
                trr = f"{r['train_s'] / ref['train_s']:.2f}" if ref and "train_s" in r and "train_s" in ref else ""
                peak = r.get("train_peak_mb", r["forward_peak_mb"])
                lines.append(f"| {n} | {r['row']} | {r['forward_s']:.4f} | {fr} | {tr} | {trr} | {peak:.0f} |")
    return "\n".join(lines)


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    from .plots import plt, save_figure

    res = [r for r in report["results"] if "error" not in r]
    scopes = list(dict.fromkeys(r["scope"] for r in res)) or ["layer"]
    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.2), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        for row in dict.fromkeys(r["row"] for r in res if r["scope"] == scope):
            pts = sorted((r["length"], r.get("train_s", r["forward_s"])) for r in res
                         if r["scope"] == scope and r["row"] == row)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=row)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("seconds (fwd+bwd)" if any("train_s" in r for r in res) else "seconds (forward)")
        ax.set_title(f"{scope}: {report['machine']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))


def bench_speed(out: str | Path, encodings: str | None = None, lengths: str = "512,1024,2048,4096,8192",
                scope: str = "both", device: str = "cpu", dtype: str = "auto", no_tf32: bool = False,
                job_timeout: int = 600, batch: int = 1, heads: int = 12, head_dim: int = 64, preset: str = "base",
                n_layer: int = 2, attention: str = "auto", block: int = 1024, repeats: int = 3,
                forward_only: bool = False, fire_mlp_layers: int = 2, threads: int | None = None,
                log=print) -> list[dict[str, Any]]:
    """``firepe bench-speed``: every row (:data:`ROWS`, or ``encodings``) at every length and scope, each in a
    subprocess; every option checked before anything runs (rows built at ``heads`` x ``head_dim`` on
    ``attention``)."""
    from .config import check_preset
    from .evaluate import parse_lengths
    from .experiment import split_specs
    from .loading import resolve_device

    rows = split_specs(encodings, "--encodings") if encodings is not None else ROWS
    for flag, value, minimum in (("--repeats", repeats, 1), ("--heads", heads, 1), ("--head-dim", head_dim, 1),
                                 ("--batch", batch, 1), ("--block", block, 1), ("--n-layer", n_layer, 0),
                                 ("--fire-mlp-layers", fire_mlp_layers, 0), ("--threads", threads, 1),
                                 ("--job-timeout", job_timeout, 1)):
        if value is not None and value < minimum:
            raise ValueError(f"{flag} must be >= {minimum}, got {value}.")
    check_rows(rows, heads, head_dim, attention, fire_mlp_layers)
    dev = resolve_device(device)
    dtype = dtype if dtype != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    check_preset(preset)
    scopes = ["layer", "model"] if scope == "both" else [scope]
    settings = {"device": device, "dtype": dtype, "tf32": dev.type == "cuda" and not no_tf32,
                "job_timeout": job_timeout, "batch": batch, "heads": heads, "head_dim": head_dim, "preset": preset,
                "n_layer": n_layer, "attention": attention, "block": block, "repeats": repeats,
                "backward": not forward_only, "fire_layers": fire_mlp_layers, "threads": threads}
    return run_bench(rows, parse_lengths(lengths), scopes, settings, Path(out), log)
