"""The Zhou et al. (2024) addition result, scaled down (issue 35): train addition up to N digits, score to
2.5N and beyond, success rate over seeds.

Arms (each one ``firepe.synth.synth`` call, all on the same generated data per seed):

* ``hints+rp``: index hints and randomized positions (``random_positions = M``) -- FIRE, RoPE, NoPE, Kerple;
* ``plain``: FIRE without hints and without randomized positions;
* ``coupled`` / ``abacus``: the position-id schemes (``SynthConfig.position_ids``), without hints.

A seed *succeeds* at a length when its exact-match accuracy there is >= ``--threshold`` (90%). Writes
``OUT/zhou.json`` and ``OUT/zhou.md`` (success k/n and mean accuracy per arm, encoding and digit count), and
every arm's ``firepe synth`` folder under ``OUT/<arm>``; finished runs are reused.

    python benchmarks/zhou_addition.py --out /tmp/zhou --digits 4 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from firepe.config import TrainConfig, preset
from firepe.devices import cpu_description
from firepe.synth import synth
from firepe.synth_runs import SYNTH_DEFAULTS
from firepe.tasks.synthetic import SynthConfig


def arms(digits: int, rp: int) -> list[tuple[str, SynthConfig, list[str], int | None]]:
    return [("hints+rp", SynthConfig(task="addition", digits=digits, hints=True), ["fire", "rope", "nope",
                                                                                   "kerple_log"], rp),
            ("plain", SynthConfig(task="addition", digits=digits), ["fire"], None),
            ("coupled", SynthConfig(task="addition", digits=digits, position_ids="coupled"), ["fire", "rope"], None),
            ("abacus", SynthConfig(task="addition", digits=digits, position_ids="abacus"), ["fire"], None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--digits", type=int, default=4)
    ap.add_argument("--levels", default=None, help="scored digit counts (default: N, 1.5N, 2N, 2.5N, 3N)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--random-positions", type=int, default=128)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=90.0)
    ap.add_argument("--arms", default=None, help="comma-separated subset of hints+rp,plain,coupled,abacus")
    a = ap.parse_args()
    N = a.digits
    levels = ([int(x) for x in a.levels.split(",")] if a.levels
              else sorted({N, (3 * N) // 2, 2 * N, (5 * N + 1) // 2, 3 * N}))
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    chosen = a.arms.split(",") if a.arms else None
    rows, t0 = [], time.perf_counter()
    for name, task, encs, rp in arms(N, a.random_positions):
        if chosen and name not in chosen:
            continue
        train = TrainConfig(**{**SYNTH_DEFAULTS, "steps": a.steps, "progress": False, "random_positions": rp})
        t1 = time.perf_counter()
        summary = synth(out / name, encs, replace(preset("tiny"), position="nope"), train, task, seeds,
                        levels=levels, examples=a.examples, log=lambda *x: None)
        print(f"{name}: {time.perf_counter() - t1:.0f} s", flush=True)
        for r in summary["runs"]:
            rows.append({"arm": name, "label": r["label"], "seed": r["seed"],
                         "accuracy": {s["level"]: s["accuracy"] for s in r["results"]}})
    wall = time.perf_counter() - t0
    lines = [f"Addition trained on 1..{N} digits, scored at {', '.join(map(str, levels))} digits; "
             f"{len(seeds)} seeds; success = exact match >= {a.threshold:g}% (seeds succeeding / seeds, mean "
             f"accuracy). {a.steps} steps, tiny preset; {cpu_description()}; wall {wall / 60:.1f} min.", "",
             "| arm | encoding | " + " | ".join(f"{lv} ({lv / N:g}x)" for lv in levels) + " |",
             "|---|---|" + "---|" * len(levels)]
    for arm, label in dict.fromkeys((r["arm"], r["label"]) for r in rows):
        mine = [r for r in rows if r["arm"] == arm and r["label"] == label]
        cells = []
        for lv in levels:
            accs = [r["accuracy"][lv] for r in mine]
            ok = sum(x >= a.threshold for x in accs)
            cells.append(f"{ok}/{len(accs)} ({statistics.mean(accs):.1f}%)")
        lines.append(f"| {arm} | {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zhou.md").write_text(text + "\n")
    (out / "zhou.json").write_text(json.dumps({"digits": N, "levels": levels, "seeds": seeds, "steps": a.steps,
                                               "random_positions": a.random_positions, "threshold": a.threshold,
                                               "cpu": cpu_description(), "wall_seconds": wall, "runs": rows},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
