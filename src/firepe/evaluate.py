"""Zero-shot log perplexity at growing lengths (Sec. 4.1).

Every length is scored on the *same* validation tokens: the validation stream ``s[0..T]`` (``T`` a
multiple of every length) is cut into non-overlapping windows; a window of length ``n`` starting at
``t`` feeds ``s[t:t+n]`` and predicts ``s[t+1:t+n+1]``, so the targets are ``s[1..T]`` at every
length. One forward pass per window, no sliding window (as the paper).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import DataConfig, dataclass_from_dict
from .data import load_tokenizer, split_tokens
from .limits import MAX_LENGTH, check_at_most, split_list
from .runs import write_json, write_text, writing

__all__ = ["eval_tokens", "evaluate_lengths", "write_results", "evaluate_run", "parse_lengths", "lengths_up_to"]


def parse_lengths(text: str) -> list[int]:
    lengths = split_list(text, int, "--lengths", "integers", "512,1024,2048")
    bad = [n for n in lengths if n < 2]
    if bad:
        raise ValueError(f"evaluation lengths must be at least 2 tokens, got {bad[0]}.")
    for n in lengths:
        check_at_most(n, "a length", MAX_LENGTH, " tokens")
    return sorted(set(lengths))


def _common_multiple(lengths: list[int]) -> int:
    m = 1
    for n in lengths:
        m = m * n // math.gcd(m, n)
    return m


def eval_tokens(stream: torch.Tensor, lengths: list[int], max_tokens: int) -> torch.Tensor:
    """The first ``T + 1`` tokens, ``T`` the largest multiple of lcm(lengths) <= min(max_tokens, len - 1)."""
    unit = _common_multiple(lengths)
    total = (min(max_tokens, len(stream) - 1) // unit) * unit
    if total == 0:
        raise ValueError(f"the validation set has {len(stream)} tokens (cap {max_tokens}); scoring lengths "
                         f"{lengths} on identical tokens needs at least {unit + 1}: raise --val-tokens, "
                         "use more validation text or shorter lengths.")
    return stream[: total + 1]


@torch.no_grad()
def evaluate_lengths(model, tokens: torch.Tensor, lengths: list[int], batch_tokens: int = 16384,
                     progress: bool = True) -> list[dict[str, Any]]:
    """``[{"length", "log_ppl", "ppl", "tokens"}]``: mean NLL (nats) over ``tokens[1:]`` per length."""
    model.eval()
    device = next(model.parameters()).device
    total = len(tokens) - 1
    rows = []
    for n in tqdm(lengths, desc="eval", disable=not progress, dynamic_ncols=True):
        inputs = tokens[:-1].view(-1, n)
        targets = tokens[1:].view(-1, n)
        per = max(1, batch_tokens // n)
        nll = 0.0
        for i in range(0, inputs.shape[0], per):
            x, y = inputs[i:i + per].long().to(device), targets[i:i + per].long().to(device)
            logits, _ = model(x)
            nll += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        log_ppl = nll / total
        rows.append({"length": n, "log_ppl": log_ppl, "ppl": math.exp(min(log_ppl, 700)), "tokens": total})
    return rows


def write_results(out: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """``out.json`` (everything) and ``out.csv`` (one row per length), each written atomically."""
    out = Path(out)
    jpath, cpath = out.with_suffix(".json"), out.with_suffix(".csv")
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "position", "train_len", "length", "log_ppl", "ppl", "tokens"])
    for r in results["results"]:
        w.writerow([results["run"], results["position"], results["train_len"], r["length"],
                    f"{r['log_ppl']:.6f}", f"{r['ppl']:.4f}", r["tokens"]])
    write_json(jpath, results)
    write_text(cpath, buf.getvalue())
    return jpath, cpath


def evaluate_run(run_dir: str | Path, lengths: list[int], val_tokens: int | None = None,
                 device: str = "cpu", batch_tokens: int = 16384, progress: bool = True,
                 out: str | Path | None = None, attention: str | None = None, write: bool = True) -> dict[str, Any]:
    """Load ``run_dir``'s latest checkpoint, score every length, write ``RUN/eval.json`` and ``.csv``
    (or ``out``.json/.csv; nothing with ``write=False``)."""
    if val_tokens is not None and (not isinstance(val_tokens, int) or val_tokens < 1):
        raise ValueError(f"val_tokens must be a positive integer, got {val_tokens!r}.")
    if not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}.")
    from .loading import load_run

    model, cfg = load_run(run_dir, device=device)
    if attention:
        model.set_attention(attention)
    data_cfg = dataclass_from_dict(DataConfig, cfg["data"], f"{run_dir}/config.json [data]")
    tok = load_tokenizer(Path(run_dir), data_cfg, model.cfg.vocab_size)
    cap = val_tokens or data_cfg.val_tokens
    stream = split_tokens(data_cfg, tok, "validation", cap + max(lengths) + 1)
    tokens = eval_tokens(stream, lengths, cap)
    rows = evaluate_lengths(model, tokens, lengths, batch_tokens=batch_tokens, progress=progress)
    results = {"run": str(run_dir), "position": cfg["model"]["position"],
               "position_options": cfg["model"]["position_options"], "train_len": cfg["train"]["seq_len"],
               "results": rows}
    if write:
        write_results(Path(out) if out else Path(run_dir) / "eval", results)
    return results


def lengths_up_to(lengths: str | None, max_factor: int, train_len: int) -> list[int]:
    """``--lengths`` when given, else the training length times 1, 2, 4, ... up to ``max_factor``."""
    from .limits import MAX_LENGTH, check_at_most

    if lengths:
        return parse_lengths(lengths)
    if max_factor < 1:
        raise ValueError(f"--max-factor must be >= 1, got {max_factor}.")
    check_at_most(train_len * max_factor, f"the longest length (--max-factor {max_factor} x {train_len})",
                  MAX_LENGTH, " tokens")
    out, f = [], 1
    while f <= max_factor:
        out.append(train_len * f)
        f *= 2
    return out
