"""``firepe prepare`` and prepared folders: the streams equal packing the same documents in memory,
the manifest describes the shards, and every damaged or foreign folder is refused in one line."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from firepe.config import DataConfig, PrepareConfig
from firepe.data import (
    BPETokenizer,
    ByteTokenizer,
    PreparedData,
    build_tokenizer,
    encode_documents,
    load_corpus,
    prepare,
)
from firepe.data.shards import manifest_checksum
from tests.helpers import deny_writes, one_line_error, run_cli

#: small shards and batches, so a small corpus spans many shards
SMALL = PrepareConfig(shard_tokens=3000, batch_chars=4000, progress=False)


def _stream(folder, split="train"):
    return PreparedData(folder, verify="full").split(split).prefix()


def _in_memory(cfg, tok=None):
    corpus = load_corpus(cfg)
    tok = tok or build_tokenizer(cfg, corpus)
    return tok, encode_documents(corpus.train, tok), encode_documents(corpus.validation, tok)


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_byte_shards_equal_the_in_memory_stream(tmp_path, text_corpus):
    cfg = DataConfig(corpus=str(text_corpus), val_percent=20)
    res = prepare(tmp_path / "p", cfg, SMALL)
    _, train, val = _in_memory(cfg, ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train) and torch.equal(_stream(tmp_path / "p", "validation"), val)
    m = res["manifest"]
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 3 and m["dtype"] == "uint16" and m["complete"] and m["split"]["rule"] == "by file"
    assert sum(e["tokens"] for e in shards) == len(train) == m["splits"]["train"]["tokens"]
    assert m["splits"]["train"]["documents"] + m["splits"]["validation"]["documents"] == 40
    for e in shards:  # each shard is a raw little-endian uint16 array, memory-mappable, with the listed sums
        arr = np.memmap(tmp_path / "p" / e["file"], dtype="<u2", mode="r")
        assert len(arr) == e["tokens"] and int(arr.max()) == e["max_id"]
        assert int((arr == 256).sum()) == e["documents"]  # whole documents: each ends in EOS
        assert hashlib.sha256(arr.tobytes()).hexdigest() == e["sha256"]
    assert m["checksum"] == manifest_checksum(m)


def test_stdlib_default_prepares_the_same_stream(tmp_path):
    prepare(tmp_path / "p", DataConfig(), PrepareConfig(shard_tokens=1 << 21, progress=False))
    _, train, val = _in_memory(DataConfig(), ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train) and torch.equal(_stream(tmp_path / "p", "validation"), val)


def test_bpe_trained_like_the_in_memory_path(tmp_path, text_corpus):
    cfg = DataConfig(corpus=str(text_corpus), tokenizer="bpe", bpe_vocab_size=300, val_percent=20)
    prepare(tmp_path / "p", cfg, SMALL)
    folder = PreparedData(tmp_path / "p")
    tok, train, val = _in_memory(cfg)
    assert folder.tokenizer().identity == tok.identity  # the whole training split is under the sample limit
    assert torch.equal(folder.split("train").prefix(), train)
    assert torch.equal(folder.split("validation").prefix(), val)
    trained = folder.manifest["tokenizer"]["trained_on"]
    assert trained["documents"] == len(load_corpus(cfg).train)


def test_bpe_sample_is_bounded_and_spread(tmp_path, text_corpus):
    cfg = DataConfig(corpus=str(text_corpus), tokenizer="bpe", bpe_vocab_size=300, val_percent=20)
    res = prepare(tmp_path / "p", cfg, PrepareConfig(bpe_sample_chars=5000, progress=False))
    trained = res["manifest"]["tokenizer"]["trained_on"]
    assert 0 < trained["characters"] and trained["documents"] < 10


def test_tokenizer_json_path_and_wide_vocabularies(tmp_path, text_corpus):
    """A tokenizer.json with more than 65,536 ids gives uint32 shards; the stream is the same."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({f"pad{i}": len(vocab) + i for i in range(70_000 - len(vocab))})
    vocab[BPETokenizer.EOS] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([BPETokenizer.EOS])
    raw.save(str(tmp_path / "wide.json"))
    cfg = DataConfig(corpus=str(text_corpus), tokenizer=str(tmp_path / "wide.json"), val_percent=20)
    res = prepare(tmp_path / "p", cfg, SMALL)
    assert res["manifest"]["dtype"] == "uint32" and res["manifest"]["tokenizer"]["vocab_size"] == 70_001
    _, train, _ = _in_memory(cfg, BPETokenizer.load(tmp_path / "wide.json"))
    assert torch.equal(_stream(tmp_path / "p"), train) and int(train.max()) == 70_000


