"""Figures of the paper, drawn with matplotlib (Agg backend, PNG files).

* :func:`bias_curves` -- learned bias of every head for one query over all keys (Fig. 4 / 8).
* :func:`score_vs_length` / :func:`passkey_heatmap` -- task score vs context length (Fig. 3) and the
  passkey length x depth grid, from ``score.json``.
* :func:`perplexity_vs_length` -- log perplexity vs evaluation length per encoding (Fig. 1), from
  the ``results.json`` that ``firepe compare`` writes (or the same dictionary).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .positions.base import BiasEncoding  # noqa: E402
from .runs import refuse_link, writing  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write ``fig`` as a PNG at ``path`` (creating folders) and close it. Written under a
    temporary name and renamed, so a failed write (full disk, read-only folder) keeps the previous
    file; the failure is one ``ValueError`` naming ``path``."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    refuse_link(out)
    try:
        fig.tight_layout()
        with writing(out):
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                fig.savefig(tmp, dpi=120, format=out.suffix[1:].lower() or "png")
                os.replace(tmp, out)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    finally:
        plt.close(fig)
    return out


@torch.no_grad()
def bias_values(module: BiasEncoding, query_pos: int) -> torch.Tensor:
    """``[H, query_pos + 1]`` bias of query ``query_pos`` (0-based) for keys ``0..query_pos``."""
    if not isinstance(query_pos, int) or query_pos < 0:
        raise ValueError(f"query_pos must be a non-negative integer, got {query_pos!r}.")
    device = next((t.device for t in list(module.parameters()) + list(module.buffers())), torch.device("cpu"))
    b = module.bias(torch.tensor([query_pos], device=device), torch.arange(query_pos + 1, device=device))
    if b is None:
        raise ValueError(f"{type(module).__name__} has no additive bias to plot.")
    return b[:, 0, :].float().cpu()


def bias_curves(module: BiasEncoding | Mapping[str, BiasEncoding], query_pos: int = 128,
                path: str | Path = "fire_bias.png", title: str | None = None) -> Path:
    """Plot the bias of every head for query ``query_pos`` over keys ``0..query_pos`` and save a PNG.

    ``module`` is one bias encoding or a mapping ``{panel title: encoding}`` (e.g. one per layer); a
    mapping's value may be the bias itself, ``[H, query_pos + 1]`` (FoX's bias for a given input).
    Returns the path written. The x axis is the key position, as in the paper's Fig. 4.
    """
    panels = dict(module) if isinstance(module, Mapping) else {title or type(module).__name__: module}
    if not panels:
        raise ValueError("bias_curves needs at least one module.")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    keys = torch.arange(query_pos + 1)
    for ax, (name, mod) in zip(axes.flat, panels.items()):
        values = mod.float().cpu() if isinstance(mod, torch.Tensor) else bias_values(mod, query_pos)
        for h, row in enumerate(values):
            ax.plot(keys.numpy(), row.numpy(), lw=1.0, label=f"head {h}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("key position")
        ax.set_ylabel(f"bias (query {query_pos})")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if values.shape[0] <= 16:
        axes.flat[0].legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def perplexity_vs_length(summary: dict[str, Any] | str | Path, path: str | Path = "perplexity.png") -> Path:
    """Fig. 1-style plot: log perplexity (y) against evaluation length (x, log2 scale), one line per
    run, the training length marked by a dashed line."""
    if not isinstance(summary, dict):
        summary = json.loads(Path(summary).read_text())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if "table" in summary:  # several seeds
        _seed_lines(ax, summary["table"], summary["lengths"])
    else:
        for run in summary["runs"]:
            xs = [r["length"] for r in run["results"]]
            ys = [r["log_ppl"] for r in run["results"]]
            ax.plot(xs, ys, marker="o", lw=1.5, label=run["label"])
    ax.axvline(summary["train_len"], color="gray", ls="--", lw=1, label=f"train length {summary['train_len']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(summary["lengths"], [str(n) for n in summary["lengths"]])
    ax.set_xlabel("evaluation sequence length")
    ax.set_ylabel("validation log perplexity (nats/token)")
    ax.set_title("Train short, test long")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _seed_lines(ax, table: dict[str, Any], levels: list[int], band: bool = True) -> None:
    """One line per label of a :func:`firepe.seeds.seed_table`: the mean over seeds at each level, with a
    +-1 standard deviation band in the line's colour (``band``)."""
    for label, by in table["cells"].items():
        mean = [by[str(lv)]["mean"] for lv in levels]
        sd = [by[str(lv)]["std"] for lv in levels]
        (line,) = ax.plot(levels, mean, marker="o", lw=1.5, label=label)
        if band:
            ax.fill_between(levels, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=line.get_color(), alpha=0.15)


