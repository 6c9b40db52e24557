"""Synthetic task generators: deterministic, and their answers checked by an independent reading of
each generated row (Python's own integer addition for addition)."""

import pytest
import torch

from firepe.tasks.synthetic import EOS, PAD, SEP, SynthConfig, distance_bins, make_task, rows_from, score_batch


def _gen(task, count, level, seed=0, training=False):
    return task.batch(count, level, torch.Generator().manual_seed(seed), training=training)


@pytest.mark.parametrize("cfg", [SynthConfig(), SynthConfig(format="split"), SynthConfig(task="copy"),
                                 SynthConfig(task="reverse"), SynthConfig(task="addition", digits=3),
                                 SynthConfig(task="addition", digits=3, hints=True)])
def test_generation_is_deterministic(cfg):
    task = make_task(cfg)
    level = 3 if cfg.task == "addition" else 64
    a, b = _gen(task, 8, level, 5, True), _gen(task, 8, level, 5, True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], _gen(task, 8, level, 6, True)[0])
    x1, y1, _ = task.training_rows(8, 64, seed=0, step=3)
    x2, y2, _ = task.training_rows(8, 64, seed=0, step=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, task.training_rows(8, 64, seed=0, step=4)[0])
    assert not torch.equal(x1, task.training_rows(8, 64, seed=1, step=3)[0])
    assert int(x1.max()) < task.vocab_size and int(x1.min()) >= 0


def test_evaluation_examples_do_not_depend_on_the_training_seed():
    task = make_task(SynthConfig())
    e1, e2 = task.eval_batch(4, 128), task.eval_batch(4, 128)
    assert torch.equal(e1[0], e2[0])
    other = make_task(SynthConfig(eval_seed=99)).eval_batch(4, 128)
    assert not torch.equal(e1[0], other[0])


@pytest.mark.parametrize("fmt", ["fact", "split"])
def test_recall_answers_are_the_bound_values(fmt):
    cfg = SynthConfig(format=fmt, pairs=5, keys=9, values=7, queries=6)
    task = make_task(cfg)
    tokens, answer, extra = _gen(task, 16, 96, seed=3)
    for row, ans, dist, first_flags in zip(tokens.tolist(), answer.tolist(), extra["distance"].tolist(),
                                           extra["first"].tolist()):
        bound, where = {}, {}
        for t, tok in enumerate(row[:96 - 2 * cfg.queries]):
            if fmt == "fact" and tok >= task.fact0:
                k, v = divmod(tok - task.fact0, cfg.values)
                bound[k], where[k] = v, t
            elif fmt == "split" and task.key0 <= tok < task.val0:
                bound[tok - task.key0], where[tok - task.key0] = row[t + 1] - task.val0, t
        assert len(bound) == cfg.pairs  # distinct keys, every binding present once
        answers = [t for t, a in enumerate(ans) if a >= 0]
        assert [ans[t] for t in answers] == list(range(cfg.queries))
        asked = set()
        for t in answers:
            key = row[t - 1] - task.key0
            assert row[t] - task.val0 == bound[key]
            assert dist[t] == (t - 1) - where[key]
            assert first_flags[t] == (key not in asked)  # only the first query of a key is scored
            asked.add(key)


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_copy_and_reverse_answers(name):
    task = make_task(SynthConfig(task=name))
    for training in (False, True):
        tokens, answer, _ = _gen(task, 12, 40, seed=1, training=training)
        for row, ans in zip(tokens.tolist(), answer.tolist()):
            m = row.index(SEP)
            if not training:
                assert m == (40 - 2) // 2
            s = row[:m]
            want = s if name == "copy" else s[::-1]
            assert row[m + 1:2 * m + 2] == want + [EOS]
            assert all(t == PAD for t in row[2 * m + 2:])
            assert [t for t, a in enumerate(ans) if a == 0] == list(range(m + 1, 2 * m + 2))


