"""Training, resuming and evaluating from a prepared folder (``--data DIR``): the same results as the
in-memory corpus, bit-exact resume, and one line for every damaged or mismatched folder."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import firepe.data.corpus as corpus_mod
from firepe.config import DataConfig, GPTConfig, PrepareConfig, TrainConfig
from firepe.data import ByteTokenizer, encoded_stream, load_corpus, prepare, split_tokens
from firepe.data.shards import manifest_checksum
from firepe.tasks.passkey import corpus_filler
from firepe.train import Trainer
from tests.helpers import ddp_env, free_port, one_line_error, run_cli

TRAIN = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "4", "--no-progress", "--val-tokens", "512",
         "--checkpoint-every", "3"]


@pytest.fixture
def prepared(tmp_path, text_corpus):
    out = tmp_path / "prepared"
    prepare(out, DataConfig(corpus=str(text_corpus), val_percent=20),
            PrepareConfig(shard_tokens=3000, batch_chars=4000, progress=False))
    return out


def _losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_data_trains_and_evaluates_exactly_as_the_corpus(tmp_path, text_corpus, prepared, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["train", "--out", a, "--corpus", text_corpus, "--val-percent", "20", "--steps", "6",
                    "--log-every", "1", *TRAIN]) == 0
    capsys.readouterr()
    assert run_cli(["train", "--out", b, "--data", prepared, "--steps", "6", "--log-every", "1", *TRAIN]) == 0
    out = capsys.readouterr().out
    assert "prepared data" in out and "distinct training tokens" in out and "epochs" in out
    assert _losses(a) == _losses(b)
    saved = json.loads((b / "config.json").read_text())["data"]
    assert saved["data"] == str(prepared) and saved["corpus"] == str(text_corpus) and saved["tokenizer"] == "byte"
    assert saved["data_checksum"] == json.loads((prepared / "manifest.json").read_text())["checksum"]
    for run in (a, b):
        assert run_cli(["eval", run, "--lengths", "32,64", "--no-progress", "--val-tokens", "512"]) == 0
    assert json.loads((a / "eval.json").read_text())["results"] == json.loads((b / "eval.json").read_text())["results"]


def test_split_tokens_and_passkey_filler_read_the_prepared_splits(text_corpus, prepared):
    mem = DataConfig(corpus=str(text_corpus), val_percent=20)
    disk = DataConfig(data=str(prepared))
    tok = ByteTokenizer()
    corpus = load_corpus(mem)
    for split in ("train", "validation"):
        assert torch.equal(split_tokens(disk, tok, split, 700), encoded_stream(getattr(corpus, split), tok, 700))
        assert corpus_filler(disk, tok, split) == corpus_filler(mem, tok, split)


def test_resume_from_prepared_data_is_bit_exact(tmp_path, prepared):
    def cfgs(steps):
        return (GPTConfig(n_layer=1, n_head=2, d_model=32, position="fire"),
                TrainConfig(seq_len=32, batch_size=4, steps=steps, checkpoint_every=3, log_every=1, progress=False),
                DataConfig(data=str(prepared)))

    full = Trainer(tmp_path / "full", *cfgs(8))
    full_losses = full.fit()

    class Stop(Exception):
        pass

    def stop(step, loss):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        Trainer(tmp_path / "cut", *cfgs(8)).fit(callback=stop)
    resumed = Trainer(tmp_path / "cut", resume=True)
    assert resumed.step == 3
    assert resumed.fit() == full_losses[3:]


def test_epochs_warning(tmp_path, prepared):
    model = GPTConfig(n_layer=1, n_head=2, d_model=32, position="nope")
    with pytest.warns(UserWarning, match=r"reads its [\d,]+ training tokens [\d.]+ times"):
        t = Trainer(tmp_path / "r", model, TrainConfig(seq_len=32, batch_size=64, steps=1000, progress=False),
                    DataConfig(data=str(prepared)))
    assert "epochs" in t.data_summary
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tmp_path / "s", model, TrainConfig(seq_len=32, batch_size=2, steps=2, progress=False),
                DataConfig(data=str(prepared)))


def _edit_manifest(folder, change):
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    data["checksum"] = manifest_checksum(data)
    (folder / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("damage,match", [
    ("truncate", r"000001\.bin is [\d,]+ bytes but the manifest says"),
    ("swap", r"does not hold the tokens the manifest lists"),
    ("delete", r"000002\.bin is missing"),
    ("edit", r"was edited or damaged \(its checksum"),
    ("garbage", r"manifest\.json is not valid JSON"),
    ("other-tokenizer", r"tokenizer\.json is missing|cannot read tokenizer|not the tokenizer"),
    ("id-past-vocab", r"holds id 300, past the tokenizer's vocabulary of 257"),
    ("incomplete", r"not completely prepared"),
    ("link", r"symbolic link"),
    ("fifo", r"not a regular file"),
])
def test_damaged_prepared_data_is_one_line_and_writes_nothing(tmp_path, prepared, capsys, damage, match):
    train = prepared / "train"
    if damage == "truncate":
        (train / "000001.bin").write_bytes((train / "000001.bin").read_bytes()[:-2])
    elif damage == "swap":
        a, b = (train / "000001.bin").read_bytes(), (train / "000002.bin").read_bytes()
        assert len(a) != len(b) or a != b
        (train / "000001.bin").write_bytes(b[: len(a)] + a[len(b):] if len(b) >= len(a) else b + a[len(b):])
    elif damage == "delete":
        (train / "000002.bin").unlink()
    elif damage == "edit":
        text = (prepared / "manifest.json").read_text()
        (prepared / "manifest.json").write_text(text.replace('"identity": "byte"', '"identity": "bpe"'))
    elif damage == "garbage":
        (prepared / "manifest.json").write_bytes(b"\x00\xff{")
    elif damage == "other-tokenizer":
        _edit_manifest(prepared, lambda m: m["tokenizer"].update(identity="bpe:sha256:" + "0" * 64))
    elif damage == "id-past-vocab":
        _edit_manifest(prepared, lambda m: m["splits"]["train"]["shards"][0].update(max_id=300))
    elif damage == "incomplete":
        _edit_manifest(prepared, lambda m: m.update(complete=False))
    elif damage == "link":
        (train / "000001.bin").rename(tmp_path / "moved.bin")
        (train / "000001.bin").symlink_to(tmp_path / "moved.bin")
    elif damage == "fifo":
        (train / "000001.bin").unlink()
        os.mkfifo(train / "000001.bin")
    one_line_error(capsys, ["train", "--out", tmp_path / "run", "--data", prepared, "--steps", "2", *TRAIN], match)
    assert not (tmp_path / "run").exists()


def test_ids_past_the_vocabulary_inside_a_shard(tmp_path):
    """A damaged middle of a shard (past the 64 KiB edges the quick check reads) is caught by the window read."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(20):
        (corpus / f"f{k:02d}.txt").write_text(f"text {k} " * 3000)
    out = tmp_path / "p"
    prepare(out, DataConfig(corpus=str(corpus), val_percent=20), PrepareConfig(progress=False))
    shard = out / "train" / "000000.bin"
    arr = np.fromfile(shard, dtype="<u2")
    assert len(arr) > 3 * (1 << 16)
    arr[len(arr) // 2] = 40_000
    arr.tofile(shard)
    with pytest.raises(ValueError, match=r"holds token id 40000 at position [\d,]+ of its train split, past the "
                                         r"vocabulary of 257"):
        split_tokens(DataConfig(data=str(out)), ByteTokenizer(), "train", len(arr))


def test_a_prepared_again_folder_is_refused_on_resume_and_eval(tmp_path, text_corpus, prepared, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", "--out", run, "--data", prepared, "--steps", "3", *TRAIN]) == 0
    shutil.rmtree(prepared)
    assert run_cli(["prepare", "--corpus", text_corpus, "--out", prepared, "--tokenizer", "bpe", "--bpe-vocab-size",
                    "300", "--no-progress"]) == 0
    one_line_error(capsys, ["train", "--out", run, "--resume", "--steps", "6", "--no-progress"],
                   "prepared again since this run started")
    one_line_error(capsys, ["eval", run, "--lengths", "32", "--no-progress"], "prepared again since this run started")
    assert _losses(run)[-1][0] == 3


def test_data_refuses_conflicting_corpus_flags(tmp_path, text_corpus, prepared, capsys):
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--data", prepared, "--tokenizer", "bpe", *TRAIN],
                   r"--data .* fixes tokenizer \('byte'\); leave --tokenizer out")
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--data", prepared, "--corpus", "stdlib,x", *TRAIN],
                   "fixes corpus")
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--data", tmp_path / "none", *TRAIN], "does not exist")
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--data", text_corpus, *TRAIN], "holds no manifest.json")
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--data", "", *TRAIN], "data must be None or the path")
    one_line_error(capsys, ["prepare", "--out", tmp_path / "q", "--data", prepared], "unrecognized arguments")
    assert not (tmp_path / "r").exists()


