"""Scoring runs on tasks, optionally across context lengths (Table 1, Table 11 / Fig. 3, Table 13).

``score_runs(runs, task, lengths=..., depths=...)``: for every run, task and length, greedy decoding
with the KV cache (one forward pass over the prompt, then one token at a time, FIRE's fast bias for
every new row) until the end-of-document token or ``max_new_tokens``, then the task's metrics
(:mod:`firepe.tasks.metrics`). With several lengths, every example's input is cut to each length
(see :func:`firepe.tasks.prepare`), so the same examples are scored at every length (Table 11);
passkey examples are generated at each length and depth (the needle-in-a-haystack grid).

Results: ``{"task", "metric", "results": [{"run", "label", "task", "metric", "length", "depth",
"score", "scores", "examples", "tokens_per_s"}]}``; with several tasks, rows of ``task: "average"``
hold the mean main score per run and length (the SCROLLS average for ``--task scrolls``, the macro
average of the paper's GLUE/SuperGLUE figure).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import DataConfig, dataclass_from_dict
from .data import load_tokenizer
from .generate import decode
from .limits import MAX_BATCH_TOKENS, MAX_EXAMPLES, MAX_LENGTH, check_at_most
from .runs import RunFolder, refuse_link, write_json, write_text, writing
from .tasks import PasskeyTask, Prepared, Task, check_task_files, expand_tasks, load_task, prepare
from .tasks.passkey import DEFAULT_DEPTHS, corpus_filler

__all__ = ["greedy_generate", "score_runs", "write_scores", "format_scores", "run_label"]


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int,
                    use_cache: bool = True, batch_tokens: int = 16384,
                    on_batch: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Greedy continuation of every prompt (without its end-of-document token and what follows).

    Prompts of equal length run as one batch (up to ``batch_tokens`` prompt tokens per batch).
    ``use_cache=False`` recomputes the whole sequence at every step (the reference the cached path
    is tested against). ``on_batch(examples, tokens)`` is called after each batch (progress bars).
    """
    model.eval()
    device = next(model.parameters()).device
    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty.")
        by_len[len(p)].append(i)
    for n, idx in by_len.items():
        per = max(1, batch_tokens // n)
        for s in range(0, len(idx), per):
            rows = idx[s:s + per]
            x = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
            gens = _greedy_batch(model, x, max_new_tokens, eos_id, use_cache)
            for i, gen in zip(rows, gens):
                out[i] = gen
            if on_batch is not None:
                on_batch(len(rows), x.numel() + sum(len(g) for g in gens))
    return out  # type: ignore[return-value]


def _greedy_batch(model, x: torch.Tensor, max_new: int, eos_id: int, use_cache: bool) -> list[list[int]]:
    ids = decode(model, x, max_new, eos_id=eos_id, use_cache=use_cache).tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in ids]


