"""Scale checks of the data path (issue 31): build large local corpora, prepare them, train from them.

    python benchmarks/data_scale.py corpus SIZE_MB OUT        # stdlib sources copied with variations
    python benchmarks/data_scale.py baseline CORPUS TOKENIZER # tokenizers' encode_batch alone (files in batches of 256)
    python benchmarks/data_scale.py prepare CORPUS TOKENIZER OUT   # OUT removed first, then firepe prepare
    python benchmarks/data_scale.py run --sizes 10,100,1000 [--bpe-sizes 10,100,1000] [--work DIR]

``run`` makes each corpus (cached under --work), prepares it with the byte tokenizer and with a BPE
``tokenizer.json`` (trained once by ``firepe prepare --tokenizer bpe`` on the 10 MB corpus), then runs
``firepe train --preset tiny --seq-len 64 --batch-size 16`` from it for 1 step (time to first step: the
whole process's wall time) and for 20 steps (peak memory), each under ``/usr/bin/time -v``. It prints one
JSON line per measurement and a Markdown table, and writes them to --work/results.json.
Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from firepe.devices import cpu_description


def make_corpus(size_mb: int, out: Path) -> Path:
    """``size_mb`` MiB of text files: copy ``c`` of every stdlib ``*.py`` file (tests excluded), with a header
    naming the copy and ``self`` renamed per copy, until the size is reached."""
    from firepe.data import stdlib_files

    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = [(f, f.read_text(errors="replace")) for f in stdlib_files()]
    target, total, copy = size_mb << 20, 0, 0
    while total < target:
        folder = out / f"copy{copy:04d}"
        for f, text in sources:
            body = f"# copy {copy} of {f.name}\n" + text.replace("self", f"self{copy % 97}")
            dest = folder / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(body)
            total += len(body.encode())
            if total >= target:
                break
        copy += 1
    done.write_text(str(total))
    return out


def _files(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))


def baseline(corpus: Path, tokenizer: str) -> dict:
    """tokenizers' own ``encode_batch`` over the corpus's files in batches of 256 (read and decoded here)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer)
    files = _files(corpus)
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(files), 256):
        texts = [f.read_text() for f in files[i:i + 256]]
        tokens += sum(len(e.ids) for e in tok.encode_batch(texts))
    seconds = time.perf_counter() - t0
    return {"what": "encode_batch", "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def prepare(corpus: Path, tokenizer: str, out: Path) -> dict:
    from firepe.config import DataConfig, PrepareConfig
    from firepe.data import prepare as run

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run(out, DataConfig(corpus=str(corpus), tokenizer=tokenizer), PrepareConfig(progress=False))
    seconds = time.perf_counter() - t0
    m = res["manifest"]
    tokens = sum(m["splits"][s]["tokens"] for s in ("train", "validation"))
    return {"what": "firepe prepare", "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _timed(argv: list[str]) -> dict:
    """Run ``argv`` under ``/usr/bin/time -v``: wall seconds, peak resident memory (MiB), exit status."""
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    seconds = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))) if wall else None
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return {"wall_s": seconds, "peak_mib": int(peak.group(1)) / 1024 if peak else None}


def _train(data: Path, run: Path, steps: int) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    return _timed([sys.executable, "-m", "firepe", "train", "--out", str(run), "--data", str(data), "--preset", "tiny",
                   "--seq-len", "64", "--batch-size", "16", "--steps", str(steps), "--threads", "2", "--no-progress"])


def run_all(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    tok_json = work / "bpe-10mb" / "tokenizer.json"
    if not tok_json.exists():
        from firepe.config import DataConfig, PrepareConfig
        from firepe.data import prepare as run

        shutil.rmtree(work / "bpe-10mb", ignore_errors=True)
        run(work / "bpe-10mb", DataConfig(corpus=str(make_corpus(10, work / "corpus-10")), tokenizer="bpe"),
            PrepareConfig(progress=False))
    bpe_sizes = [int(s) for s in args.bpe_sizes.split(",")] if args.bpe_sizes else []
    for size in [int(s) for s in args.sizes.split(",")]:
        corpus = make_corpus(size, work / f"corpus-{size}")
        for name, tok in (("byte", "byte"), ("bpe", str(tok_json))):
            if name == "bpe" and size not in bpe_sizes:
                continue
            out = work / f"prepared-{name}-{size}"
            prep = _timed([sys.executable, __file__, "prepare", str(corpus), tok, str(out)])
            m = json.loads((out / "manifest.json").read_text())
            tokens = sum(m["splits"][s]["tokens"] for s in ("train", "validation"))
            first = _train(out, work / "run", 1)
            twenty = _train(out, work / "run", 20)
            row = {"corpus_mib": size, "tokenizer": name, "tokens": tokens, "prepare_wall_s": prep["wall_s"],
                   "prepare_peak_mib": prep["peak_mib"], "prepare_tokens_per_s": tokens / prep["wall_s"],
                   "first_step_wall_s": first["wall_s"], "train20_wall_s": twenty["wall_s"],
                   "train20_peak_mib": twenty["peak_mib"], "cpu": cpu_description(), "cores": os.cpu_count()}
            print(json.dumps(row), flush=True)
            rows.append(row)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| corpus | tokenizer | tokens | prepare (whole process) | prepare peak | time to first step | "
          "train 20 steps peak |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['corpus_mib']} MiB | {r['tokenizer']} | {r['tokens']:,} | {r['prepare_wall_s']:.1f} s "
              f"({r['prepare_tokens_per_s'] / 1e6:.2f}M tokens/s) | {r['prepare_peak_mib']:.0f} MiB | "
              f"{r['first_step_wall_s']:.2f} s | {r['train20_peak_mib']:.0f} MiB |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("size_mb", type=int)
    c.add_argument("out")
    b = sub.add_parser("baseline")
    b.add_argument("corpus")
    b.add_argument("tokenizer")
    r = sub.add_parser("prepare")
    r.add_argument("corpus")
    r.add_argument("tokenizer")
    r.add_argument("out")
    a = sub.add_parser("run")
    a.add_argument("--sizes", default="10,100,1000")
    a.add_argument("--bpe-sizes", default="10,100,1000")
    a.add_argument("--work", default="/tmp/firepe-data-scale")
    a.add_argument("--keep", action="store_true", help="keep the prepared folders")
    args = p.parse_args()
    if args.cmd == "corpus":
        print(make_corpus(args.size_mb, Path(args.out)))
    elif args.cmd == "baseline":
        print(json.dumps(baseline(Path(args.corpus), args.tokenizer)))
    elif args.cmd == "prepare":
        print(json.dumps(prepare(Path(args.corpus), args.tokenizer, Path(args.out))))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
