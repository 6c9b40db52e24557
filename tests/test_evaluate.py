import math

import pytest
import torch
from torch import nn

from firepe.config import DataConfig, TrainConfig, preset
from firepe.evaluate import eval_tokens, evaluate_lengths, evaluate_run, parse_lengths
from firepe.train import Trainer


class Unigram(nn.Module):
    """Logits that ignore context: the NLL of a token is the same at any length, so equal log
    perplexities at every length show that every length scores the same target tokens."""

    def __init__(self, vocab=257):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(vocab))

    def forward(self, x):
        return self.logits.expand(*x.shape, -1), None


def test_every_length_scores_identical_tokens():
    stream = torch.randint(0, 257, (5000,))
    tokens = eval_tokens(stream, [16, 32, 64, 128], 4000)
    assert len(tokens) - 1 == 3968  # largest multiple of 128 <= 4000
    model = Unigram()
    rows = evaluate_lengths(model, tokens, [16, 32, 64, 128], progress=False)
    values = [r["log_ppl"] for r in rows]
    assert max(values) - min(values) < 1e-6
    want = torch.nn.functional.cross_entropy(model.logits.expand(3968, -1), tokens[1:].long()).item()
    assert values[0] == pytest.approx(want, rel=1e-6)
    assert {r["tokens"] for r in rows} == {3968}


def test_lcm_of_lengths_and_errors():
    tokens = eval_tokens(torch.zeros(1000, dtype=torch.long), [6, 4], 999)
    assert (len(tokens) - 1) % 12 == 0
    with pytest.raises(ValueError, match="needs at least 129"):
        eval_tokens(torch.zeros(100, dtype=torch.long), [128], 1000)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        parse_lengths("1,64")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_lengths("64,abc")


def test_evaluate_run_writes_json_and_csv(tmp_path, text_corpus):
    Trainer(tmp_path / "r", preset("tiny", position="alibi"),
            TrainConfig(seq_len=16, batch_size=4, steps=3, progress=False),
            DataConfig(corpus=str(text_corpus), val_tokens=1024)).fit()
    res = evaluate_run(tmp_path / "r", [16, 32, 64], progress=False)
    assert [r["length"] for r in res["results"]] == [16, 32, 64]
    assert all(math.isfinite(r["log_ppl"]) for r in res["results"])
    assert (tmp_path / "r" / "eval.json").exists()
    assert (tmp_path / "r" / "eval.csv").read_text().count("\n") == 4