def run_label(runs: Sequence[str | Path]) -> list[str]:
    """Short labels: folder names, or the whole paths when two names collide."""
    names = [Path(r).name or str(r) for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def _check_run(run: str | Path) -> None:
    folder = RunFolder(run)
    folder.check_exists()
    if not folder.has_run():
        raise ValueError(f"{str(run)!r} is not a firepe run folder (no config.json); pass the folder of a "
                         "trained or fine-tuned run.")


def _check_lengths(lengths: Sequence[int] | None) -> None:
    if lengths is not None:
        if not lengths:
            raise ValueError("--lengths is empty; pass e.g. 512,1024,2048.")
        for n in lengths:
            if not isinstance(n, int) or isinstance(n, bool) or n < 2:
                raise ValueError(f"scoring lengths must be integers >= 2, got {n!r}.")
            check_at_most(n, "a scoring length", MAX_LENGTH, " tokens")


def _check_positive_label(task: Task) -> None:
    """``f1_binary:<label>`` on a task without a label set (a local file): ``<label>`` must be one of
    its references, else a typo would score 0 whatever the model says."""
    from .tasks.metrics import F1_BINARY

    refs = {o.strip() for ex in task.examples for o in ex.outputs}
    for m in task.metrics:
        if m.startswith(F1_BINARY) and task.labels is None and m[len(F1_BINARY):] not in refs:
            raise ValueError(f"{m}: no reference of task {task.name} is {m[len(F1_BINARY):]!r}, so its F1 would be 0 "
                             "whatever the model says; name the positive label as the references spell it.")


def score_runs(runs: Sequence[str | Path], task: str, lengths: Sequence[int] | None = None,
               depths: Sequence[float] | None = None, split: str = "validation", task_files: str | None = None,
               limit: int | None = None, examples: int = 10, max_new_tokens: int | None = None,
               metric: str | None = None, filler: str = "corpus", seed: int = 0, device: str = "cpu",
               attention: str | None = None, batch_tokens: int = 16384, progress: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score every run on ``task`` (one spec or several joined by ``,``) and return the results.

    ``lengths``: context lengths (default: the run's training length; for passkey 1x, 2x, 4x and 8x
    it). ``depths`` (passkey only, default 0, 0.25, 0.5, 0.75, 1) and ``examples`` per length and
    depth; ``limit``: first N examples of other tasks. ``max_new_tokens``: default the longest
    reference in tokens + 1. ``progress``: a progress bar over the examples decoded (with tokens/s), as
    ``train`` and ``eval`` have.
    """
    from .loading import resolve_device

    if not runs:
        raise ValueError("no runs to score; pass one or more run folders.")
    specs = expand_tasks(task)
    check_task_files(specs, task_files)
    _check_lengths(lengths)
    passkey = specs == ["passkey"]
    if depths is not None and not passkey:
        raise ValueError("--depths applies to the passkey task only.")
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise ValueError(f"--examples must be a positive integer, got {examples!r}.")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise ValueError(f"--max-new-tokens must be a positive integer, got {max_new_tokens!r}.")
    check_at_most(max_new_tokens, "--max-new-tokens", MAX_LENGTH)
    check_at_most(examples, "--examples", MAX_EXAMPLES)
    check_at_most(batch_tokens, "--batch-tokens", MAX_BATCH_TOKENS)
    if filler not in ("corpus", "classic"):
        raise ValueError(f"--filler must be corpus or classic, got {filler!r}.")
    seen: dict[Path, str] = {}
    for r in runs:
        _check_run(r)
        if Path(r).resolve() in seen:
            raise ValueError(f"score names the run {str(r)!r} twice (also as {seen[Path(r).resolve()]!r}); pass each "
                             "run once.")
        seen[Path(r).resolve()] = str(r)
    dev = resolve_device(device)
    tasks: list[Task] = [] if passkey else [load_task(s, split, task_files, limit, metric) for s in specs]
    for t in tasks:
        _check_positive_label(t)
    labels = run_label(runs)
    rows: list[dict[str, Any]] = []
    with _Progress(progress) as bar:
        for run, label in zip(runs, labels):
            _score_run(run, label, passkey, tasks, lengths, depths, examples, max_new_tokens, filler, seed, dev,
                       attention, batch_tokens, rows, bar, log)
    if len(specs) > 1:
        rows += _averages(rows, "scrolls" if all(s.startswith("scrolls:") for s in specs) else "average")
    main = "accuracy" if passkey else (tasks[0].metric if len(tasks) == 1 else "main")
    return {"task": task, "metric": main, "split": None if passkey else split, "results": rows}


class _Progress:
    """One tqdm bar over every example ``score`` decodes; its total grows cell by cell."""

    def __init__(self, enabled: bool):
        self.bar = tqdm(total=0, desc="score", unit="ex", disable=not enabled, dynamic_ncols=True)
        self.tokens, self.t0 = 0, time.perf_counter()

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def add(self, examples: int) -> None:
        self.bar.total += examples
        self.bar.refresh()

    def done(self, examples: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.t0, 1e-9):,.0f} tokens/s",
                                 refresh=False)
        self.bar.update(examples)


def _score_run(run, label, passkey, tasks, lengths, depths, examples, max_new_tokens, filler, seed, dev,
               attention, batch_tokens, rows, bar, log) -> None:
    """Score one run (every task, length and depth), appending to ``rows``."""
    from .loading import load_run

    model, cfg = load_run(run, device=dev)
    if attention:
        model.set_attention(attention)
    data_cfg = dataclass_from_dict(DataConfig, cfg["data"], f"{run}/config.json [data]")
    tok = load_tokenizer(Path(run), data_cfg, model.cfg.vocab_size)
    train_len = cfg["train"]["seq_len"]
    if passkey:
        fill = corpus_filler(data_cfg, tok, "validation") if filler == "corpus" else None
        source = PasskeyTask(tok, fill, seed=seed)
        run_lengths = list(lengths or [train_len * f for f in (1, 2, 4, 8)])
        grid = [(n, d) for n in run_lengths for d in (depths or DEFAULT_DEPTHS)]
        for n, d in grid:
            try:
                prepared = source.prepared(n, d, examples)
            except ValueError as e:
                raise ValueError(f"run {label} (trained at {train_len}): {e}") from None
            rows.append(_score(model, tok, "passkey", source, prepared, str(run), label, n, d,
                               max_new_tokens or 8, batch_tokens, log, bar))
        return
    for t in tasks:
        refs = [len(tok.encode(r)) for ex in t.examples for r in ex.outputs]
        max_new = max_new_tokens or max(refs) + 1
        for n in lengths or [train_len]:
            prepared = prepare(t.examples, tok, n, task=t.name)
            rows.append(_score(model, tok, t.name, t, prepared, str(run), label, n, None, max_new,
                               batch_tokens, log, bar))


def _score(model, tok, name: str, task, prepared: list[Prepared], run: str, label: str, length: int,
           depth: float | None, max_new: int, batch_tokens: int, log, bar: _Progress) -> dict[str, Any]:
    from .tasks.metrics import score_predictions

    t0 = time.perf_counter()
    bar.add(len(prepared))
    gen = greedy_generate(model, [p.prompt for p in prepared], max_new, tok.eos_id, batch_tokens=batch_tokens,
                          on_batch=bar.done)
    seconds = max(time.perf_counter() - t0, 1e-9)
    tokens = sum(len(p.prompt) for p in prepared) + sum(len(g) for g in gen)
    post = getattr(task, "postprocess", None) or str.strip
    preds = [post(tok.decode(g)) for g in gen]
    groups = [p.group for p in prepared] if any(p.group for p in prepared) else None
    scores = score_predictions(task.metrics, preds, [p.references for p in prepared], groups=groups,
                               labels=task.labels)
    main = scores[task.metric]
    where = f" depth {depth:g}" if depth is not None else ""
    log(f"[{label}] {name} length {length}{where}: {task.metric} {main:.2f} on {len(prepared)} examples "
        f"({tokens / seconds:,.0f} tokens/s)")
    return {"run": run, "label": label, "task": name, "metric": task.metric, "length": length, "depth": depth,
            "score": main, "scores": scores, "examples": len(prepared), "tokens_per_s": tokens / seconds,
            "truncated": sum(1 for p in prepared if p.truncated)}


def _averages(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """One row per run and length: the plain mean of the tasks' main scores
    (:func:`~firepe.tasks.metrics.scrolls_average`, the SCROLLS benchmark's average)."""
    from .tasks.metrics import scrolls_average

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["run"], r["label"], r["length"])].append(r)
    return [{"run": run, "label": label, "task": name, "metric": "average", "length": n, "depth": None,
             "score": scrolls_average({r["task"]: r["score"] for r in rs}), "scores": {},
             "examples": sum(r["examples"] for r in rs), "tokens_per_s": None,
             "truncated": sum(r["truncated"] for r in rs)}
            for (run, label, n), rs in groups.items()]


def format_scores(results: dict[str, Any]) -> str:
    """Markdown table: one row per run (and task), one column per length; passkey averages depths."""
    rows = results["results"]
    lengths = sorted({r["length"] for r in rows})
    cells: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["label"], r["task"])][r["length"]].append(r["score"])
    multi = len({r["task"] for r in rows}) > 1
    best = {n: max((sum(v[n]) / len(v[n]) for v in cells.values() if v.get(n)), default=math.nan)
            for n in lengths}
    head = "| run | " + ("task | " if multi else "") + " | ".join(str(n) for n in lengths) + " |"
    lines = [head, "|---" * (len(lengths) + 1 + multi) + "|"]
    for (label, task), by_len in cells.items():
        vals = []
        for n in lengths:
            if not by_len.get(n):
                vals.append("")
                continue
            v = sum(by_len[n]) / len(by_len[n])
            vals.append(f"**{v:.1f}**" if not multi and abs(v - best[n]) < 0.05 else f"{v:.1f}")
        lines.append(f"| {label} | " + (f"{task} | " if multi else "") + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_scores(out: str | Path, results: dict[str, Any], plot: bool = True, table: str | None = None) -> list[Path]:
    """``out/score.json``, ``score.csv``, ``score.md``, ``score.png`` (score vs length, one line per
    run) and for passkey ``passkey_<label>.png`` (length x depth heat map per run); atomic writes. The
    plots of an earlier score into ``out`` are removed first (with ``plot=False`` none is left).
    ``table``: the text of ``score.md`` (default :func:`format_scores`). Rows with a ``seed`` (several
    seeds of one label) get a ``seed`` column in the CSV."""
    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    seeds = any("seed" in r for r in results["results"])
    w.writerow(["run", "label", *(["seed"] if seeds else []), "task", "metric", "length", "depth", "score", "examples"])
    for r in results["results"]:
        w.writerow([r["run"], r["label"], *([r.get("seed", "")] if seeds else []), r["task"], r["metric"], r["length"],
                    "" if r["depth"] is None else r["depth"], f"{r['score']:.4f}", r["examples"]])
    write_json(out / "score.json", results)
    write_text(out / "score.csv", buf.getvalue())
    write_text(out / "score.md", (format_scores(results) if table is None else table) + "\n")
    paths = [out / "score.json", out / "score.csv", out / "score.md"]
    heatmaps = {}
    if plot and results["results"] and results["results"][0]["task"] == "passkey":
        for label in dict.fromkeys(r["label"] for r in results["results"]):
            heatmaps[label] = out / ("passkey_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
                                     + ".png")
    # an earlier score's plots that this one does not replace never stay beside its results
    kept = {out / "score.png", *heatmaps.values()} if plot else set()
    for old in [out / "score.png", *out.glob("passkey_*.png")]:
        if old not in kept:
            refuse_link(old)
            with writing(old):
                old.unlink(missing_ok=True)
    if plot:
        from .plots import passkey_heatmap, score_vs_length

        paths.append(score_vs_length(results, out / "score.png"))
        for label, path in heatmaps.items():
            paths.append(passkey_heatmap(results, label, path))
    return paths


def generate_text(run: str | Path, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 40,
                  seed: int = 0, device: str = "cpu", attention: str | None = None) -> str:
    """``firepe generate``: ``prompt`` continued by a run (or export) with its KV cache, decoded to text."""
    from .loading import load_run, resolve_device

    for flag, value, lo in (("--max-new-tokens", max_new_tokens, 0), ("--seed", seed, 0), ("--top-k", top_k, 1)):
        if value is not None and value < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {value}.")
    check_at_most(max_new_tokens, "--max-new-tokens", MAX_LENGTH)
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {temperature}.")
    dev = resolve_device(device)
    model, cfg = load_run(run, device=dev)
    if attention:
        model.set_attention(attention)
    tok = load_tokenizer(Path(run), dataclass_from_dict(DataConfig, cfg["data"]), model.cfg.vocab_size)
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("--prompt is empty; give at least one character.")
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = model.generate(torch.tensor([ids], device=dev), max_new_tokens, temperature=temperature, top_k=top_k,
                         generator=gen)
    return tok.decode(out[0].tolist())
