"""Helpers shared by the command-line tests."""

import json
import os
import re
import socket
from pathlib import Path

from firepe.cli import main

#: flags of the tiny CLI training runs the task tests start from
TINY = ["--preset", "tiny", "--batch-size", "2", "--no-progress", "--val-tokens", "512"]


def run_cli(argv) -> int:
    """``firepe ARGV`` in-process (paths and numbers converted to strings); the exit status."""
    return main([str(a) for a in argv])


def one_line_error(capsys, argv, match):
    """Run ``firepe ARGV`` and check the error contract: exit status 2 and exactly one stderr line
    ``firepe: error: ...`` matching ``match`` (output of earlier commands is drained first)."""
    capsys.readouterr()
    code = run_cli(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("firepe: error:") and err.count("\n") == 1, err
    assert re.search(match, err), err
    return err


def task_base(root: Path) -> tuple[Path, Path]:
    """A tiny FIRE run trained 2 steps at 96 tokens on a small local corpus, and a 6-row ``jsonl:`` task
    file (``{"id", "input": "say i", "output": "i"}``), under ``root``."""
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(30):
        (corpus / f"f{k:02d}.py").write_text(f"def g(x):\n    return x - {k}\n" * 50)
    run = root / "base"
    assert main(["train", "--out", str(run), "--position", "fire", "--steps", "2", "--seq-len", "96",
                 "--corpus", str(corpus), *TINY]) == 0
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps({"id": str(i), "input": f"say {i}", "output": f"{i}"}) + "\n"
                            for i in range(6)))
    return run, good


def cached_logits(model, idx, prefix: int):
    """Logits of ``idx`` fed through a fresh KV cache: ``prefix`` tokens at once, then one token a step."""
    import torch

    from firepe.attention import KVCache

    cache = KVCache.empty(model.cfg.n_layer)
    with torch.no_grad():
        parts = [model(idx[:, :prefix], cache=cache)[0]]
        parts += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(prefix, idx.shape[1])]
    return torch.cat(parts, 1), cache


def free_port() -> int:
    """A free local TCP port (for a gloo process group of spawned test processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of ``world`` (one machine, CPU, one torch thread)."""
    import torch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def deny_writes(monkeypatch, root: Path) -> None:
    """Make every ``os.open`` for writing below ``root`` fail as a read-only folder does (EACCES)."""
    real_open = os.open

    def deny(path, flags, *a, **k):
        if str(path).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", deny)


def spy_positions(monkeypatch) -> list:
    """Record the ``positions=`` argument of every ``GPT.forward`` call (the list fills as the model runs)."""
    from firepe.model import GPT

    seen = []
    original = GPT.forward

    def spy(self, idx, targets=None, cache=None, attention_mask=None, positions=None):
        seen.append(positions)
        return original(self, idx, targets, cache, attention_mask, positions)

    monkeypatch.setattr(GPT, "forward", spy)
    return seen
