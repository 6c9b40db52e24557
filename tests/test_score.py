"""Scoring: greedy decoding with the KV cache equals decoding without it; score files; errors."""

import json

import pytest
import torch

from firepe.config import DataConfig, TrainConfig, preset
from firepe.data import ByteTokenizer
from firepe.model import GPT
from firepe.score import greedy_generate, score_runs, write_scores
from firepe.train import Trainer

TOK = ByteTokenizer()


@pytest.mark.parametrize("position", ["nope", "rope", "alibi", "kerple_log", "t5", "fire", "fire_s"])
def test_cache_and_no_cache_decode_the_same_tokens(position):
    torch.manual_seed(1)
    opts = {"init_L": 16} if position.startswith("fire") else {}
    model = GPT(preset("tiny", position=position, position_options=opts)).eval()
    prompts = [TOK.encode("def f(x): return x"), TOK.encode("abcdefghijklmnopqrs"), TOK.encode("short")]
    cached = greedy_generate(model, prompts, 12, TOK.eos_id, use_cache=True)
    plain = greedy_generate(model, prompts, 12, TOK.eos_id, use_cache=False)
    assert cached == plain
    assert all(len(g) <= 12 for g in cached)


def test_generation_stops_at_eos_and_batches_equal_lengths():
    class Scripted(torch.nn.Module):
        """Emits token 65 twice, then end-of-document."""

        cfg = preset("tiny")

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = []

        def forward(self, x, cache=None):
            self.calls.append(tuple(x.shape))
            total = x.shape[1] + (cache.length if cache is not None else 0)
            if cache is not None:
                cache.length = total
            logits = torch.zeros(x.shape[0], x.shape[1], 257)
            logits[:, -1, 65 if total < 8 else TOK.eos_id] = 1
            return logits, None

    m = Scripted()
    out = greedy_generate(m, [[1] * 6, [2] * 6, [3] * 3], 10, TOK.eos_id)
    assert out[0] == out[1] == [65, 65] and out[2][:2] == [65, 65]
    assert (2, 6) in m.calls and (1, 3) in m.calls  # equal-length prompts share one batch
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(m, [[]], 3, TOK.eos_id)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    corpus = root / "corpus"
    corpus.mkdir()
    for k in range(30):
        (corpus / f"f{k}.py").write_text(f"value_{k} = {k} * 2\n" * 60)
    out = []
    for pos in ("alibi", "rope"):
        Trainer(root / pos, preset("tiny", position=pos),
                TrainConfig(seq_len=80, batch_size=2, steps=2, progress=False),
                DataConfig(corpus=str(corpus), val_tokens=512)).fit()
        out.append(root / pos)
    return out


def test_passkey_grid_and_files(tmp_path, runs):
    res = score_runs(runs, "passkey", lengths=[80, 160], depths=[0.0, 1.0], examples=2, filler="classic",
                     log=lambda s: None)
    rows = res["results"]
    assert {(r["label"], r["length"], r["depth"]) for r in rows} == {
        (label, n, d) for label in ("alibi", "rope") for n in (80, 160) for d in (0.0, 1.0)}
    assert all(r["examples"] == 2 and r["score"] in (0, 50, 100) and r["tokens_per_s"] > 0 for r in rows)
    paths = write_scores(tmp_path / "out", res)
    names = {p.name for p in paths}
    assert {"score.json", "score.csv", "score.md", "score.png", "passkey_alibi.png", "passkey_rope.png"} <= names
    saved = json.loads((tmp_path / "out" / "score.json").read_text())
    assert saved["task"] == "passkey" and saved["metric"] == "accuracy" and len(saved["results"]) == 8
    assert (tmp_path / "out" / "score.csv").read_text().count("\n") == 9


def test_same_examples_cut_to_every_length(tmp_path, runs):
    rows = [{"id": str(i), "input": f"Q{i}: " + "text " * 40, "output": [f"a{i}", "b"]} for i in range(3)]
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = score_runs(runs[:1], f"jsonl:{f}", lengths=[30, 60, 400], max_new_tokens=3, log=lambda s: None)
    by_len = {r["length"]: r for r in res["results"]}
    assert by_len[30]["truncated"] == 3 and by_len[400]["truncated"] == 0
    assert all(r["examples"] == 3 and r["task"] == f"jsonl:{f}" and r["metric"] == "f1" for r in res["results"])


def test_score_errors(tmp_path, runs):
    with pytest.raises(ValueError, match="not a firepe run folder"):
        score_runs([tmp_path], "passkey")
    with pytest.raises(ValueError, match="unknown task"):
        score_runs(runs, "squad")
    with pytest.raises(ValueError, match="passkey task only"):
        (tmp_path / "t.jsonl").write_text('{"id": "1", "input": "x", "output": "y"}\n')
        score_runs(runs, f"jsonl:{tmp_path / 't.jsonl'}", depths=[0.5])
    with pytest.raises(ValueError, match="examples"):
        score_runs(runs, "passkey", examples=0)
    with pytest.raises(ValueError, match=r"run alibi \(trained at 80\): passkey needs a length of at least"):
        score_runs(runs, "passkey", lengths=[40], filler="classic")


def test_several_tasks_get_an_average_row_per_run_and_length(tmp_path, runs):
    paths = []
    for k in range(2):
        f = tmp_path / f"t{k}.jsonl"
        f.write_text("".join(json.dumps({"id": str(i), "input": f"q{i}", "output": "x" * k or "y"}) + "\n"
                             for i in range(2)))
        paths.append(f"jsonl:{f}")
    res = score_runs(runs[:1], ",".join(paths), lengths=[40, 60], max_new_tokens=2, log=lambda s: None)
    tasks = [r for r in res["results"] if r["task"] != "average"]
    avg = [r for r in res["results"] if r["task"] == "average"]
    assert len(tasks) == 4 and len(avg) == 2 and res["metric"] == "main"
    for a in avg:
        same = [r["score"] for r in tasks if r["length"] == a["length"]]
        assert a["score"] == pytest.approx(sum(same) / 2) and a["examples"] == 4


def test_score_has_a_progress_bar_over_the_examples_and_no_progress_turns_it_off(runs, capsys):
    score_runs(runs[:1], "passkey", lengths=[80], depths=[0.0, 1.0], examples=3, filler="classic",
               log=lambda s: None, progress=True)
    err = capsys.readouterr().err
    assert "score" in err and "6/6" in err and "tokens/s" in err
    score_runs(runs[:1], "passkey", lengths=[80], depths=[0.0], examples=2, filler="classic", log=lambda s: None,
               progress=False)
    assert capsys.readouterr().err == ""


def test_score_cli_takes_no_progress_like_train_and_eval(runs, tmp_path, capsys):
    import argparse

    from firepe.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("train", "eval", "finetune", "score", "compare", "ablate"):  # every command with a long loop
        assert "--no-progress" in {o for a in sub.choices[name]._actions for o in a.option_strings}, name

    assert main(["score", str(runs[0]), "--lengths", "80", "--depths", "0", "--examples", "1", "--filler", "classic",
                 "--no-progress", "--no-plot", "--out", str(tmp_path / "sc")]) == 0
    assert "score:" not in capsys.readouterr().err
