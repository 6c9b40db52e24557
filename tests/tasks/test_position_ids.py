"""``firepe synth --task addition --position-ids abacus|coupled``: the ids against hand-written examples, the
random offset (deterministic per seed, 0 in scoring), every encoding training and scoring with them, and the
error contract."""

import inspect
import json
import math

import pytest
import torch

from firepe import positions
from firepe.config import TrainConfig, preset
from firepe.synth import SYNTH_DEFAULTS
from firepe.synth_runs import SynthTrainer, score_synth_run
from firepe.tasks.synthetic import EOS, PAD, SEP, SynthConfig, make_task

from ..helpers import one_line_error, run_cli, spy_positions


def _task(scheme, digits=2, **kw):
    return make_task(SynthConfig(task="addition", digits=digits, position_ids=scheme, **kw))


def _tokens(task, text):
    """Tokens from text: digits, ``+``, ``=``, ``E`` (EOS), ``hN`` (index hint N)."""
    named = {"+": task.plus, "=": SEP, "E": EOS}
    return [named[w] if w in named else task.hint0 + int(w[1:]) if w[0] == "h" else task.digit0 + int(w)
            for w in text.split()]


# 12 + 59 = 71 and 7 + 345 = 352, digits reversed (least significant first), the sum padded to max(da, db) + 1
EXAMPLES = [
    ("2 1 + 9 5 = 1 7 0 E", 0,
     [1, 2, 0, 1, 2, 0, 1, 2, 3, 0],
     [1, 2, 0, 1, 2, 0, 1, 2, 3, 4]),
    ("2 1 + 9 5 = 1 7 0 E", 5,
     [6, 7, 0, 6, 7, 0, 6, 7, 8, 0],
     [6, 7, 5, 6, 7, 5, 6, 7, 8, 9]),
    ("7 + 5 4 3 = 2 5 3 0 E", 10,
     [11, 0, 11, 12, 13, 0, 11, 12, 13, 14, 0],
     [11, 10, 11, 12, 13, 10, 11, 12, 13, 14, 15]),
    ("h0 2 h1 1 + h0 9 h1 5 = h0 1 h1 7 h2 0 E", 0,
     [0, 1, 0, 2, 0, 0, 1, 0, 2, 0, 0, 1, 0, 2, 0, 3, 0],
     [1, 1, 2, 2, 0, 1, 1, 2, 2, 0, 1, 1, 2, 2, 3, 3, 4]),
]


@pytest.mark.parametrize("text, offset, abacus, coupled", EXAMPLES)
def test_ids_of_hand_written_examples(text, offset, abacus, coupled):
    for scheme, want in (("abacus", abacus), ("coupled", coupled)):
        task = _task(scheme, digits=3, hints="h" in text)
        assert task.position_ids(_tokens(task, text), offset) == want


def test_the_scored_example_12_plus_59_gets_its_ids_in_the_batch(monkeypatch):
    # the generator's own rows: force the operands 12 and 59 (reversed: 2 1, 9 5) through torch.randint
    for scheme, want in (("abacus", [1, 2, 0, 1, 2, 0, 1, 2, 3, 0]), ("coupled", [1, 2, 0, 1, 2, 0, 1, 2, 3, 4])):
        task = _task(scheme)
        tokens, answer, extra = _fixed_batch(task, monkeypatch, [[2, 1]], [[9, 5]])
        assert tokens[0].tolist() == _tokens(task, "2 1 + 9 5 = 1 7 0 E")
        assert extra["positions"][0].tolist() == want


def _fixed_batch(task, monkeypatch, a, b):
    """One scored row with the operands ``a``, ``b`` (digit lists, least significant first): the generator's
    three draws (digits of a, digits of b, the two leading digits) replaced by these."""
    draws = iter([torch.tensor(a), torch.tensor(b), torch.tensor([[a[0][-1], b[0][-1]]])])
    monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: next(draws))
    try:
        return task.batch(1, 2, torch.Generator().manual_seed(0), training=False)
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("scheme", ["abacus", "coupled"])
@pytest.mark.parametrize("hints", [False, True])
def test_every_row_follows_the_rule_with_one_offset_per_example(scheme, hints):
    task = _task(scheme, digits=4, hints=hints)
    assert task.max_offset == 12  # 3 x --digits: training reaches every id scoring at 4x does
    x, y, pos = task.training_rows(64, 0, seed=3, step=7)
    offsets = []
    for row, ids in zip(x.tolist(), pos.tolist()):
        n = row.index(EOS) + 1
        first_digit = next(i for i, t in enumerate(row) if task.digit0 <= t < task.plus)
        offset = ids[first_digit] - 1
        assert 0 <= offset <= 12
        assert ids[:n] == task.position_ids(row[:n], offset)
        assert all(t == PAD and i == 0 for t, i in zip(row[n:], ids[n:]))
        offsets.append(offset)
    assert len(set(offsets)) > 6  # drawn per example
    tokens, answer, extra = task.eval_batch(16, 16)  # scoring: offset 0, at 4x the digits
    for row, ids in zip(tokens.tolist(), extra["positions"].tolist()):
        assert ids == task.position_ids(row, 0)
        assert max(ids) <= 16 + 2 and min(i for t, i in zip(row, ids) if task.digit0 <= t < task.plus) == 1


