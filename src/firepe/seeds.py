"""Results over several seeds: mean ± std per cell, who is best in every seed, paired differences.

A seed fixes the initialization and the data order of every encoding alike, so the per-seed
difference between two encodings is sharper than the spread of either cell. Used by ``compare``,
``ablate`` and ``synth``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["parse_seeds", "seed_table", "format_seed_table", "md_cell", "mean", "std"]


def parse_seeds(text: str | int, first: int = 0) -> list[int]:
    """``--seeds``: a count ``N`` (seeds ``first .. first + N - 1``) or a comma-separated list ``0,3,7``."""
    s = str(text).strip()
    try:
        if "," in s:
            seeds = [int(x) for x in s.split(",")]
        else:
            n = int(s)
            if n < 1:
                raise ValueError(f"--seeds must be a count >= 1 or a list like 0,1,2, got {text!r}.")
            seeds = list(range(first, first + n))
    except ValueError as e:
        if str(e).startswith("--seeds"):
            raise
        raise ValueError(f"--seeds must be a count >= 1 or a comma-separated list of integers, got {text!r}.") from None
    if any(x < 0 for x in seeds):
        raise ValueError(f"--seeds must be integers >= 0, got {text!r}.")
    dup = sorted({x for x in seeds if seeds.count(x) > 1})
    if dup:
        raise ValueError(f"--seeds names seed {dup[0]} twice; each seed once.")
    if len(seeds) > 100:
        raise ValueError(f"--seeds gives {len(seeds)} seeds; at most 100.")
    return seeds


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for one value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def seed_table(value: dict[tuple[str, int, int], float], labels: list[str], seeds: list[int], levels: list[int],
               higher_is_better: bool, reference: str | None = None) -> dict[str, Any]:
    """``value[label, seed, level]`` -> ``{"cells", "best_every_seed", "reference", "paired"}``.

    ``cells[label][str(level)]``: mean, std and per-seed values; ``best_every_seed[str(level)]``: the
    labels best (ties included) in every seed; ``paired[label][str(level)]``: reference minus label,
    per seed, as mean, std and ``ref_ahead_in`` (seeds where the reference is better).
    """
    sign = 1 if higher_is_better else -1
    cells = {lab: {str(lv): {"mean": mean(v := [value[lab, s, lv] for s in seeds]), "std": std(v), "per_seed": v}
                   for lv in levels} for lab in labels}
    every = {str(lv): [lab for lab in labels
                       if all(sign * value[lab, s, lv] >= max(sign * value[o, s, lv] for o in labels) - 1e-9
                              for s in seeds)] for lv in levels}
    ref = reference if reference in labels else labels[0]
    paired = {}
    for lab in labels:
        if lab == ref:
            continue
        paired[lab] = {}
        for lv in levels:
            d = [value[ref, s, lv] - value[lab, s, lv] for s in seeds]
            paired[lab][str(lv)] = {"mean": mean(d), "std": std(d), "ref_ahead_in": sum(sign * x > 0 for x in d)}
    return {"cells": cells, "best_every_seed": every, "reference": ref, "paired": paired}


def md_cell(text: str) -> str:
    """``text`` as one Markdown table cell: a ``|`` in it (a label like ``a|b``) escaped as ``\\|``, so it never
    starts a new column."""
    return str(text).replace("|", "\\|")


def format_seed_table(table: dict[str, Any], levels: list[int], column: Callable[[int], str], digits: int,
                      higher_is_better: bool, n_seeds: int, what: str) -> str:
    """Markdown: ``mean ± std`` per cell (**bold** best mean per column, ``*`` best in every seed), then the
    paired differences reference minus each label (``what`` names the unit). A column where every label has
    the same mean (all at 0%, say) marks nothing: it separates no encoding."""
    pick = max if higher_is_better else min
    f = f"{{:.{digits}f}}"
    plural = "s" if n_seeds > 1 else ""
    head = f"| encoding ({n_seeds} seed{plural}) | " + " | ".join(column(lv) for lv in levels) + " |"
    lines = [head, "|---" * (len(levels) + 1) + "|"]
    best = {lv: pick(c[str(lv)]["mean"] for c in table["cells"].values()) for lv in levels}
    level = {lv: len(table["cells"]) > 1 and all(math.isclose(c[str(lv)]["mean"], best[lv], rel_tol=0, abs_tol=1e-9)
                                                 for c in table["cells"].values()) for lv in levels}
    for lab, by in table["cells"].items():
        cells = []
        for lv in levels:
            c = by[str(lv)]
            text = f"{f.format(c['mean'])} ± {f.format(c['std'])}" if n_seeds > 1 else f.format(c["mean"])
            if not level[lv] and math.isclose(c["mean"], best[lv], rel_tol=0, abs_tol=1e-9):
                text = f"**{text}**"
            if n_seeds > 1 and not level[lv] and lab in table["best_every_seed"][str(lv)]:
                text += " *"
            cells.append(text)
        lines.append(f"| {md_cell(lab)} | " + " | ".join(cells) + " |")
    if n_seeds > 1 and table["paired"]:
        ref = table["reference"]
        better = "higher" if higher_is_better else "lower"
        lines += ["", f"Paired per-seed differences, {ref} minus each encoding ({what}, mean ± std; {better} is "
                      f"better for {ref}; in brackets: seeds where {ref} is better, of {n_seeds}):", "",
                  f"| {md_cell(ref)} minus | " + " | ".join(column(lv) for lv in levels) + " |",
                  "|---" * (len(levels) + 1) + "|"]
        g = f"{{:+.{digits}f}}"
        for lab, by in table["paired"].items():
            lines.append(f"| {md_cell(lab)} | " + " | ".join(
                f"{g.format(by[str(lv)]['mean'])} ± {f.format(by[str(lv)]['std'])} ({by[str(lv)]['ref_ahead_in']})"
                for lv in levels) + " |")
    return "\n".join(lines)