def _score_results(results: dict[str, Any] | str | Path) -> dict[str, Any]:
    return results if isinstance(results, dict) else json.loads(Path(results).read_text())


def score_vs_length(results: dict[str, Any] | str | Path, path: str | Path = "score.png") -> Path:
    """Fig. 3 (left)-style plot from ``score.json``: task score (y) against context length (x, log2
    scale), one line per run (and task); passkey averages over depths."""
    results = _score_results(results)
    lines: dict[str, dict[int, list[float]]] = {}
    tasks = {r["task"] for r in results["results"]}
    for r in results["results"]:
        name = r["label"] if len(tasks) == 1 else f"{r['label']} {r['task']}"
        lines.setdefault(name, {}).setdefault(r["length"], []).append(r["score"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lengths = sorted({r["length"] for r in results["results"]})
    if "table" in results:  # several seeds
        _seed_lines(ax, results["table"], lengths)
    else:
        for name, by_len in lines.items():
            xs = sorted(by_len)
            ax.plot(xs, [sum(by_len[n]) / len(by_len[n]) for n in xs], marker="o", lw=1.5, label=name)
    if len(lengths) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"{results['metric']} (%)")
    ax.set_title(f"{results['task']} vs context length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def passkey_heatmap(results: dict[str, Any] | str | Path, label: str, path: str | Path) -> Path:
    """Needle-in-a-haystack grid of one run: accuracy (%) by context length (x) and key depth (y)."""
    results = _score_results(results)
    rows = [r for r in results["results"] if r["label"] == label and r["depth"] is not None]
    if not rows:
        raise ValueError(f"no passkey results of run {label!r} to plot.")
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    cells: dict[tuple[int, int], list[float]] = {}
    for r in rows:  # several seeds of one label: their mean
        cells.setdefault((depths.index(r["depth"]), lengths.index(r["length"])), []).append(r["score"])
    grid = torch.full((len(depths), len(lengths)), float("nan"))
    for (i, j), v in cells.items():
        grid[i, j] = sum(v) / len(v)
    seeds = len({r.get("seed") for r in rows})
    title = f"passkey accuracy: {label}" + (f" (mean of {seeds} seeds)" if seeds > 1 else "")
    return _accuracy_heatmap(grid, [str(n) for n in lengths], [f"{d:g}" for d in depths], "context length (tokens)",
                             "key depth", title, path)


def _accuracy_heatmap(grid: torch.Tensor, xticks: list[str], yticks: list[str], xlabel: str, ylabel: str,
                      title: str, path: str | Path, lower: bool = False) -> Path:
    """Accuracy (%) grid ``[len(yticks), len(xticks)]`` as a red-to-green heat map with the values
    written in the cells (NaN cells blank); ``lower`` puts the first row at the bottom."""
    fig, ax = plt.subplots(figsize=(1.2 * len(xticks) + 2.5, 0.5 * len(yticks) + 2))
    im = ax.imshow(grid.numpy(), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto", origin="lower" if lower else None)
    for i in range(len(yticks)):
        for j in range(len(xticks)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(xticks)), xticks)
    ax.set_yticks(range(len(yticks)), yticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return save_figure(fig, path)


def synth_accuracy(summary: dict[str, Any], path: str | Path = "accuracy.png") -> Path:
    """Accuracy vs level per encoding from ``firepe synth``'s summary: the mean over seeds with a
    +-1 standard deviation band (no band for one seed)."""
    levels = summary["levels"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _seed_lines(ax, summary["table"], levels, band=len(summary["seeds"]) > 1)
    if summary["level_name"] == "length" and len(levels) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("digits per number" if summary["level_name"] == "digits" else "sequence length (tokens)")
    ax.set_ylabel("accuracy (%)")
    n = len(summary["seeds"])
    ax.set_title(f"{summary['task']['task']}: trained at {summary['train_len']} tokens, {n} seed{'s' * (n > 1)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def synth_distance_heatmap(summary: dict[str, Any], label: str, path: str | Path) -> Path:
    """Recall accuracy (%) of one encoding by sequence length (x) and binding-query distance bin (y),
    answers pooled over seeds; empty cells (no answer at that distance) are blank."""
    runs = [r for r in summary["runs"] if r["label"] == label]
    if not runs or "by_distance" not in runs[0]["results"][0]:
        raise ValueError(f"no recall results of {label!r} to plot.")
    levels = summary["levels"]
    edges = sorted({b["max_distance"] for r in runs for s in r["results"] for b in s["by_distance"]})
    counts = torch.zeros((len(edges), len(levels), 2))
    for r in runs:
        for s in r["results"]:
            j = levels.index(s["level"])
            for b in s["by_distance"]:
                pair = torch.tensor([b["correct"], b["answers"]], dtype=torch.float)
                counts[edges.index(b["max_distance"]), j] += pair
    grid = torch.where(counts[..., 1] > 0, 100 * counts[..., 0] / counts[..., 1].clamp(min=1), float("nan"))
    return _accuracy_heatmap(grid, [str(n) for n in levels], [f"<={e}" for e in edges], "sequence length (tokens)",
                             "distance binding -> query", f"recall accuracy: {label}", path, lower=True)


def depth_grid(summary: dict[str, Any], label: str) -> tuple[torch.Tensor, list[str]]:
    """``[bins, levels]`` accuracy (%) of one encoding by needle depth bin (rows, shallowest first) and level,
    answers pooled over seeds (NaN where a bin has no answer), and the bins' labels."""
    runs = [r for r in summary["runs"] if r["label"] == label]
    if not runs or "by_depth" not in runs[0]["results"][0]:
        raise ValueError(f"no by-depth results of {label!r} to plot.")
    levels = summary["levels"]
    bins = sorted({(b["min_depth"], b["max_depth"]) for r in runs for s in r["results"] for b in s["by_depth"]})
    counts = torch.zeros((len(bins), len(levels), 2))
    for r in runs:
        for s in r["results"]:
            for b in s["by_depth"]:
                counts[bins.index((b["min_depth"], b["max_depth"])), levels.index(s["level"])] += torch.tensor(
                    [b["correct"], b["answers"]], dtype=torch.float)
    grid = torch.where(counts[..., 1] > 0, 100 * counts[..., 0] / counts[..., 1].clamp(min=1), float("nan"))
    return grid, [f"{100 * lo:.0f}-{100 * hi:.0f}%" for lo, hi in bins]


def synth_depth_heatmap(summary: dict[str, Any], label: str, path: str | Path) -> Path:
    """Accuracy (%) of one encoding on a RULER-style task by sequence length (x) and needle depth (y,
    :func:`depth_grid`), answers pooled over seeds."""
    grid, yticks = depth_grid(summary, label)
    return _accuracy_heatmap(grid, [str(n) for n in summary["levels"]], yticks, "sequence length (tokens)",
                             "needle depth in the context", f"{summary['task']['task']} accuracy: {label}", path)


#: the largest query position plot-bias draws (a [H, query + 1] row per layer)
MAX_PLOT_QUERY = 1 << 20
#: the most tokens of a text plot-bias runs through a data-dependent encoding (its bias is ``[H, T, T]`` per
#: layer: 2,048 tokens are 64 MiB a layer with 4 heads; CoPE's logits as many)
MAX_PLOT_TEXT = 2048


def plot_run_bias(run: str | Path, query: int | None = None, text: str | None = None,
                  out: str | Path | None = None) -> Path:
    """``firepe plot-bias``: a trained run's (or export's) bias for one query, every head, every layer (Fig. 4),
    into ``out`` (default ``RUN/bias_q<query>.png``). Biases of positions (query default 128) are drawn from the
    encodings; data-dependent ones (FoX, CoPE) need ``text`` (at most :data:`MAX_PLOT_TEXT` tokens; query default
    its last token) and are drawn as the layer adds them for it."""
    from .kinds import kind_of
    from .loading import load_run

    if query is not None and not 0 <= query <= MAX_PLOT_QUERY:
        raise ValueError(f"--query must be a position in 0..{MAX_PLOT_QUERY}, got {query}.")
    if out is not None and (Path(out).suffix.lower() != ".png" or Path(out).is_dir()):
        raise ValueError(f"--out {str(out)!r} must be a PNG file path ending in .png.")
    model, cfg = load_run(run)
    mods = model.position_modules()
    name = cfg["model"]["position"]
    kind = kind_of(mods[0])
    if kind.reads_input:
        panels, query = _input_bias_panels(run, model, cfg, query, text)
    else:
        if text is not None:
            raise ValueError(f"--text applies to data-dependent biases (fox, cope); run {run} uses {name!r}, "
                             "whose bias depends on positions only: leave --text out.")
        if not kind.draws_position_bias:
            raise ValueError(f"run {run} uses {name!r}, which has no additive bias to plot.")
        query = 128 if query is None else query
        panels = {"all layers (shared)": mods[0]} if model.position_shared is not None else {
            f"layer {i}": m for i, m in enumerate(mods)}
    return bias_curves(panels, query_pos=query, path=out or Path(run) / f"bias_q{query}.png")


def _input_bias_panels(run, model, cfg, query: int | None, text: str | None) -> tuple[dict, int]:
    """Per layer, the bias of a data-dependent encoding for ``text``, row ``query`` (``[H, query + 1]``)."""
    from .config import DataConfig, dataclass_from_dict
    from .data import load_tokenizer

    if text is None:
        raise ValueError(f"run {run} uses {cfg['model']['position']!r}, whose bias depends on the input; "
                         "pass --text TEXT to draw it for that text.")
    if len(text) > 64 * MAX_PLOT_TEXT:  # before tokenizing: no tokenizer makes fewer tokens than this
        raise ValueError(f"--text holds {len(text):,} characters; plot-bias draws the bias of at most "
                         f"{MAX_PLOT_TEXT:,} tokens: cut the text to the part before the query.")
    tok = load_tokenizer(Path(run), dataclass_from_dict(DataConfig, cfg["data"]), model.cfg.vocab_size)
    ids = tok.encode(text)
    if not ids:
        raise ValueError("--text is empty; give at least one character.")
    if len(ids) > MAX_PLOT_TEXT:
        raise ValueError(f"--text is {len(ids):,} tokens; plot-bias draws the bias of at most {MAX_PLOT_TEXT:,} "
                         "tokens: cut the text to the part before the query.")
    last = len(ids) - 1
    query = last if query is None else query
    if query > last:
        raise ValueError(f"--query {query} is past the text's last token (position {last}); pass --query 0..{last} "
                         "or a longer --text.")
    device = next(model.parameters()).device
    biases = model.input_biases(torch.tensor([ids[: query + 1]], device=device))
    return {f"layer {i}": b[0, :, query, :] for i, b in enumerate(biases)}, query
