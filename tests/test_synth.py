"""``firepe synth`` and randomized positions: training, resume, seeds, the table and the error contract."""

import inspect
import json
from dataclasses import replace

import pytest
import torch

from firepe import positions
from firepe.config import GPTConfig, TrainConfig, preset
from firepe.model import GPT
from firepe.seeds import parse_seeds
from firepe.synth import SYNTH_DEFAULTS, aggregate, format_synth, synth
from firepe.synth_runs import SynthTrainer, score_synth_run
from firepe.tasks.synthetic import SynthConfig, make_task
from firepe.train import Trainer

from .helpers import one_line_error, run_cli, spy_positions

FAST = dict(SYNTH_DEFAULTS, steps=6, checkpoint_every=3, log_every=3, progress=False, batch_size=8, seq_len=48)


def test_a_tiny_recall_run_learns_above_chance_in_seconds(tmp_path):
    # 2 bindings of 8 values: guessing a value is 1/8; using the values in context is 1/2
    task = SynthConfig(pairs=2, keys=4, values=8, queries=8)
    cfg = TrainConfig(**{**SYNTH_DEFAULTS, "steps": 150, "progress": False, "seq_len": 32})
    SynthTrainer(tmp_path / "r", task, preset("tiny", position="alibi"), cfg).fit()
    acc = score_synth_run(tmp_path / "r", make_task(task), [32], examples=512)[0]["accuracy"]
    assert acc > 35.0, acc


def test_seeds_change_init_and_order_not_the_evaluation_set(tmp_path):
    task = SynthConfig()
    a = SynthTrainer(tmp_path / "a", task, preset("tiny", position="rope"), TrainConfig(**{**FAST, "seed": 0}))
    b = SynthTrainer(tmp_path / "b", task, preset("tiny", position="rope"), TrainConfig(**{**FAST, "seed": 1}))
    assert not torch.equal(a.model.wte.weight, b.model.wte.weight)
    assert not torch.equal(a.data.batch(0, 4, 0)[0], b.data.batch(0, 4, 1)[0])
    assert torch.equal(a.data.batch(2, 4, 0)[0], a.data.batch(2, 4, 0)[0])
    a.run.unlock(), b.run.unlock()
    t = make_task(task)
    assert torch.equal(t.eval_batch(8, 64)[0], make_task(task).eval_batch(8, 64)[0])


def test_synth_run_resumes_with_its_task(tmp_path):
    task = SynthConfig(task="addition", digits=3, hints=True)
    tr = SynthTrainer(tmp_path / "r", task, preset("tiny", position="fire"), TrainConfig(**{**FAST, "steps": 3}))
    assert tr.cfg.seq_len == make_task(task).addition_length(3)  # the task decides the training length
    tr.fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["synth"]["task"] == "addition" and saved["synth"]["hints"] is True
    assert saved["model"]["vocab_size"] == make_task(task).vocab_size
    again = SynthTrainer(tmp_path / "r", resume=True, changes={"steps": 6})
    assert again.synth == task and again.step == 3
    again.fit()
    assert again.step == 6


def test_synth_end_to_end_with_seeds_reuses_finished_runs(tmp_path):
    out = tmp_path / "s"
    args = (["rope", "fire"], preset("tiny"), TrainConfig(**FAST), SynthConfig(queries=8), [0, 1])
    s = synth(out, *args, max_factor=2, examples=32, log=lambda *_: None)
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "results.md", "accuracy.png",
                                               "recall_rope.png", "recall_fire.png", "rope", "fire"}
    assert (out / "fire" / "seed-1" / "config.json").exists()
    assert len(s["runs"]) == 4 and s["levels"] == [48, 96]
    cell = s["table"]["cells"]["fire"]["48"]
    per = [r["results"][0]["accuracy"] for r in s["runs"] if r["label"] == "fire"]
    assert cell["per_seed"] == per and cell["mean"] == pytest.approx(sum(per) / 2)
    assert cell["std"] == pytest.approx(abs(per[0] - per[1]) / 2 ** 0.5)
    assert "±" in (out / "results.md").read_text()
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("label,position,seed,length") and len(lines) == 1 + 4 * 2
    logs = []
    s2 = synth(out, *args, max_factor=2, examples=32, log=logs.append)
    assert sum("reusing" in m for m in logs) == 4
    assert s2["table"]["cells"] == s["table"]["cells"]  # the same runs on the same evaluation examples


