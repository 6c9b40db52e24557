"""Run folders under damage and concurrency: schema checks, lock, torn logs, pruning, write failures."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from firepe.checkpoint import latest_checkpoint, save_checkpoint
from firepe.config import DataConfig, TrainConfig, check_fields, preset
from firepe.loading import load_run
from firepe.model import GPT
from firepe.runs import MetricsLog, RunFolder
from firepe.train import Trainer, build_optimizer
from tests.helpers import deny_writes


def cfgs(corpus, position="alibi", steps=4, **train):
    model = preset("tiny", position=position)
    t = TrainConfig(seq_len=16, batch_size=4, steps=steps, lr=3e-3, warmup_steps=1, progress=False,
                    checkpoint_every=train.pop("checkpoint_every", 2), log_every=1, **train)
    return model, t, DataConfig(corpus=str(corpus), val_tokens=512)


@pytest.fixture
def run(tmp_path, text_corpus):
    Trainer(tmp_path / "r", *cfgs(text_corpus)).fit()
    return tmp_path / "r"


def _ckpt(run):
    return latest_checkpoint(run)


# -- damaged checkpoints and configs: one sentence naming the file ---------------------------------

def _drop_tensor(run):
    f = _ckpt(run) / "model.safetensors"
    t = load_file(f)
    t.pop(sorted(t)[0])
    save_file(t, f)


def _extra_tensor(run):
    f = _ckpt(run) / "model.safetensors"
    save_file({**load_file(f), "extra.weight": torch.zeros(3)}, f)


def _int32_tensor(run):
    f = _ckpt(run) / "model.safetensors"
    t = load_file(f)
    k = next(k for k in sorted(t) if t[k].dim() == 2)
    t[k] = t[k].to(torch.int32)
    save_file(t, f)


def _shape(run):
    f = _ckpt(run) / "model.safetensors"
    t = load_file(f)
    k = next(k for k in sorted(t) if t[k].dim() == 2)
    t[k] = t[k][:-1]
    save_file(t, f)


def _json(name, value):
    def damage(run):
        (_ckpt(run) / name).write_text(value)
    return damage


def _rng(run):
    save_file({"torch_cpu_rng": torch.zeros(7, dtype=torch.uint8)}, _ckpt(run) / "rng.safetensors")


def _config(edit):
    def damage(run):
        path = run / "config.json"
        cfg = json.loads(path.read_text())
        edit(cfg)
        path.write_text(json.dumps(cfg))
    return damage


def _latest(kind):
    def damage(run):
        p = run / "checkpoints" / "latest"
        p.unlink()
        if kind == "dir":
            p.mkdir()
        elif kind == "binary":
            p.write_bytes(b"\xff\xfe\x00garbage")
        elif kind == "empty":
            p.write_text("")
        elif kind == "escape":
            p.write_text("../../etc")
    return damage


DAMAGE = {
    "missing tensor": (_drop_tensor, "model.safetensors does not match: missing"),
    "extra tensor": (_extra_tensor, "unexpected \\['extra.weight'\\]"),
    "int32 tensor": (_int32_tensor, "is I32 .* expected F32"),
    "shape mismatch": (_shape, r"expected F32 \[\d+, \d+\]"),
    "optimizer.json {}": (_json("optimizer.json", "{}"), "optimizer.json does not describe"),
    "state.json no step": (_json("state.json", '{"loss": 1.0}'), "state.json must hold"),
    "state.json step string": (_json("state.json", '{"step": "4"}'), "state.json must hold"),
    "state.json step -5": (_json("state.json", '{"step": -5}'), "state.json must hold"),
    "rng wrong size": (_rng, "rng.safetensors: tensor torch_cpu_rng is U8 \\[7\\]"),
    "no train section": (_config(lambda c: c.pop("train")), "no 'train' section"),
    "no data section": (_config(lambda c: c.pop("data")), "no 'data' section"),
    "steps a string": (_config(lambda c: c["train"].update(steps="30")), "steps must be an integer"),
    "lr a bool": (_config(lambda c: c["train"].update(lr=True)), "lr must be a finite number"),
    "latest a folder": (_latest("dir"), "latest is not a file"),
    "latest binary": (_latest("binary"), "does not name a checkpoint folder"),
    "latest empty": (_latest("empty"), "does not name a checkpoint folder"),
    "latest escapes": (_latest("escape"), "does not name a checkpoint folder"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_folder_is_one_clear_error_for_resume_and_load(run, case):
    damage, match = DAMAGE[case]
    damage(run)
    with pytest.raises(ValueError, match=match) as e:
        Trainer(run, resume=True)
    assert "\n" not in str(e.value)
    if "optimizer" in case or "rng" in case:  # eval/generate read the model only
        load_run(run)
    else:
        with pytest.raises(ValueError, match=match):
            load_run(run)


def test_another_tokenizer_in_a_bpe_run_is_refused(tmp_path, text_corpus):
    from firepe.data import BPETokenizer
    from firepe.evaluate import evaluate_run

    model, t, d = cfgs(text_corpus)
    d.tokenizer, d.bpe_vocab_size = "bpe", 300
    Trainer(tmp_path / "r", model, t, d).fit()
    BPETokenizer.train(["def f(x): return x"] * 50, 280).save(tmp_path / "r" / "tokenizer.json")
    with pytest.raises(ValueError, match="holds another tokenizer"):
        evaluate_run(tmp_path / "r", [16], progress=False)
    with pytest.raises(ValueError, match="holds another tokenizer"):
        Trainer(tmp_path / "r", resume=True)


def test_check_fields_names_key_and_type():
    with pytest.raises(ValueError, match="X: micro_batch_size must be an integer or null"):
        check_fields(TrainConfig, {"micro_batch_size": 2.5}, "X")
    with pytest.raises(ValueError, match="unknown key"):
        check_fields(TrainConfig, {"stepz": 3}, "X")
    check_fields(TrainConfig, {"steps": 3, "betas": [0.9, 0.95], "micro_batch_size": None}, "X")


# -- stuck, torn, racing -------------------------------------------------------------------------

def test_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, text_corpus):
    full = Trainer(tmp_path / "a", *cfgs(text_corpus, steps=3, checkpoint_every=100)).fit()

    def crash(step, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "b", *cfgs(text_corpus, steps=3, checkpoint_every=100)).fit(callback=crash)
    assert latest_checkpoint(tmp_path / "b") is None
    resumed = Trainer(tmp_path / "b", resume=True)
    assert resumed.step == 0
    assert resumed.fit() == full
    assert [r["step"] for r in MetricsLog(tmp_path / "b" / "metrics.jsonl").rows()] == [1, 2, 3]


def test_torn_metrics_line_heals_on_resume(run):
    path = run / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 5, "lo')
    Trainer(run, resume=True, changes={"steps": 6}).fit()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_garbage_metrics_line_in_the_middle_is_named(run):
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl line 2"):
        Trainer(run, resume=True)


def test_resume_stores_the_new_step_budget(run):
    Trainer(run, resume=True, changes={"steps": 6}).fit()
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6
    again = Trainer(run, resume=True)
    assert again.cfg.steps == 6 and again.step == 6


def test_resume_refuses_settings_that_define_the_run(run):
    with pytest.raises(ValueError, match="lr cannot change"):
        Trainer(run, resume=True, changes={"lr": 0.1})


def test_pruning_compares_step_numbers_not_names(tmp_path):
    model = GPT(preset("tiny", position="nope"))
    opt = build_optimizer(model, TrainConfig())
    for step in (9_999_998, 9_999_999, 10_000_000):
        save_checkpoint(tmp_path, step, model, opt, {"loss": 1.0}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-10000000"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-10000000", "step-9999999"]


def test_pruning_never_deletes_newer_checkpoints_than_the_one_written(tmp_path):
    model = GPT(preset("tiny", position="nope"))
    opt = build_optimizer(model, TrainConfig())
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, model, opt, {"loss": 1.0}, keep=1)
    save_checkpoint(tmp_path, 3, model, opt, {"loss": 1.0}, keep=1)  # resumed from an older one
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    assert (tmp_path / "checkpoints" / "step-0000006").is_dir()


def test_lock_refuses_a_second_process_on_the_same_folder(run, text_corpus):
    first = Trainer(run, resume=True, changes={"steps": 6})
    with pytest.raises(ValueError, match="in use by another firepe process"):
        Trainer(run, resume=True, changes={"steps": 8})
    child = subprocess.run([sys.executable, "-m", "firepe", "train", "--out", str(run), "--resume",
                            "--no-progress"], capture_output=True, text=True)
    assert child.returncode == 2 and "in use by another firepe process (pid" in child.stderr
    first.fit()
    assert Trainer(run, resume=True, changes={"steps": 7}).fit()  # released after fit


def test_lock_refuses_two_new_runs_in_one_folder(tmp_path, text_corpus):
    first = Trainer(tmp_path / "r", *cfgs(text_corpus, position="rope"))
    with pytest.raises(ValueError, match="in use"):
        Trainer(tmp_path / "r", *cfgs(text_corpus, position="fire"))
    first.fit()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["position"] == "rope"


def test_leftover_temporaries_are_cleaned_at_the_next_start(run):
    junk = [run / "checkpoints" / ".tmp-step-0000009-123", run / ".config.json.tmp-99"]
    junk[0].mkdir()
    junk[1].write_text("x")
    Trainer(run, resume=True, changes={"steps": 5}).fit()
    assert not any(p.exists() for p in junk)


def test_nonfinite_weights_are_never_checkpointed(run):
    before = latest_checkpoint(run)
    trainer = Trainer(run, resume=True, changes={"steps": 6})
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 5"):
        trainer.fit()
    assert latest_checkpoint(run) == before
    model = GPT(preset("tiny", position="alibi"))
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        save_checkpoint(run, 99, model, build_optimizer(model, TrainConfig()), {})
    assert latest_checkpoint(run) == before


def test_eval_and_generate_refuse_nonfinite_checkpoints(run):
    from safetensors.torch import save_model

    model, _ = load_run(run)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    save_model(model, str(_ckpt(run) / "model.safetensors"))
    with pytest.raises(ValueError, match="non-finite weights.*NaN or inf"):
        load_run(run)


# -- write failures -----------------------------------------------------------------------------

_FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from firepe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(run):
    before = latest_checkpoint(run)
    weights = (before / "model.safetensors").read_bytes()
    child = subprocess.run([sys.executable, "-c", _FSIZE_CHILD.format(limit=20_000), "train", "--out", str(run),
                            "--resume", "--steps", "8", "--no-progress"], capture_output=True, text=True)
    assert child.returncode == 2, child.stderr
    assert child.stderr.startswith("firepe: error: cannot write") and child.stderr.count("\n") == 1, child.stderr
    assert "File too large" in child.stderr
    assert latest_checkpoint(run) == before and (before / "model.safetensors").read_bytes() == weights
    assert not list((run / "checkpoints").glob(".tmp*"))
    Trainer(run, resume=True, changes={"steps": 8}).fit()  # and the run goes on afterwards


def test_read_only_run_folder_for_training(run, monkeypatch):
    deny_writes(monkeypatch, run)
    with pytest.raises(ValueError, match=r"cannot write .*\.lock: Permission denied"):
        Trainer(run, resume=True, changes={"steps": 6})


def test_run_folder_path_checks(tmp_path, text_corpus):
    with pytest.raises(ValueError, match="path is empty"):
        RunFolder("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        Trainer(tmp_path / "file", *cfgs(text_corpus))


def test_metrics_truncation_killed_at_the_rename_loses_nothing(run, monkeypatch):
    path = run / "metrics.jsonl"
    before = path.read_text()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsLog(path).truncate(2)
    assert path.read_text() == before
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_checkpoint_files_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    model = GPT(preset("tiny", position="nope"))
    final = save_checkpoint(tmp_path, 1, model, build_optimizer(model, TrainConfig()), {"loss": 1.0})
    names = {os.path.basename(p) for p in synced}
    assert {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "checkpoints"} <= names
    assert any(p.endswith(".latest.tmp-" + str(os.getpid())) or p.endswith("latest") for p in synced)
    assert final.is_dir()


@pytest.mark.parametrize("delay", [2.5, 4.0])
def test_kill_9_during_training_never_leaves_a_stuck_or_torn_folder(tmp_path, text_corpus, delay):
    import signal
    import time

    run = tmp_path / "r"
    argv = [sys.executable, "-m", "firepe", "train", "--out", str(run), "--position", "alibi", "--preset", "tiny",
            "--seq-len", "16", "--batch-size", "4", "--steps", "400", "--checkpoint-every", "1", "--log-every", "1",
            "--no-progress", "--corpus", str(text_corpus)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = argv  # killed before config.json existed: the folder must accept a fresh start
    if (run / "config.json").exists():
        again = argv[:argv.index("--position")] + ["--resume", "--steps", "400", "--no-progress"]
    resumed = subprocess.run(again, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "to step 400" in resumed.stdout
    steps = [r["step"] for r in MetricsLog(run / "metrics.jsonl").rows()]
    assert steps == list(range(1, 401))