@pytest.mark.parametrize("hints", [False, True])
def test_addition_answers_match_python_integer_addition(hints):
    cfg = SynthConfig(task="addition", digits=5, hints=hints)
    task = make_task(cfg)
    for training, level in ((True, 5), (False, 5), (False, 20)):
        tokens, answer, _ = _gen(task, 32, level, seed=2, training=training)
        for row, ans in zip(tokens.tolist(), answer.tolist()):
            plus, eq = row.index(task.plus), row.index(SEP)
            end = row.index(EOS)

            def number(part, row=row):
                digits = [t - task.digit0 for t in part if task.digit0 <= t < task.digit0 + 10]
                if hints:
                    hs = [t - task.hint0 for t in part if t >= task.hint0]
                    assert hs == list(range(hs[0], hs[0] + len(digits)))  # consecutive index hints
                return digits

            a, b, c = number(row[:plus]), number(row[plus + 1:eq]), number(row[eq + 1:end])
            if not training:
                assert len(a) == len(b) == level
            assert a[-1] != 0 and b[-1] != 0
            value = lambda ds: int("".join(str(d) for d in reversed(ds)))  # noqa: E731
            assert value(c) == value(a) + value(b)
            assert len(c) == max(len(a), len(b)) + 1
            assert [t for t, x in enumerate(ans) if x == 0] == list(range(eq + 1, end + 1))


def test_score_batch_counts_exact_matches_of_known_predictions():
    task = make_task(SynthConfig(queries=4))
    tokens, answer, _ = task.eval_batch(3, 64)
    V = task.vocab_size
    pred = tokens.clone()  # predict every next token right ...
    pos = [t for t in range(64) if answer[0, t] >= 0]
    pred[0, pos[1]] = (pred[0, pos[1]] + 1) % V  # ... but answer 1 of row 0 and answer 3 of row 2
    pos2 = [t for t in range(64) if answer[2, t] == 3]
    pred[2, pos2[0]] = (pred[2, pos2[0]] + 1) % V
    logits = torch.nn.functional.one_hot(torch.roll(pred, -1, 1), V).float()  # logits[t] predicts token t+1
    ok = score_batch(logits, tokens, answer)
    assert ok.shape == (3, 4)
    assert ok.sum() == 10 and not ok[0, 1] and not ok[2, 3]
    # a multi-token answer is wrong when any of its tokens is
    task = make_task(SynthConfig(task="copy"))
    tokens, answer, _ = task.eval_batch(2, 20)
    pred = tokens.clone()
    last = max(t for t in range(20) if answer[1, t] == 0)
    pred[1, last] = (pred[1, last] + 1) % task.vocab_size
    ok = score_batch(torch.nn.functional.one_hot(torch.roll(pred, -1, 1), task.vocab_size).float(), tokens, answer)
    assert ok.tolist() == [[True], [False]]


def test_score_batch_refuses_rows_with_different_answer_counts():
    tokens = torch.tensor([[3, 4, 5], [3, 4, 5]])
    answer = torch.tensor([[-1, 0, 1], [-1, 0, -1]])
    with pytest.raises(ValueError, match="same number of answers"):
        score_batch(torch.zeros(2, 3, 6), tokens, answer)


def test_rows_from_targets_only_answers():
    task = make_task(SynthConfig(task="copy"))
    tokens, answer, _ = task.eval_batch(2, 16)
    x, y = rows_from(tokens, answer)
    assert torch.equal(x, tokens)
    for t in range(15):
        assert (y[:, t] == torch.where(answer[:, t + 1] >= 0, tokens[:, t + 1], -100)).all()
    assert (y[:, -1] == -100).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(pairs=0), "--pairs must be an integer >= 1"),
    (dict(pairs=9, keys=8), "more than the 8 distinct keys"),
    (dict(digits=0), "--digits must be"),
    (dict(task="sort"), "unknown synthetic task 'sort'"),
    (dict(format="both"), "fact or split"),
    (dict(queries=True), "--queries must be an integer"),
    (dict(keys=300, values=300), "at most 65536 fact tokens"),
])
def test_bad_options_are_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_levels_that_cannot_hold_an_example_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        make_task(SynthConfig(queries=31)).check_level(64)
    with pytest.raises(ValueError, match="scored up to 4 x --digits = 20"):
        make_task(SynthConfig(task="addition", digits=5)).check_level(21)


def test_distance_bins_are_powers_of_two_at_every_length():
    assert distance_bins(64) == [4, 8, 16, 32, 64]
    assert distance_bins(100) == [4, 8, 16, 32, 64, 128]
    assert distance_bins(3) == [4]
    assert distance_bins(200)[:6] == distance_bins(100)  # a longer column extends the bins of a shorter one