def test_synth_refuses_a_folder_of_another_task(tmp_path):
    out = tmp_path / "s"
    synth(out, ["nope"], preset("tiny"), TrainConfig(**FAST), SynthConfig(queries=8), [0], max_factor=1,
          examples=8, log=lambda *_: None)
    with pytest.raises(ValueError, match="another task"):
        synth(out, ["nope"], preset("tiny"), TrainConfig(**FAST), SynthConfig(queries=8, pairs=3), [0],
              max_factor=1, examples=8, log=lambda *_: None)


def _summary(acc):
    """A synth summary from ``acc[label][seed] = [accuracy per level]``."""
    runs = [{"label": lab, "seed": s, "results": [{"level": lv, "accuracy": a} for lv, a in zip((64, 128), vals)]}
            for lab, by in acc.items() for s, vals in by.items()]
    return {"runs": runs, "seeds": sorted(next(iter(acc.values()))), "levels": [64, 128]}


def test_best_in_every_seed_and_paired_differences():
    acc = {"fire": {0: [90, 50], 1: [80, 70]}, "rope": {0: [95, 40], 1: [70, 60]}, "nope": {0: [10, 50], 1: [10, 10]}}
    t = aggregate(_summary(acc))
    # 64: rope wins seed 0, fire seed 1 -> nobody in every seed; 128: fire ties nope in seed 0, wins seed 1
    assert t["best_every_seed"] == {"64": [], "128": ["fire"]}
    assert t["reference"] == "fire"
    assert t["paired"]["rope"]["64"]["mean"] == pytest.approx(((90 - 95) + (80 - 70)) / 2)
    assert t["paired"]["rope"]["64"]["ref_ahead_in"] == 1
    assert t["paired"]["nope"]["128"]["std"] == pytest.approx(((0 - 30) ** 2 + (60 - 30) ** 2) ** 0.5)
    text = format_synth({**_summary(acc), "table": t, "level_name": "length", "train_len": 64,
                         "task": {"digits": 8}})
    assert "| fire | **85.0 ± 7.1** | **60.0 ± 14.1** * |" in text, text
    assert "| rope | 82.5 ± 17.7 | 50.0 ± 14.1 |" in text


def test_a_column_where_every_encoding_ties_marks_none():
    acc = {"fire": {0: [90, 0], 1: [80, 0]}, "rope": {0: [95, 0], 1: [70, 0]}}  # 128: all 0% in every seed
    t = aggregate(_summary(acc))
    assert t["best_every_seed"]["128"] == ["fire", "rope"]  # the data keeps the ties
    text = format_synth({**_summary(acc), "table": t, "level_name": "length", "train_len": 64,
                         "task": {"digits": 8}})
    assert "| fire | **85.0 ± 7.1** | 0.0 ± 0.0 |" in text and "| rope | 82.5 ± 17.7 | 0.0 ± 0.0 |" in text, text