def test_within_file_split_and_caps(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i} of the only file\n" for i in range(3000)))
    cfg = DataConfig(corpus=str(one), max_train_tokens=20_000)
    res = prepare(tmp_path / "p", cfg, PrepareConfig(shard_tokens=4096, max_val_tokens=1000, progress=False))
    assert res["manifest"]["split"]["rule"] == "within files"
    _, train, val = _in_memory(DataConfig(corpus=str(one)), ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train[:20_000])  # cut at exactly the cap, as in memory
    assert torch.equal(_stream(tmp_path / "p", "validation"), val[:1000])


def _jsonl(path, n, start=0):
    path.write_text("".join(json.dumps({"text": f"document {i}: " + "words " * (i % 13 + 1)}) + "\n"
                            for i in range(start, start + n)))
    return path


def test_hf_json_by_document_and_dataset_splits(tmp_path):
    files = _jsonl(tmp_path / "a.jsonl", 300)
    cfg = DataConfig(corpus="hf:json", hf_data_files=str(files))
    res = prepare(tmp_path / "p", cfg, SMALL)
    assert res["manifest"]["split"]["rule"] == "by document"
    _, train, val = _in_memory(cfg, ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train) and torch.equal(_stream(tmp_path / "p", "validation"), val)
    # a dataset with a validation split keeps its splits (a local dataset folder: train.jsonl, validation.jsonl)
    folder = tmp_path / "ds"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", 200)
    _jsonl(folder / "validation.jsonl", 30, start=1000)
    cfg = DataConfig(corpus=f"hf:{folder}")
    res = prepare(tmp_path / "q", cfg, PrepareConfig(shard_tokens=3000, batch_chars=4000, max_val_tokens=500,
                                                     progress=False))
    assert res["manifest"]["split"]["rule"] == "dataset splits"
    corpus = load_corpus(cfg)
    assert corpus.split == "dataset splits"
    tok = ByteTokenizer()
    assert torch.equal(_stream(tmp_path / "q"), encode_documents(corpus.train, tok))
    assert torch.equal(_stream(tmp_path / "q", "validation"), encode_documents(corpus.validation, tok)[:500])


def test_hf_tiny_dataset_falls_back_to_within_documents(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "".join(f"line {i}\n" for i in range(200))}) + "\n")
    cfg = DataConfig(corpus="hf:json", hf_data_files=str(one))
    res = prepare(tmp_path / "p", cfg, SMALL)
    assert res["manifest"]["split"]["rule"] == "within documents"
    _, train, val = _in_memory(cfg, ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train) and torch.equal(_stream(tmp_path / "p", "validation"), val)


def test_hf_parquet_and_a_tiny_dataset_with_bpe(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i}: " + "tokens " * (i % 9 + 1) for i in range(120)]}),
                   tmp_path / "a.parquet")
    cfg = DataConfig(corpus="hf:parquet", hf_data_files=str(tmp_path / "a.parquet"))
    prepare(tmp_path / "p", cfg, SMALL)
    _, train, val = _in_memory(cfg, ByteTokenizer())
    assert torch.equal(_stream(tmp_path / "p"), train) and torch.equal(_stream(tmp_path / "p", "validation"), val)
    # one document only: the BPE is trained on its training part, as the in-memory path trains it
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "".join(f"line {i} of one\n" for i in range(300))}) + "\n")
    cfg = DataConfig(corpus="hf:json", hf_data_files=str(one), tokenizer="bpe", bpe_vocab_size=300)
    res = prepare(tmp_path / "q", cfg, SMALL)
    assert res["manifest"]["split"]["rule"] == "within documents"
    tok, train, val = _in_memory(cfg)
    assert PreparedData(tmp_path / "q").tokenizer().identity == tok.identity
    assert torch.equal(_stream(tmp_path / "q"), train) and torch.equal(_stream(tmp_path / "q", "validation"), val)