def test_offsets_are_deterministic_per_seed_and_leave_the_tokens_unchanged():
    task = _task("coupled", digits=3)
    x1, y1, p1 = task.training_rows(32, 0, seed=0, step=5)
    x2, y2, p2 = task.training_rows(32, 0, seed=0, step=5)
    assert torch.equal(p1, p2) and torch.equal(x1, x2)
    assert not torch.equal(p1, task.training_rows(32, 0, seed=1, step=5)[2])
    assert not torch.equal(p1, task.training_rows(32, 0, seed=0, step=6)[2])
    # the tokens are those of the default scheme: the offsets are drawn after everything else
    plain = _task("default", digits=3)
    xd, yd, pd = plain.training_rows(32, 0, seed=0, step=5)
    assert pd is None and torch.equal(xd, x1) and torch.equal(yd, y1)
    assert "positions" not in plain.eval_batch(4, 3)[2]
    # max_offset bounds the offsets; 0 turns them off
    for m in (0, 2):
        x, _, p = _task("abacus", digits=3, max_offset=m).training_rows(64, 0, seed=0, step=5)
        first = p[(x >= 3) & (x < 13)].min()  # the smallest digit id of the batch
        assert int(first) == 1 and int(p.max()) <= 3 + 1 + m
    e1, e2 = task.eval_batch(8, 6), task.eval_batch(8, 6)
    assert torch.equal(e1[2]["positions"], e2[2]["positions"])


FAST = dict(SYNTH_DEFAULTS, steps=1, checkpoint_every=1, log_every=1, progress=False, batch_size=4)


@pytest.mark.parametrize("name", positions.available())
def test_every_encoding_trains_and_scores_with_its_ids(tmp_path, name):
    scheme = "coupled" if positions.available().index(name) % 2 else "abacus"
    cfg = SynthConfig(task="addition", digits=2, position_ids=scheme)
    opts = {"npos_max": 16} if name == "cope" else {}
    required = {k: 2.0 for k, v in positions.options(name).items() if v is inspect.Parameter.empty}
    tr = SynthTrainer(tmp_path / "r", cfg, preset("tiny", position=name, position_options={**opts, **required}),
                      TrainConfig(**FAST))
    losses = tr.fit()
    assert len(losses) == 1 and math.isfinite(losses[0]), losses
    res = score_synth_run(tmp_path / "r", make_task(cfg), [2, 5], examples=4)
    assert [r["answers"] for r in res] == [4, 4]


def test_scoring_passes_the_evaluation_ids(tmp_path, monkeypatch):
    cfg = SynthConfig(task="addition", digits=2, position_ids="abacus")
    SynthTrainer(tmp_path / "r", cfg, preset("tiny", position="alibi"), TrainConfig(**FAST)).fit()
    seen = spy_positions(monkeypatch)
    task = make_task(cfg)
    score_synth_run(tmp_path / "r", task, [3], examples=5)
    assert len(seen) == 1 and torch.equal(seen[0], task.eval_batch(5, 3)[2]["positions"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="addition", position_ids="spiral"), "--position-ids must be one of default, abacus, coupled"),
    (dict(task="copy", position_ids="abacus"), "--position-ids applies to addition only"),
    (dict(task="addition", max_offset=4), "--max-offset applies to --position-ids abacus and coupled only"),
    (dict(task="addition", position_ids="coupled", max_offset=-1), "--max-offset must be an integer in"),
])
def test_bad_options_are_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_random_positions_are_refused_with_a_scheme(tmp_path):
    with pytest.raises(ValueError, match="--random-positions does not combine with --position-ids coupled"):
        SynthTrainer(tmp_path / "r", SynthConfig(task="addition", position_ids="coupled"), preset("tiny"),
                     TrainConfig(**{**FAST, "seq_len": 28, "random_positions": 100}))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, match", [
    (["--task", "addition", "--position-ids", "spiral"], "--position-ids must be one of"),
    (["--task", "copy", "--position-ids", "coupled"], "--position-ids applies to addition only"),
    (["--position-ids", "abacus"], "--position-ids applies to addition only"),
    (["--task", "addition", "--max-offset", "3"], "--max-offset applies to --position-ids"),
    (["--task", "addition", "--position-ids", "coupled", "--random-positions", "100"],
     "--random-positions does not combine with --position-ids coupled"),
    (["--task", "addition", "--position-ids", "abacus", "--arch", "llama"], "not available with --arch llama"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    one_line_error(capsys, ["synth", "--out", out, "--steps", "2", "--no-progress", *argv], match)
    assert not out.exists()


def test_cli_synth_with_coupled_ids(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["synth", "--out", out, "--task", "addition", "--digits", "2", "--position-ids", "coupled",
                    "--max-offset", "4", "--encodings", "fire", "--seeds", "1", "--steps", "2", "--batch-size", "4",
                    "--no-progress", "--examples", "4"]) == 0
    saved = json.loads((out / "fire" / "config.json").read_text())
    assert saved["synth"]["position_ids"] == "coupled" and saved["synth"]["max_offset"] == 4
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["position_ids"] == "coupled" and results["levels"] == [2, 4, 6, 8]
