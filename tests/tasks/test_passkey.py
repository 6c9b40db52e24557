"""Passkey generation: deterministic, the key exactly once at the requested depth, exact lengths."""

import pytest

from firepe.data import ByteTokenizer
from firepe.tasks import PasskeyTask, parse_depths
from firepe.tasks.passkey import QUESTION, key_sentence

TOK = ByteTokenizer()
FILLER = TOK.encode("x = 1\nprint(x)\n" * 40)


def _text(ids):
    return TOK.decode(ids)


@pytest.mark.parametrize("length", [128, 256, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_key_once_at_depth_and_exact_length(length, depth):
    task = PasskeyTask(TOK, FILLER, seed=3)
    ex = task.example(7, length, depth)
    assert len(ex.prompt) == length
    text = _text(ex.prompt)
    key = ex.references[0]
    assert len(key) == 5 and key.isdigit()
    assert text.count(key) == 1
    assert text.count("pass key is") == 2  # the key sentence, and the question that repeats its prefix
    assert text.endswith(QUESTION) and QUESTION.endswith("The pass key is ")
    # the key sentence starts after round(depth * F) filler tokens, F = all filler tokens
    n_filler = length - len(TOK.encode(key_sentence(key))) - len(TOK.encode(QUESTION))
    assert text.index(key_sentence(key)) == round(depth * n_filler)
    assert _text(ex.answer[:-1]) == key and ex.answer[-1] == TOK.eos_id


def test_deterministic_and_same_example_across_lengths_and_depths():
    a, b = PasskeyTask(TOK, FILLER, seed=1), PasskeyTask(TOK, FILLER, seed=1)
    assert a.example(4, 300, 0.5) == b.example(4, 300, 0.5)
    keys = {a.example(4, n, d).references for n in (100, 300, 900) for d in (0, 0.5, 1)}
    assert len(keys) == 1  # one example index -> one key everywhere
    assert PasskeyTask(TOK, FILLER, seed=2).example(4, 300, 0.5).references != a.example(4, 300, 0.5).references \
        or PasskeyTask(TOK, FILLER, seed=2).example(4, 300, 0.5).prompt != a.example(4, 300, 0.5).prompt
    assert len({a.example(i, 300, 0.5).references for i in range(20)}) > 10


def test_key_redrawn_when_the_filler_holds_it():
    # a filler made of one 5-digit number: the first key drawn for this seed must not be reused
    first = PasskeyTask(TOK, FILLER, seed=0).example(0, 200, 0.5).references[0]
    filler = TOK.encode(f"{first} " * 100)
    ex = PasskeyTask(TOK, filler, seed=0).example(0, 200, 0.5)
    assert ex.references[0] != first
    assert _text(ex.prompt).count(ex.references[0]) == 1


def test_training_examples_fit_length_plus_one():
    task = PasskeyTask(TOK, FILLER)
    ex = task.example(0, 128, 0.2, for_training=True)
    assert len(ex.prompt) + len(ex.answer) == 129


def test_classic_filler_and_errors():
    task = PasskeyTask(TOK)
    assert "The grass is green." in _text(task.example(0, 400, 0.5).prompt)
    with pytest.raises(ValueError, match="at least"):
        task.example(0, 40, 0.5)
    with pytest.raises(ValueError, match="at least 16"):
        PasskeyTask(TOK, [1, 2, 3])
    with pytest.raises(ValueError, match="seed"):
        PasskeyTask(TOK, FILLER, seed=-1)


def test_parse_depths():
    assert parse_depths("1,0,0.5,0.5") == [0.0, 0.5, 1.0]
    for bad in ("", "1.5", "-0.1", "nan", "a", ","):
        with pytest.raises(ValueError, match="depths"):
            parse_depths(bad)


def test_postprocess_keeps_the_leading_digits():
    assert PasskeyTask.postprocess(" 48213. Remember it.") == "48213"
    assert PasskeyTask.postprocess("48213") == "48213"
    assert PasskeyTask.postprocess(" no digits ") == "no digits"