@pytest.mark.parametrize("text, seeds", [("3", [0, 1, 2]), ("0,4,7", [0, 4, 7]), ("1", [0])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds
    assert parse_seeds("2", first=5) == [5, 6]


@pytest.mark.parametrize("text", ["0", "-2", "1,1", "x", "", "1,,2", "0,-1"])
def test_parse_seeds_refuses(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


@pytest.mark.parametrize("argv, match", [
    (["--pairs", "0"], "--pairs must be an integer >= 1"),
    (["--pairs", "9"], "more than the 8 distinct keys"),
    (["--queries", "40"], "do not fit"),
    (["--task", "addition", "--digits", "0"], "--digits must be"),
    (["--task", "sorting"], "unknown synthetic task"),
    (["--seeds", "0,1,1"], "twice"),
    (["--random-positions", "10"], "random_positions"),
    (["--examples", "0"], "--examples"),
    (["--max-factor", "0"], "--max-factor"),
    (["--lengths", "64,20"], "do not fit"),
    (["--task", "addition", "--lengths", "40"], "scored up to 4 x --digits"),
    (["--encodings", "fire,,rope"], "empty entry"),
    (["--encodings", "firex"], "unknown position encoding"),
    (["--task", "copy", "--pairs", "2"], "--pairs applies to recall only"),
    (["--hints"], "--hints applies to addition only"),
    (["--task", "addition", "--seq-len", "32"], "follows from --digits"),
    (["--seeds", "0,x"], "--seeds"),
    (["--max-factor", "100000000"], "--max-factor must be an integer in"),
    (["--max-factor", "32768"], "at most"),
    (["--examples", "1000000"], "tokens; at most"),
    (["--task", "addition", "--lengths", "1,x"], "digit counts"),
    (["--task", "addition", "--random-positions", "10"], "training length 16"),
    (["--steps", "0"], "steps must be"),
    (["--lr", "nan"], "finite"),
    (["--attn-std", "0"], "--attn-std must be a number in"),
    (["--format", "split", "--embed-std", "11"], "--embed-std must be a number in"),
    (["--attn-std", "nan"], "--attn-std: expected a finite number"),
    (["--embed-std", "-0.3"], "--embed-std must be a number in"),
    (["--attn-std", "inf"], "--attn-std: expected a finite number"),
    (["--attn-std", "big"], "--attn-std: expected a number"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    one_line_error(capsys, ["synth", "--out", out, "--steps", "2", "--no-progress", *argv], match)
    assert not out.exists()


def test_cli_synth_resumes_an_interrupted_run_and_extends_it(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["synth", "--out", out, "--encodings", "rope", "--seeds", "1", "--batch-size", "4", "--no-progress",
            "--max-factor", "1", "--examples", "16", "--checkpoint-every", "2"]
    assert run_cli([*base, "--steps", "4"]) == 0
    (out / "results.json").unlink()
    assert run_cli([*base, "--steps", "6"]) == 0  # a larger budget resumes the finished run from step 4
    printed = capsys.readouterr().out
    assert "resuming" in printed and "trained to step 6" in printed
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    one_line_error(capsys, [*base, "--steps", "6", "--lr", "0.01"], "other settings")


def test_synth_runs_are_refused_where_text_is_needed_and_eval_seed_may_change(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["synth", "--out", out, "--encodings", "alibi", "--seeds", "1", "--steps", "2", "--batch-size", "2",
            "--no-progress", "--max-factor", "1", "--examples", "8"]
    assert run_cli(base) == 0
    for argv in (["train", "--out", out / "alibi", "--resume", "--steps", "4"],
                 ["eval", out / "alibi", "--lengths", "64"],
                 ["finetune", out / "alibi", "--task", "passkey", "--out", tmp_path / "ft", "--steps", "1"]):
        one_line_error(capsys, argv, "is a firepe synth run")
    assert not (tmp_path / "ft").exists()
    assert run_cli([*base, "--eval-seed", "7"]) == 0  # another evaluation set scores the same runs
    assert "reusing" in capsys.readouterr().out


def test_addition_with_random_positions_and_one_digit(tmp_path):
    code = run_cli(["synth", "--out", tmp_path / "o", "--task", "addition", "--digits", "2", "--encodings", "rope",
                    "--seeds", "1", "--steps", "2", "--batch-size", "2", "--no-progress", "--lengths", "1,8",
                    "--random-positions", "40", "--examples", "8"])
    assert code == 0
    saved = json.loads((tmp_path / "o" / "rope" / "config.json").read_text())
    assert saved["train"]["random_positions"] == 40 and saved["train"]["seq_len"] == 10


def test_cli_synth_runs(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(["synth", "--out", out, "--encodings", "alibi", "--steps", "4", "--batch-size", "4",
                    "--no-progress", "--max-factor", "2", "--examples", "16", "--task", "reverse"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tokens/s" in printed and "| alibi |" in printed
    assert json.loads((out / "results.json").read_text())["task"]["task"] == "reverse"


def test_a_tasks_own_training_defaults_apply_unless_given(tmp_path, capsys):
    from firepe.synth_runs import TASK_DEFAULTS

    assert TASK_DEFAULTS["copy"]["seq_len"] == 32
    out = tmp_path / "out"  # --steps given: kept; --seq-len not given: copy's 32, not the global 64
    assert run_cli(["synth", "--out", out, "--encodings", "nope", "--seeds", "1", "--steps", "2", "--batch-size",
                    "2", "--no-progress", "--max-factor", "1", "--examples", "4", "--task", "copy"]) == 0
    saved = json.loads((out / "nope" / "config.json").read_text())["train"]
    assert saved["seq_len"] == 32 and saved["steps"] == 2
    assert run_cli(["synth", "--out", tmp_path / "o2", "--encodings", "nope", "--seeds", "1", "--steps", "2",
                    "--batch-size", "2", "--no-progress", "--max-factor", "1", "--examples", "4", "--task", "copy",
                    "--seq-len", "20"]) == 0
    assert json.loads((tmp_path / "o2" / "nope" / "config.json").read_text())["train"]["seq_len"] == 20
    lib = SynthTrainer(tmp_path / "lib", SynthConfig(task="reverse"), preset("tiny", position="nope"))
    assert lib.cfg.steps == TASK_DEFAULTS["reverse"]["steps"] and lib.cfg.seq_len == 32
    lib.run.unlock()


def test_recall_split_initializes_attention_and_embedding_larger_unless_given(tmp_path):
    from firepe.tasks.synthetic import SPLIT_INIT

    split = SynthConfig(format="split")
    assert (split.attn_std, split.embed_std) == (SPLIT_INIT["attn_std"], SPLIT_INIT["embed_std"])
    assert SynthConfig().attn_std is None and SynthConfig(task="copy").embed_std is None  # the model's own init
    assert SynthConfig(format="split", attn_std=0.05).attn_std == 0.05
    tr = SynthTrainer(tmp_path / "r", split, preset("tiny", position="t5"), TrainConfig(**{**FAST, "steps": 3}))
    m = tr.model
    assert abs(float(m.blocks[1].attn.qkv.weight.detach().std()) - 0.1) < 0.01
    assert abs(float(m.wte.weight.detach().std()) - 0.3) < 0.03 and m.lm_head.weight is m.wte.weight
    assert float(m.blocks[0].ffn[0].weight.detach().std()) < 0.03  # the rest keeps GPT-2's 0.02, T5's buckets theirs
    assert float(m.position_shared.relative_attention_bias.weight.detach().std()) < 0.03
    tr.fit()
    again = SynthTrainer(tmp_path / "r", resume=True, changes={"steps": 4})
    assert again.synth == split and torch.equal(again.model.wte.weight, m.wte.weight)
    again.run.unlock()
    plain = SynthTrainer(tmp_path / "f", SynthConfig(), preset("tiny", position="rope"), TrainConfig(**FAST))
    assert float(plain.model.wte.weight.detach().std()) < 0.03
    plain.run.unlock()


def test_a_split_run_from_before_the_init_options_is_not_reused(tmp_path, capsys):
    """A recall split run saved before --attn-std/--embed-std existed started from the model's own initialization;
    the defaults that now fill in for split must not make it pass for a run with theirs."""
    out = tmp_path / "out"
    base = ["synth", "--out", out, "--format", "split", "--encodings", "alibi", "--seeds", "1", "--steps", "2",
            "--batch-size", "2", "--no-progress", "--max-factor", "1", "--examples", "8"]
    assert run_cli(base) == 0
    config = out / "alibi" / "config.json"
    saved = json.loads(config.read_text())
    del saved["synth"]["attn_std"], saved["synth"]["embed_std"]
    config.write_text(json.dumps(saved))
    before = (out / "results.json").read_bytes()
    one_line_error(capsys, base, "trained before --attn-std and --embed-std existed")
    assert (out / "results.json").read_bytes() == before


# -- randomized positions --------------------------------------------------------------------------

def _spy_positions(monkeypatch, enc_cls, name):
    seen = []
    original = getattr(enc_cls, name)

    def spy(self, *args, **kwargs):
        seen.append([a.clone() for a in args if isinstance(a, torch.Tensor)])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(enc_cls, name, spy)
    return seen


POSITIONAL = [n for n in positions.available() if positions.get(n).kind in ("bias", "rotary")]


@pytest.mark.parametrize("name", POSITIONAL)
def test_given_positions_reach_every_encoding(monkeypatch, name):
    required = {k: 2.0 for k, v in positions.options(name).items() if v is inspect.Parameter.empty}
    cfg = GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=16, position=name,
                    position_options=positions.training_options(name, required, 16))
    model = GPT(cfg)
    enc = model.position_for(0)
    method = "compute_angles" if enc.kind == "rotary" else "compute_bias_rows"
    seen = _spy_positions(monkeypatch, type(enc), method)
    idx = torch.randint(0, 11, (2, 6))
    pos = torch.tensor([[0, 3, 4, 9, 20, 31], [1, 2, 5, 6, 7, 40]])
    out_given = model(idx, positions=pos)[0]
    assert seen and any(any(torch.equal(t.reshape(-1)[:6], pos[0]) for t in call) for call in seen), seen
    assert any(any(torch.equal(t.reshape(-1)[-6:], pos[1]) for t in call) for call in seen), seen
    out_plain = model(idx)[0]
    assert not torch.allclose(out_given, out_plain)  # the positions change the output ...
    assert torch.allclose(model(idx, positions=torch.arange(6).expand(2, 6))[0], out_plain, atol=1e-5)  # ... 0..T-1 not


@pytest.mark.parametrize("name", ["fox", "cope"])
def test_given_positions_change_nothing_for_data_and_context_biases(name):
    # FoX reads the hidden states, CoPE the logits: randomized positions leave their output as it is
    model = GPT(GPTConfig(vocab_size=11, n_layer=2, n_head=2, d_model=16, position=name))
    idx = torch.randint(0, 11, (2, 6))
    pos = torch.tensor([[0, 3, 4, 9, 20, 31], [1, 2, 5, 6, 7, 40]])
    assert torch.allclose(model(idx, positions=pos)[0], model(idx)[0], atol=1e-6)


def test_given_positions_are_checked():
    model = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=16, position="rope"))
    idx = torch.zeros((1, 4), dtype=torch.long)
    for bad, match in ((torch.tensor([[0, 1, 2]]), "shape"), (torch.tensor([[0.0, 1, 2, 3]]), "integers"),
                       (torch.tensor([[1, -1, 2, 3]]), ">= 0"), (torch.tensor([[0, 1, 2, 1 << 21]]), "below")):
        with pytest.raises(ValueError, match=match):
            model(idx, positions=bad)
    model(idx, positions=torch.tensor([[3, 2, 2, 0]]))  # any order, repeats allowed (a task's own ids)


def test_trainer_passes_sorted_random_positions_and_resume_keeps_them(tmp_path, monkeypatch):
    task = SynthConfig(queries=4)
    cfg = TrainConfig(**{**FAST, "steps": 2, "checkpoint_every": 1, "random_positions": 500})
    seen = spy_positions(monkeypatch)
    tr = SynthTrainer(tmp_path / "r", task, preset("tiny", position="fire"), cfg)
    tr.fit()
    assert len(seen) == 2 and all(p is not None for p in seen)
    for p in seen:
        assert p.shape == (8, 48) and (p[:, 1:] > p[:, :-1]).all() and p.min() >= 0 and p.max() < 500
        assert not torch.equal(p[0], torch.arange(48))
    assert not torch.equal(seen[0], seen[1])
    assert torch.equal(tr.random_positions(0, 0, 8, 48), seen[0].cpu())  # reproducible per step
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["train"]["random_positions"] == 500
    again = SynthTrainer(tmp_path / "r", resume=True, changes={"steps": 3})
    assert again.cfg.random_positions == 500
    again.run.unlock()
    with pytest.raises(ValueError, match="random_positions cannot change"):
        Trainer(tmp_path / "r", resume=True, changes={"random_positions": 600})
    # evaluation never uses them
    seen.clear()
    score_synth_run(tmp_path / "r", make_task(task), [48], examples=4)
    assert seen == [None]


def test_random_positions_must_cover_the_training_length():
    with pytest.raises(ValueError, match=r"random_positions \(M\) must be an integer >= the training length 64"):
        TrainConfig(seq_len=64, random_positions=63)
    assert replace(TrainConfig(seq_len=64, random_positions=64)).random_positions == 64


@pytest.mark.parametrize("name", ["fire", "fire_s", "alibi", "kerple_log", "t5", "sandwich", "kerple_power",
                                  "fire:per_row_kernel"])
def test_per_row_bias_equals_row_by_row_bias_and_gradients(name, monkeypatch):
    if name.endswith(":per_row_kernel"):  # FIRE's long rows: a lookup per row, not one for the whole batch
        from firepe.positions.fire import FIRE

        name = name.split(":")[0]
        monkeypatch.setattr(FIRE, "ROWS_AT_ONCE", 0)
    enc = positions.build(name, num_heads=2, head_dim=8, **positions.training_options(name, {}, 16))
    q = torch.rand(3, 200, generator=torch.Generator().manual_seed(1)).topk(12, dim=1).indices.sort(1).values
    causal = (q[:, :, None] >= q[:, None, :])[:, None]  # entries past the causal mask are never read
    got = enc.compute_bias_rows(q, q)
    want = torch.stack([enc.compute_bias(a, a) for a in q])
    assert got.shape == (3, 2, 12, 12)
    got, want = torch.where(causal, got, 0), torch.where(causal, want, 0)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    params = [p for p in enc.parameters() if p.requires_grad]
    if params:
        g1 = torch.autograd.grad(got.sum(), params)
        g2 = torch.autograd.grad(want.sum(), params)
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
