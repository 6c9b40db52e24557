"""litdata against firepe's prepared shards on the same corpus and tokenizer (docs/data.md, "Why ...").

    python benchmarks/data_engines.py firepe-read PREPARED_DIR                 # firepe's environment
    python benchmarks/data_engines.py litdata-prepare CORPUS TOKENIZER OUT     # an environment with litdata
    python benchmarks/data_engines.py litdata-read OUT

``*-read``: 2,000 random batches of 16 sequences of 65 tokens (the scale benchmark's training shape), batches/s.
``litdata-prepare``: ``litdata.optimize`` with 2 worker processes, each file tokenized with the same
``tokenizer.json`` (``encode`` per file, ids + end-of-document), chunks of 64 MiB, ``TokensLoader``.
Run each under ``/usr/bin/time -v`` for peak memory. Not part of the test suite; litdata is not a dependency.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BATCHES, BATCH, SEQ = 2000, 16, 64


def firepe_read(folder: str) -> dict:
    from firepe.data import PreparedData, TokenData

    data = TokenData(PreparedData(folder).split("train"), SEQ)
    t0 = time.perf_counter()
    for step in range(BATCHES):
        data.batch(step, BATCH, seed=0)
    s = time.perf_counter() - t0
    return {"engine": "firepe shards", "batches_per_s": BATCHES / s, "seconds": s}


_TOK = None


def _tokenize(path: str):
    import torch
    from tokenizers import Tokenizer

    global _TOK
    if _TOK is None:
        _TOK = Tokenizer.from_file(sys.argv[3])
    try:
        text = Path(path).read_text()
    except (UnicodeDecodeError, OSError):
        return
    ids = _TOK.encode(text).ids + [_TOK.token_to_id("<|endoftext|>")]
    yield torch.tensor(ids, dtype=torch.int32)


def litdata_prepare(corpus: str, tokenizer: str, out: str) -> dict:
    from litdata import optimize
    from litdata.streaming.item_loader import TokensLoader

    files = sorted(str(p) for p in Path(corpus).rglob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.perf_counter()
    optimize(fn=_tokenize, inputs=files, output_dir=out, chunk_bytes="64MB", item_loader=TokensLoader(),
             num_workers=2, mode="overwrite")
    s = time.perf_counter() - t0
    return {"engine": "litdata optimize", "files": len(files), "seconds": s}


def litdata_read(out: str) -> dict:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    ds = StreamingDataset(input_dir=out, item_loader=TokensLoader(block_size=SEQ + 1), shuffle=True, seed=0)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=0, drop_last=True)
    t0, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
        if n == BATCHES:
            break
    s = time.perf_counter() - t0
    return {"engine": "litdata StreamingDataset", "batches_per_s": n / s, "seconds": s, "tokens": len(ds) * (SEQ + 1)}


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "firepe-read":
        print(json.dumps(firepe_read(sys.argv[2])))
    elif cmd == "litdata-prepare":
        print(json.dumps(litdata_prepare(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif cmd == "litdata-read":
        print(json.dumps(litdata_read(sys.argv[2])))
    else:
        raise SystemExit(__doc__)
