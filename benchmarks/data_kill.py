"""kill -9 at random moments of ``firepe prepare`` and of training from a prepared folder (issue 31's bar).

    python benchmarks/data_kill.py CORPUS [--tokenizer TOK] [--kills 20] [--train-kills 8] [--work DIR] [--seed 0]

1. An uninterrupted ``firepe prepare`` of CORPUS (the reference, timed, duration T), then trials until
   ``--kills`` kills were made: a trial starts the same command into a new folder and kills it (SIGKILL)
   after a uniformly random delay in [0.05 T, T], again and again, until a start finishes on its own.
   Checks per trial: that start exits 0, the same command once more verifies every shard against its
   sha256, and the manifest is the reference's, byte for byte.
2. ``firepe train --data`` from that folder, uninterrupted (the reference metrics, duration T), then trials
   until ``--train-kills`` kills were made: a trial trains into a new folder, killed after a random delay in
   [0.1 T, 0.8 T] and continued with ``--resume`` (a fresh start when killed before its config.json existed),
   again and again, until a start finishes on its own. Check: every logged loss equals the reference's.
``--only prepare|train`` runs one part (train alone uses the reference folder).

Prints one line per attempt and a summary; exit status 1 when a check fails. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

FIREPE = [sys.executable, "-m", "firepe"]


def _prepare_argv(corpus: str, tok: str, out: Path) -> list[str]:
    return [*FIREPE, "prepare", "--corpus", corpus, "--tokenizer", tok, "--out", str(out), "--shard-tokens", "2000000",
            "--no-progress"]


def _run_killed(argv: list[str], delay: float) -> str:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=delay)
        return f"finished (exit {proc.returncode}){': ' + err.decode()[-300:] if proc.returncode else ''}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"killed at {delay:.2f} s"


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus")
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--train-kills", type=int, default=8)
    p.add_argument("--work", default="/tmp/firepe-data-kill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["prepare", "train"])
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ok = True

    ref = work / "reference"
    t0 = time.perf_counter()
    subprocess.run(_prepare_argv(args.corpus, args.tokenizer, ref), check=True, stdout=subprocess.DEVNULL)
    duration = time.perf_counter() - t0
    print(f"reference prepare: {duration:.1f} s", flush=True)
    kills, trial, out = 0, 0, ref
    while kills < args.kills and args.only != "train":
        trial += 1
        out = work / f"trial-{trial}"
        attempts = []
        while True:
            what = _run_killed(_prepare_argv(args.corpus, args.tokenizer, out), rng.uniform(0.05, 1.0) * duration)
            attempts.append(what)
            if not what.startswith("killed"):
                break
        kills += len(attempts) - 1
        verify = subprocess.run(_prepare_argv(args.corpus, args.tokenizer, out), capture_output=True, text=True)
        same = (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
        good = attempts[-1] == "finished (exit 0)" and "every shard verified" in verify.stdout and same
        ok &= good
        print(f"prepare trial {trial}: {'; '.join(attempts)}; full verification "
              f"{'passed' if 'every shard verified' in verify.stdout else 'FAILED'}; manifest "
              f"{'identical to' if same else 'DIFFERENT from'} the uninterrupted run's -> {'OK' if good else 'FAIL'}",
              flush=True)
        if trial > 1:
            shutil.rmtree(work / f"trial-{trial - 1}", ignore_errors=True)
    if args.only != "train":
        print(f"prepare: {kills} kills in {trial} trials", flush=True)
    if args.only == "prepare":
        return 0 if ok else 1

    train = [*FIREPE, "train", "--data", str(out), "--preset", "tiny", "--seq-len", "64", "--batch-size", "8",
             "--steps", "300", "--checkpoint-every", "25", "--log-every", "1", "--threads", "1", "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run([*train, "--out", str(work / "run-ref")], check=True, stdout=subprocess.DEVNULL)
    duration = time.perf_counter() - t0
    print(f"train reference: {duration:.1f} s", flush=True)
    kills, trial = 0, 0
    while kills < args.train_kills:
        trial += 1
        run = work / f"run-trial-{trial}"
        attempts = []
        while True:
            again = ["--resume"] if (run / "config.json").exists() else []
            what = _run_killed([*train, "--out", str(run), *again], rng.uniform(0.1, 0.8) * duration)
            attempts.append(what)
            if not what.startswith("killed"):
                break
        kills += len(attempts) - 1
        same = attempts[-1] == "finished (exit 0)" and _losses(run) == _losses(work / "run-ref")
        ok &= same
        print(f"train trial {trial}: {'; '.join(attempts)}; {len(_losses(run))} logged losses "
              f"{'equal to' if same else 'DIFFERENT from'} the uninterrupted run's -> {'OK' if same else 'FAIL'}",
              flush=True)
    print(f"train: {kills} kills in {trial} trials", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