def test_compare_with_prepared_data_reuses_its_runs(tmp_path, prepared, capsys):
    argv = ["compare", "--out", tmp_path / "cmp", "--encodings", "nope,fire", "--data", prepared, "--preset", "tiny",
            "--seq-len", "32", "--batch-size", "4", "--steps", "2", "--lengths", "32", "--val-tokens", "256",
            "--no-progress"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    assert run_cli(argv) == 0
    assert capsys.readouterr().out.count("already trained, reusing") == 2


def test_in_memory_corpora_have_a_documented_limit(tmp_path, text_corpus, monkeypatch, capsys):
    monkeypatch.setattr(corpus_mod, "MAX_IN_MEMORY_TEXT", 1000)
    one_line_error(capsys, ["train", "--out", tmp_path / "r", "--corpus", text_corpus, *TRAIN],
                   r"MiB of files, more than the 0 MiB firepe reads into memory; prepare it once with firepe prepare")


def test_hf_in_memory_cap_is_said(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": "x" * 100}) + "\n" for _ in range(50)))
    with pytest.warns(UserWarning, match=r"took the first 4 documents \(400 characters\) of hf:json"):
        corpus = load_corpus(DataConfig(corpus="hf:json", hf_data_files=str(path), max_train_tokens=100))
    assert len(corpus.train) == 4  # each of the 4 documents split within (too few to hold documents out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_corpus(DataConfig(corpus="hf:json", hf_data_files=str(path)))


def _ddp_worker(rank, world, port, run_dir, data, out):
    ddp_env(rank, world, port)
    import torch.distributed as dist

    from firepe.train import process_group

    with process_group():
        trainer = Trainer(run_dir, GPTConfig(n_layer=1, n_head=2, d_model=32, position="fire"),
                          TrainConfig(seq_len=32, batch_size=4, steps=2, progress=False), DataConfig(data=str(data)))
        x, _ = trainer.local_batch(0)
        trainer.forward_backward(0)
        torch.save({"x": x, **{n: p.grad.clone() for n, p in trainer.model.named_parameters()}},
                   out / f"rank{rank}.pt")
        dist.barrier()
        del trainer


def test_ddp_ranks_read_disjoint_rows_of_one_batch(tmp_path, prepared):
    single = Trainer(tmp_path / "single", GPTConfig(n_layer=1, n_head=2, d_model=32, position="fire"),
                     TrainConfig(seq_len=32, batch_size=4, steps=2, progress=False), DataConfig(data=str(prepared)))
    x, _ = single.local_batch(0)
    single.forward_backward(0)
    mp.spawn(_ddp_worker, args=(2, free_port(), tmp_path / "ddp", prepared, tmp_path), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert torch.equal(got[0]["x"], x[0::2]) and torch.equal(got[1]["x"], x[1::2])
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(got[0][name], p.grad, rtol=1e-4, atol=1e-6)
