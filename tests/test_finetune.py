"""Fine-tuning: answer-only loss, starting weights, config section, resume, option changes."""

import json

import pytest
import torch
import torch.nn.functional as F

from firepe.checkpoint import latest_checkpoint
from firepe.config import DataConfig, GPTConfig, TrainConfig, preset
from firepe.data import ByteTokenizer
from firepe.finetune import FinetuneConfig, FinetuneData, FinetuneTrainer, finetune_model_config
from firepe.loading import load_run
from firepe.model import IGNORE_INDEX
from firepe.tasks import Example, prepare
from firepe.train import Trainer

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(30):
        (corpus / f"f{k}.py").write_text(f"def f{k}(x):\n    return x + {k}\n" * 40)
    run = root / "base"
    Trainer(run, preset("tiny", position="fire", position_options={"init_L": 32}),
            TrainConfig(seq_len=96, batch_size=4, steps=3, progress=False, checkpoint_every=3),
            DataConfig(corpus=str(corpus), val_tokens=512)).fit()
    return run


@pytest.fixture
def task_file(tmp_path):
    rows = [{"id": str(i), "input": f"what is {i} plus {i}?", "output": str(2 * i)} for i in range(12)]
    rows.append({"id": "0", "input": "what is 0 plus 0?", "output": "zero"})
    path = tmp_path / "add.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_targets_are_the_answer_tokens_only():
    ex = prepare([Example("a", "some question text", ("42",))], TOK, 64, for_training=True)[0]
    data = FinetuneData(64, TOK.eos_id, rows=[ex])
    x, y = data.batch(0, 1, seed=0)
    seq = ex.prompt + ex.answer
    assert x.shape == y.shape == (1, 64)
    assert x[0, :len(seq) - 1].tolist() == seq[:-1]
    kept = (y[0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert kept == list(range(len(ex.prompt) - 1, len(seq) - 1))
    assert y[0, kept].tolist() == TOK.encode("42") + [TOK.eos_id]


def test_model_loss_is_the_answer_cross_entropy():
    torch.manual_seed(0)
    model = preset("tiny", position="alibi")
    from firepe.model import GPT

    net = GPT(model)
    rows = prepare([Example(str(i), "x" * (5 + i), (f"{i}!",)) for i in range(3)], TOK, 32, for_training=True)
    x, y = FinetuneData(32, TOK.eos_id, rows=rows).batch(0, 3, seed=1)
    logits, loss = net(x, y)
    mask = y != IGNORE_INDEX
    manual = F.cross_entropy(logits[mask], y[mask])
    assert torch.allclose(loss, manual)
    # a change to the prompt targets' logits cannot change the loss: only answer positions count
    assert mask.sum() == sum(len(r.answer) for r in rows)


def test_finetune_starts_from_base_weights_and_writes_its_section(tmp_path, base_run, task_file):
    ft = FinetuneTrainer(tmp_path / "ft", base_run, FinetuneConfig(task=f"jsonl:{task_file}"),
                         TrainConfig(seq_len=64, batch_size=4, steps=2, lr=1e-3, progress=False),
                         model_changes={"dropout": 0.1})
    base, _ = load_run(base_run)
    for (k, a), b in zip(ft.model.state_dict().items(), base.state_dict().values()):
        assert torch.equal(a, b), k
    assert "13 training rows" in ft.corpus_description  # 12 examples, one with a second reference
    ft.fit()
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["finetune"]["base_run"] == str(base_run.resolve()) and cfg["finetune"]["base_step"] == 3
    assert cfg["model"]["dropout"] == 0.1 and cfg["train"]["seq_len"] == 64
    model, _ = load_run(tmp_path / "ft")
    assert not torch.equal(model.wte.weight, base.wte.weight)


def test_resume_continues_and_refuses_pretraining_runs(tmp_path, base_run, task_file):
    cfg = TrainConfig(seq_len=64, batch_size=4, steps=4, lr=1e-3, progress=False, checkpoint_every=2)
    straight = FinetuneTrainer(tmp_path / "a", base_run, FinetuneConfig(task=f"jsonl:{task_file}"), cfg).fit()

    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FinetuneTrainer(tmp_path / "b", base_run, FinetuneConfig(task=f"jsonl:{task_file}"), cfg).fit(stop)
    rest = FinetuneTrainer(tmp_path / "b", resume=True).fit()
    assert rest == pytest.approx(straight[2:], abs=1e-6)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["finetune"]["task"] == f"jsonl:{task_file}"
    with pytest.raises(ValueError, match="pretraining run"):
        FinetuneTrainer(base_run, resume=True)


def test_base_run_checks(tmp_path, base_run, task_file):
    ft = FinetuneConfig(task=f"jsonl:{task_file}")
    with pytest.raises(ValueError, match="not a firepe run folder"):
        FinetuneTrainer(tmp_path / "x", tmp_path, ft)
    with pytest.raises(ValueError, match="does not exist"):
        FinetuneTrainer(tmp_path / "x", tmp_path / "missing", ft)
    with pytest.raises(ValueError, match="new folder"):
        FinetuneTrainer(base_run, base_run, ft)
    with pytest.raises(ValueError, match="does not fit length 8"):
        FinetuneTrainer(tmp_path / "y", base_run, ft, TrainConfig(seq_len=8, progress=False))
    assert not (tmp_path / "y" / "config.json").exists()
    assert latest_checkpoint(base_run) is not None


def test_target_length_options_may_change_stored_ones_not():
    rope = GPTConfig(n_layer=1, n_head=2, d_model=32, position="rope_pi", position_options={"factor": 1.0})
    assert finetune_model_config(rope, position_options={"factor": 4.0}).position_options == {"factor": 4.0}
    fire = GPTConfig(n_layer=1, n_head=2, d_model=32, position="fire", position_options={"init_L": 512})
    with pytest.raises(ValueError, match="stored in the checkpoint"):
        finetune_model_config(fire, position_options={"init_L": 2048})
    assert finetune_model_config(fire, position_options={"bias_mode": "exact"}).position_options["bias_mode"] == "exact"
    assert finetune_model_config(fire, dropout=0.1, attention="chunked").attention == "chunked"
    with pytest.raises(ValueError, match="unknown option"):
        finetune_model_config(fire, position_options={"factor": 2.0})


def test_finetune_config_validation():
    for kwargs, match in (({"task": "nosuch"}, "unknown task"), ({"limit": 0}, "limit"),
                          ({"split": ""}, "split"), ({"filler": "x"}, "filler")):
        with pytest.raises(ValueError, match=match):
            FinetuneConfig(**kwargs)


def test_rope_run_fine_tuned_with_position_interpolation():
    rope = GPTConfig(n_layer=1, n_head=2, d_model=32, position="rope")
    pi = finetune_model_config(rope, position="rope_pi", position_options={"factor": 4.0})
    assert (pi.position, pi.position_options) == ("rope_pi", {"factor": 4.0})
    fire = GPTConfig(n_layer=1, n_head=2, d_model=32, position="fire")
    with pytest.raises(ValueError, match="changing 'fire' to 'alibi' would change values stored"):
        finetune_model_config(fire, position="alibi")
    with pytest.raises(ValueError, match="needs option"):
        finetune_model_config(rope, position="rope_pi")
