import json

import pytest
import torch
import torch.multiprocessing as mp

from firepe.checkpoint import latest_checkpoint
from firepe.config import DataConfig, TrainConfig, preset
from firepe.loading import load_run
from firepe.train import Trainer, lr_at
from tests.helpers import ddp_env, free_port


def cfgs(corpus, position="fire", steps=8, **train):
    model = preset("tiny", position=position)
    t = TrainConfig(seq_len=32, batch_size=8, steps=steps, lr=3e-3, warmup_steps=2, progress=False,
                    checkpoint_every=train.pop("checkpoint_every", 100), log_every=1, **train)
    return model, t, DataConfig(corpus=str(corpus), val_tokens=2048)


def test_loss_falls(tmp_path, text_corpus):
    trainer = Trainer(tmp_path / "run", *cfgs(text_corpus, steps=40))
    losses = trainer.fit()
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and rows[-1]["tokens_per_s"] > 0
    assert (latest_checkpoint(tmp_path / "run") / "model.safetensors").exists()


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_resume_after_interruption_gives_same_losses(tmp_path, text_corpus):
    full = Trainer(tmp_path / "a", *cfgs(text_corpus, steps=10, checkpoint_every=4)).fit()

    def killer(step, loss):
        if step == 6:  # checkpoint at step 4 exists; step 5-6 are lost with the process
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tmp_path / "b", *cfgs(text_corpus, steps=10, checkpoint_every=4)).fit(callback=killer)
    resumed = Trainer(tmp_path / "b", resume=True)
    assert resumed.step == 4
    rest = resumed.fit()
    assert len(rest) == 6
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full[4:]), rtol=1e-5, atol=1e-5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))


def test_existing_run_is_never_overwritten(tmp_path, text_corpus):
    Trainer(tmp_path / "r", *cfgs(text_corpus, steps=2)).fit()
    before = (tmp_path / "r" / "config.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(tmp_path / "r", *cfgs(text_corpus, position="rope", steps=2))
    assert (tmp_path / "r" / "config.json").read_text() == before


def test_corrupt_checkpoint_and_config(tmp_path, text_corpus):
    Trainer(tmp_path / "r", *cfgs(text_corpus, steps=2)).fit()
    model, cfg = load_run(tmp_path / "r")
    assert cfg["model"]["position"] == "fire"
    f = latest_checkpoint(tmp_path / "r") / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_run(tmp_path / "r")
    cfg_path = tmp_path / "r" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["model"]["position"] = "fyre"
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown position encoding 'fyre'"):
        load_run(tmp_path / "r")
    cfg_path.write_text('{"model": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path / "r")


def test_gradient_accumulation_matches_full_batch(tmp_path, text_corpus):
    a = Trainer(tmp_path / "a", *cfgs(text_corpus))
    b = Trainer(tmp_path / "b", *cfgs(text_corpus, micro_batch_size=2))
    assert b.accum == 4
    la, lb = a.forward_backward(0), b.forward_backward(0)
    assert la == pytest.approx(lb, rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)


def _ddp_worker(rank, world, port, run_dir, corpus, out):
    ddp_env(rank, world, port)
    import torch.distributed as dist

    from firepe.train import process_group

    with process_group():  # the teardown `firepe train` uses
        trainer = Trainer(run_dir, *cfgs(corpus))
        trainer.forward_backward(0)
        if rank == 0:
            torch.save({n: p.grad.clone() for n, p in trainer.model.named_parameters()}, out)
        dist.barrier()
        del trainer
    assert not dist.is_initialized()


def test_ddp_gloo_two_processes_match_single_process(tmp_path, text_corpus):
    single = Trainer(tmp_path / "single", *cfgs(text_corpus))
    single.forward_backward(0)
    out = tmp_path / "ddp_grads.pt"
    mp.spawn(_ddp_worker, args=(2, free_port(), tmp_path / "ddp", text_corpus, out), nprocs=2, join=True)
    grads = torch.load(out)
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6)


def _mismatch_worker(rank, world, port, run_dir, corpus, out_dir):
    ddp_env(rank, world, port)
    from firepe.train import process_group

    model, t, d = cfgs(corpus, position="fire" if rank == 0 else "rope")
    t.seq_len = 32 if rank == 0 else 16
    with process_group():
        try:
            Trainer(run_dir, model, t, d)
            msg = "no error"
        except ValueError as e:
            msg = str(e)
    (out_dir / f"rank{rank}.txt").write_text(msg)


def test_torchrun_ranks_with_different_settings_refuse_to_start(tmp_path, text_corpus):
    mp.spawn(_mismatch_worker, args=(2, free_port(), tmp_path / "run", text_corpus, tmp_path), nprocs=2, join=True)
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert "different settings" in msg and "model.position" in msg and "train.seq_len" in msg, msg
    assert not (tmp_path / "run" / "config.json").exists()


def test_cuda_without_an_index_is_this_ranks_gpu_and_nccl_starts_on_it(monkeypatch):
    """Under torchrun ``--device cuda`` is ``cuda:LOCAL_RANK``, and ``torch.cuda.set_device`` runs before
    NCCL starts (else every rank's object collectives run on GPU 0)."""
    import firepe.loading as loading
    import firepe.train as train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loading.resolve_device("cuda", 1) == torch.device("cuda:1")
    assert loading.resolve_device("auto", 1) == torch.device("cuda:1")
    assert loading.resolve_device("cuda:0", 1) == torch.device("cuda:0")
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(train.dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    train.init_distributed(torch.device("cuda:1"))
    assert calls == [("set_device", torch.device("cuda:1")), ("init", "nccl")]
    calls.clear()
    train.init_distributed(torch.device("cpu"))
    assert calls == [("init", "gloo")]


def test_optimizer_fused_on_cpu_and_resume_keeps_the_saved_implementation(tmp_path, text_corpus):
    """New runs use the fused AdamW on CPU; a checkpoint whose parameter groups say fused=False (runs
    from before the change) resumes with the per-parameter implementation it was trained with."""
    from firepe.checkpoint import load_optimizer_state

    trainer = Trainer(tmp_path / "run", *cfgs(text_corpus, steps=2))
    assert all(g["fused"] is True for g in trainer.optimizer.param_groups)
    trainer.fit()
    ckpt = latest_checkpoint(tmp_path / "run")
    meta_file = ckpt / "optimizer.json"
    meta = json.loads(meta_file.read_text())
    assert all(g["fused"] is True for g in meta["param_groups"])
    for g in meta["param_groups"]:
        g["fused"] = False
    meta_file.write_text(json.dumps(meta))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    load_optimizer_state(trainer.optimizer, ckpt)
    assert all(not g["fused"] for g in trainer.optimizer.param_groups)
    trainer.train_step()  # the unfused update runs on the restored state
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