def test_ctrl_c_keeps_the_shards_and_says_how_to_continue(tmp_path, text_corpus, capsys, monkeypatch):
    import firepe.data.preparation as P

    real, calls = P._ShardWriter.close, [0]

    def interrupted(self, nxt):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(self, nxt)

    monkeypatch.setattr(P._ShardWriter, "close", interrupted)
    argv = _prepare_cmd(text_corpus, tmp_path / "p")
    capsys.readouterr()
    assert run_cli(argv) == 130
    assert capsys.readouterr().err == ("firepe: interrupted; the shards completed so far are kept (run the same "
                                       "command again to continue).\n")
    kept = _manifest(tmp_path / "p")
    assert not kept["complete"] and sum(len(kept["splits"][s]["shards"]) for s in ("train", "validation")) == 2
    monkeypatch.setattr(P._ShardWriter, "close", real)
    assert run_cli(argv) == 0
    assert run_cli(_prepare_cmd(text_corpus, tmp_path / "ref")) == 0
    assert _manifest(tmp_path / "p") == _manifest(tmp_path / "ref")


# -- kill -9 and resume ---------------------------------------------------------------------------

_KILLER = textwrap.dedent("""
    import os, signal, sys
    target, nth = sys.argv[1], int(sys.argv[2])
    import firepe.data.preparation as P
    import firepe.runs as R
    calls = [0]
    def hook(real):
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        return wrapped
    if target == "shard_close":
        P._ShardWriter.close = hook(P._ShardWriter.close)
    elif target == "manifest":
        P.write_json = hook(P.write_json)
    elif target == "rename":
        P.os.replace = hook(os.replace)
    elif target == "write":
        P.os.write = hook(os.write)
    from firepe.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _prepare_cmd(corpus, out, *extra):
    return ["prepare", "--corpus", str(corpus), "--out", str(out), "--shard-tokens", "3000", "--batch-chars", "4000",
            "--val-percent", "20", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted byte and BPE preparation of one corpus (the kill tests must end in the same folders)."""
    root = tmp_path_factory.mktemp("ref")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(40):
        (corpus / f"f{k:02d}.py").write_text(f"def f(x):\n    return x * {k}\n" * (20 + k))
    for tok in ("byte", "bpe"):
        assert run_cli(_prepare_cmd(corpus, root / tok, "--tokenizer", tok, "--bpe-vocab-size", "300")) == 0
    return corpus, root


@pytest.mark.parametrize("target,nth", [("shard_close", 1), ("shard_close", 4), ("manifest", 1), ("manifest", 3),
                                        ("rename", 2), ("rename", 5), ("write", 7)])
@pytest.mark.parametrize("tok", ["byte", "bpe"])
def test_kill_9_at_chosen_lines_then_the_same_command_finishes_the_same_folder(tmp_path, reference, target, nth,
                                                                                tok):
    corpus, root = reference
    out = tmp_path / "p"
    argv = _prepare_cmd(corpus, out, "--tokenizer", tok, "--bpe-vocab-size", "300")
    proc = subprocess.run([sys.executable, "-c", _KILLER, target, str(nth), *argv], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    if out.exists() and (out / "manifest.json").exists():  # the interrupted folder is never read as data
        with pytest.raises(ValueError, match="not completely prepared"):
            PreparedData(out)
    assert run_cli(argv) == 0
    assert _manifest(out) == _manifest(root / tok)  # byte for byte what an uninterrupted run wrote
    PreparedData(out, verify="full")
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(p.name for p in (root / tok / "train").iterdir())


def test_kill_9_at_random_moments(tmp_path, reference):
    corpus, root = reference
    out = tmp_path / "p"
    argv = [sys.executable, "-m", "firepe", *_prepare_cmd(corpus, out, "--tokenizer", "bpe", "--bpe-vocab-size", "300")]
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=float(rng.uniform(0.5, 2.5)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert _manifest(out) == _manifest(root / "bpe")
    PreparedData(out, verify="full")


def test_rerun_of_a_finished_folder_verifies_and_repairs_it(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(12):
        (corpus / f"f{k:02d}.txt").write_text(f"paragraph {k} " * 3000)
    out, ref = tmp_path / "p", tmp_path / "ref"
    argv = ["prepare", "--corpus", corpus, "--shard-tokens", "100000", "--batch-chars", "50000", "--no-progress"]
    assert run_cli(argv + ["--out", ref]) == 0
    shutil.copytree(ref, out)
    capsys.readouterr()
    assert run_cli(argv + ["--out", out]) == 0
    assert "already prepared; every shard verified" in capsys.readouterr().out
    shard = out / "train" / "000001.bin"
    data = bytearray(shard.read_bytes())
    assert len(data) > 4 * (1 << 16)
    data[len(data) // 2] ^= 1  # a flipped bit in the middle: only the full check sees it
    shard.write_bytes(bytes(data))
    PreparedData(out)  # the quick check reads sizes and edges only
    with pytest.raises(ValueError, match=r"000001\.bin is damaged \(its sha256 differs"):
        PreparedData(out, verify="full")
    with pytest.warns(UserWarning, match=r"000001\.bin is damaged .*; preparing it again from there"):
        assert run_cli(argv + ["--out", out]) == 0  # prepares it again from the damaged shard on
    assert _manifest(out) == _manifest(ref) and shard.read_bytes() == (ref / "train" / "000001.bin").read_bytes()
    PreparedData(out, verify="full")


# -- refusals ------------------------------------------------------------------------------------


def test_output_folder_refusals(tmp_path, text_corpus, capsys):
    base = ["prepare", "--corpus", text_corpus, "--no-progress", "--out"]
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, base + [tmp_path / "file"], "existing file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    one_line_error(capsys, base + [tmp_path / "other"], r"holds 'notes\.txt', which firepe prepare did not write")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one_line_error(capsys, base + [tmp_path / "link"], "symbolic link")
    assert not list((tmp_path / "real").iterdir())
    one_line_error(capsys, base + [text_corpus / "prepared"], "inside the corpus")
    assert not (text_corpus / "prepared").exists()
    one_line_error(capsys, base + [""], "empty")


def test_links_inside_a_prepared_folder_are_refused(tmp_path, text_corpus, capsys):
    out = tmp_path / "p"
    argv = ["prepare", "--corpus", text_corpus, "--no-progress", "--out", out, "--shard-tokens", "3000",
            "--batch-chars", "4000"]
    assert run_cli(argv) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "validation").rename(tmp_path / "moved")
    (out / "validation").symlink_to(outside)
    one_line_error(capsys, argv, "symbolic link")
    with pytest.raises(ValueError, match="symbolic link"):
        PreparedData(out)
    assert not list(outside.iterdir())


def test_settings_and_corpus_changes_are_refused(tmp_path, text_corpus, capsys):
    out = tmp_path / "p"
    argv = ["prepare", "--corpus", text_corpus, "--no-progress", "--out", out]
    assert run_cli(argv) == 0
    before = _manifest(out)
    one_line_error(capsys, argv + ["--tokenizer", "bpe"], r"other settings \(tokenizer 'byte' \(folder\) != 'bpe'")
    one_line_error(capsys, argv + ["--val-percent", "7"], "val_percent")
    assert _manifest(out) == before
    # an interrupted folder whose corpus files changed before the rerun
    data = _manifest(out)
    data["complete"] = False
    data["checksum"] = manifest_checksum(data)
    (out / "manifest.json").write_text(json.dumps(data))
    (text_corpus / "file00.py").write_text("changed\n")
    one_line_error(capsys, argv, "changed since")


@pytest.mark.parametrize("flag,value,match", [
    ("--shard-tokens", "0", "shard_tokens must be an integer >= 1"),
    ("--shard-tokens", "-5", "shard_tokens must be an integer >= 1"),
    ("--shard-tokens", str(1 << 40), "shard_tokens must be at most"),
    ("--shard-tokens", "1e3", "expected an integer"),
    ("--max-val-tokens", "0", "max_val_tokens must be an integer >= 1"),
    ("--bpe-sample-chars", "-1", "bpe_sample_chars must be an integer >= 1"),
    ("--batch-chars", "0", "batch_chars must be an integer >= 1"),
    ("--val-percent", "0", "val_percent must be an integer from 1 to 99"),
    ("--val-percent", "nan", "expected an integer"),
    ("--max-train-tokens", "0", "max_train_tokens must be None or a positive integer"),
    ("--tokenizer", "words", "unknown tokenizer"),
    ("--corpus", "", "corpus is empty"),
    ("--bpe-vocab-size", "100", "bpe_vocab_size must be an integer above 257"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, text_corpus, capsys, flag, value, match):
    one_line_error(capsys, ["prepare", "--corpus", text_corpus, "--out", tmp_path / "p", "--no-progress", flag, value],
                   match)
    assert not (tmp_path / "p").exists()


def test_empty_and_unreadable_corpora_leave_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("  \n")
    (empty / "binary.bin").write_bytes(b"\xff\xfe\x00garbage")
    one_line_error(capsys, ["prepare", "--corpus", empty, "--out", tmp_path / "p"], "no non-empty UTF-8 text")
    assert not (tmp_path / "p").exists()
    one_line_error(capsys, ["prepare", "--corpus", tmp_path / "missing", "--out", tmp_path / "p"], "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 5}\n')
    one_line_error(capsys, ["prepare", "--corpus", "hf:json", "--hf-data-files", bad, "--out", tmp_path / "p",
                            "--no-progress"], "holds int, not text")
    assert not (tmp_path / "p").exists()
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\xff\xfe{not json\n")
    one_line_error(capsys, ["prepare", "--corpus", "hf:json", "--hf-data-files", garbage, "--out", tmp_path / "p",
                            "--no-progress"], "could not (load|read)")
    assert not (tmp_path / "p").exists()


def test_two_processes_on_one_folder(tmp_path, text_corpus, capsys):
    from firepe.runs import RunFolder

    out = tmp_path / "p"
    out.mkdir()
    holder = RunFolder(out, noun="prepared data folder")
    holder.lock()
    try:
        one_line_error(capsys, ["prepare", "--corpus", text_corpus, "--out", out], "prepared data folder .* is in use")
    finally:
        holder.unlock()
    assert run_cli(["prepare", "--corpus", text_corpus, "--out", out, "--no-progress"]) == 0


def test_full_disk_is_one_line_and_the_rerun_finishes(tmp_path, text_corpus, capsys, monkeypatch):
    import firepe.data.preparation as P

    real, calls = os.write, [0]

    def full(fd, data):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(P.os, "write", full)
    argv = _prepare_cmd(text_corpus, tmp_path / "p")
    one_line_error(capsys, argv, r"cannot write .*\.bin\.tmp-\d+: No space left on device")
    monkeypatch.setattr(P.os, "write", real)
    assert run_cli(argv) == 0
    ref = tmp_path / "ref"
    assert run_cli(_prepare_cmd(text_corpus, ref)) == 0
    assert _manifest(tmp_path / "p") == _manifest(ref)


def test_read_only_output_folder(tmp_path, text_corpus, capsys, monkeypatch):
    out = tmp_path / "p"
    out.mkdir()
    deny_writes(monkeypatch, out)
    one_line_error(capsys, ["prepare", "--corpus", text_corpus, "--out", out], "Permission denied")
