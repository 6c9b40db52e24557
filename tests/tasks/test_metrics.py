"""Metrics of SCROLLS's scorer and GLUE/SuperGLUE against values computed by hand (issue 10)."""

import math
import sys

import pytest

from firepe.tasks import metrics as M
from firepe.tasks.metrics import (
    METRICS,
    exact_match,
    f1,
    normalize_answer,
    rouge,
    score_predictions,
    scrolls_average,
)

try:
    import rouge_score  # noqa: F401

    HAS_ROUGE = True
except ImportError:
    HAS_ROUGE = False
needs_rouge = pytest.mark.skipif(not HAS_ROUGE, reason="rouge-score is not installed")


# ---------------------------------------------------------------------------- normalization, EM, F1


@pytest.mark.parametrize("text, expected", [
    ("The Cat!", "cat"),                            # case, article, punctuation
    ("  An   apple,  a day. ", "apple day"),        # articles a/an, whitespace collapsed and trimmed
    ("theater thematic", "theater thematic"),       # articles only as whole words
    ("the-end", "theend"),                          # punctuation goes before articles are looked for
    ("A", ""),
    ("Hello,\tWorld\n", "hello world"),
    ("it's 3.5%", "its 35"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_normalized_and_best_reference():
    assert exact_match("The cat.", ["cat"]) == 1.0
    assert exact_match("cat", ["dog", "a  CAT!"]) == 1.0      # the second reference matches
    assert exact_match("cat", ["dog", "cats"]) == 0.0
    assert exact_match("", [""]) == 1.0                       # two empty strings are equal
    assert exact_match("the", [""]) == 1.0                    # "the" normalizes to ""
    assert exact_match("", ["cat"]) == 0.0
    assert exact_match("cat", "cat") == 1.0                   # a bare string is one reference


def test_f1_hand_values():
    # p = [cat, sat], r = [cat, sat, down]: common 2, P = 1, R = 2/3
    assert f1("the cat sat", ["cat sat down"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    # multiset intersection: p = [x, x, y], r = [x, x, z] -> common 2 (a set would give 1)
    assert f1("x x y", ["x x z"]) == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    # p = [x, x, y], r = [x, z]: common min(2, 1) = 1, P = 1/3, R = 1/2
    assert f1("x x y", ["x z"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_f1_max_over_references():
    # vs "cat": P = 1/2, R = 1 -> 2/3; vs "dog sat": P = R = 1/2 -> 1/2; the best one wins
    assert f1("cat sat", ["cat", "dog sat"]) == pytest.approx(2 / 3)
    assert f1("cat sat", ["dog", "Cat, sat."]) == 1.0
    assert f1("dog", ["cat", "bird"]) == 0.0


def test_f1_empty_strings_score_zero():
    # SQuAD v1 / SCROLLS: no shared token -> 0, even for two empty strings
    assert f1("", [""]) == 0.0
    assert f1("", ["cat"]) == 0.0
    assert f1("cat", [""]) == 0.0
    assert f1("the a an", ["cat"]) == 0.0


def test_em_f1_corpus_means_in_percent():
    preds = ["cat", "the cat sat", "dog"]
    refs = [["A cat"], ["cat sat down"], ["cat"]]
    out = score_predictions(["em", "f1"], preds, refs)
    assert out["em"] == pytest.approx(100 * (1 + 0 + 0) / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)
    assert set(out) == {"em", "f1"}


# ---------------------------------------------------------------------------- ROUGE


@needs_rouge
def test_rouge_hand_counts():
    # tokens (no article removal in ROUGE): p = the cat sat on the mat, r = the cat lay on the mat
    # unigrams: the x2, cat, on, mat -> 5 of 6 each side; bigrams: the-cat, on-the, the-mat -> 3 of 5;
    # LCS: the cat on the mat -> 5
    s = rouge("the cat sat on the mat", ["the cat lay on the mat"])
    assert s["rouge1"] == pytest.approx(5 / 6)
    assert s["rouge2"] == pytest.approx(3 / 5)
    assert s["rougeL"] == pytest.approx(5 / 6)
    assert set(s) == {"rouge1", "rouge2", "rougeL"}


@needs_rouge
def test_rouge_case_punctuation_no_stemmer_empty():
    assert rouge("Cat, sat!", ["cat sat"]) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # without a stemmer "cats"/"cat" and "running"/"run" do not match
    assert rouge("cats running", ["cat run"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    assert rouge("", ["cat sat"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def _fm(overlap, n_pred, n_ref):
    p, r = overlap / n_pred, overlap / n_ref
    return 0.0 if overlap == 0 else 2 * p * r / (p + r)


@needs_rouge
def test_rouge_max_per_type_over_references():
    # p = alpha beta gamma delta
    # ref1 = alpha beta xi psi: unigrams 2/4,4; bigrams {alpha beta} 1 of 3,3; LCS 2
    # ref2 = delta gamma beta:  unigrams 3 of 4,3; bigrams none; LCS 1
    s = rouge("alpha beta gamma delta", ["alpha beta xi psi", "delta gamma beta"])
    assert s["rouge1"] == pytest.approx(_fm(3, 4, 3))      # from ref2
    assert s["rouge2"] == pytest.approx(_fm(1, 3, 3))      # from ref1
    assert s["rougeL"] == pytest.approx(_fm(2, 4, 4))      # from ref1


@needs_rouge
def test_rgm_is_geometric_mean_of_corpus_means():
    preds = ["alpha beta", "alpha beta gamma"]
    refs = [["alpha beta"], ["alpha gamma"]]
    # example 1: all 1; example 2: unigrams 2 of 3,2 -> 0.8, bigrams none -> 0, LCS 2 -> 0.8
    r1, r2, rl = 100 * (1 + 0.8) / 2, 100 * (1 + 0) / 2, 100 * (1 + 0.8) / 2
    out = score_predictions(["rgm"], preds, refs)
    assert out["rouge1"] == pytest.approx(r1)
    assert out["rouge2"] == pytest.approx(r2)
    assert out["rougeL"] == pytest.approx(rl)
    assert out["rgm"] == pytest.approx((r1 * r2 * rl) ** (1 / 3))
    # not the mean of per-example geometric means (which would be (100 + 0) / 2)
    assert out["rgm"] != pytest.approx(50.0)
    assert set(out) == {"rgm", "rouge1", "rouge2", "rougeL"}


@needs_rouge
def test_scrolls_scorer_documented_example():
    """The example in the docstring of SCROLLS's metrics/scrolls.py (tau/scrolls on the Hugging Face
    hub): rouge 72.2222 / 33.3333 / 72.2222, geometric mean 55.8136, exact_match 33.3333, f1 72.2222."""
    preds = ["exact match example", "hello there", "general kenobi"]
    refs = [["exact match example"], ["hello", "hi there"], ["commander kenobi"]]
    out = score_predictions(["rgm", "em", "f1"], preds, refs)
    assert out["rouge1"] == pytest.approx(72.2222, abs=1e-4)
    assert out["rouge2"] == pytest.approx(33.3333, abs=1e-4)
    assert out["rougeL"] == pytest.approx(72.2222, abs=1e-4)
    assert out["rgm"] == pytest.approx(55.8136, abs=1e-4)
    assert out["em"] == pytest.approx(33.3333, abs=1e-4)
    assert out["f1"] == pytest.approx(72.2222, abs=1e-4)


@pytest.fixture
def no_rouge(monkeypatch):
    M._rouge_scorer.cache_clear()
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    yield
    M._rouge_scorer.cache_clear()


def test_rouge_missing_package_message(no_rouge):
    msg = "metric rgm needs the rouge-score package: pip install 'firepe[tasks]'."
    with pytest.raises(ValueError, match=r"^" + msg.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        rouge("a", ["a"])
    with pytest.raises(ValueError, match="needs the rouge-score package"):
        score_predictions(["rgm"], ["a"], [["a"]])


# ---------------------------------------------------------------------------- classification


def test_accuracy_strip_exact_any_reference():
    preds = [" yes\n", "No", "maybe", "no"]
    refs = [["yes"], ["no"], ["perhaps", "maybe"], ["No"]]
    # case-sensitive: "No" != "no"; whitespace around the prediction is ignored
    assert score_predictions("accuracy", preds, refs) == {"accuracy": pytest.approx(100 * 2 / 4)}


def test_f1_binary_positive_class():
    refs = [["equivalent"], ["equivalent"], ["not_equivalent"], ["not_equivalent"], ["equivalent"]]
    preds = ["equivalent ", "not_equivalent", "equivalent", "not_equivalent", "\nequivalent"]
    tp, fp, fn = 2, 1, 1
    out = score_predictions(["accuracy", "f1_binary:equivalent"], preds, refs,
                            labels=["not_equivalent", "equivalent"])
    assert out["f1_binary:equivalent"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert out["accuracy"] == pytest.approx(100 * 3 / 5)
    # no positive anywhere -> 0
    assert score_predictions(["f1_binary:equivalent"], ["no"], [["no"]])["f1_binary:equivalent"] == 0.0


def _mcc(tp, tn, fp, fn):
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def test_mcc_hand_value_and_symmetry():
    labels = ["unacceptable", "acceptable"]
    refs = [["acceptable"]] * 3 + [["unacceptable"]] * 2
    preds = ["acceptable", "acceptable", "unacceptable", "unacceptable", "acceptable"]
    expected = 100 * _mcc(tp=2, tn=1, fp=1, fn=1)
    assert expected == pytest.approx(100 / 6)
    assert score_predictions(["mcc"], preds, refs, labels=labels)["mcc"] == pytest.approx(expected)
    # the positive label does not change MCC
    assert score_predictions(["mcc"], preds, refs, labels=labels[::-1])["mcc"] == pytest.approx(expected)
    assert score_predictions(["mcc"], preds, refs)["mcc"] == pytest.approx(expected)


def test_mcc_prediction_outside_labels_is_negative():
    refs = [["acceptable"]] * 3 + [["unacceptable"]] * 2
    preds = ["acceptable", "acceptable", "garbage", "unacceptable", "acceptable"]
    # labels given: negative = labels[0] = unacceptable -> same counts as above
    out = score_predictions(["mcc"], preds, refs, labels=["unacceptable", "acceptable"])
    assert out["mcc"] == pytest.approx(100 * _mcc(tp=2, tn=1, fp=1, fn=1))
    # no labels: the pair is sorted (acceptable, unacceptable), so "garbage" counts as acceptable;
    # with unacceptable positive: TP = 1, FN = 1, FP = 0, TN = 3
    assert score_predictions(["mcc"], preds, refs)["mcc"] == pytest.approx(100 * _mcc(tp=1, tn=3, fp=0, fn=1))


def test_mcc_constant_inputs_zero():
    refs = [["acceptable"], ["unacceptable"], ["acceptable"]]
    assert score_predictions(["mcc"], ["acceptable"] * 3, refs)["mcc"] == 0.0
    assert score_predictions(["mcc"], ["acceptable", "unacceptable", "x"], [["acceptable"]] * 3)["mcc"] == 0.0


# ---------------------------------------------------------------------------- correlations


def test_pearson_hand_value_and_parsing():
    # x = 1 2 3 4, y = 2 4 5 9: centred x = -1.5 -.5 .5 1.5, y = -3 -1 0 4
    # sum xy = 11, sum xx = 5, sum yy = 26
    preds = [" 1.0", "2", "3e0", "4\n"]
    refs = [["2"], ["4.0"], ["5"], ["9"]]
    assert score_predictions(["pearson"], preds, refs)["pearson"] == pytest.approx(100 * 11 / math.sqrt(5 * 26))


def test_pearson_unparsable_prediction_counts_as_zero():
    # x = 0 2 3 4 (junk -> 0), mean 2.25: centred -2.25 -.25 .75 1.75, y centred -3 -1 0 4
    # sum xy = 6.75 + .25 + 0 + 7 = 14, sum xx = 8.75, sum yy = 26
    refs = [["2"], ["4"], ["5"], ["9"]]
    expected = 100 * 14 / math.sqrt(8.75 * 26)
    for junk in ["junk", "", "nan", "inf"]:
        out = score_predictions(["pearson"], [junk, "2", "3", "4"], refs)
        assert out["pearson"] == pytest.approx(expected)


def test_spearman_average_ranks_with_ties():
    # x = 1 2 2 3 -> ranks 1 2.5 2.5 4; y = 1 3 2 4 -> ranks 1 3 2 4 (means 2.5)
    # centred: x -1.5 0 0 1.5, y -1.5 .5 -.5 1.5: sum xy = 4.5, sum xx = 4.5, sum yy = 5
    out = score_predictions(["spearman", "pearson"], ["1", "2", "2", "3"], [["1"], ["3"], ["2"], ["4"]])
    assert out["spearman"] == pytest.approx(100 * 4.5 / math.sqrt(4.5 * 5))
    # monotone but not linear: Spearman 100, Pearson below
    out = score_predictions(["spearman", "pearson"], ["1", "2", "3", "10"], [["1"], ["4"], ["9"], ["16"]])
    assert out["spearman"] == pytest.approx(100.0)
    assert out["pearson"] < 99.0
    # reversed order -> -100
    out = score_predictions(["spearman"], ["3", "2", "1"], [["1"], ["2"], ["3"]])
    assert out["spearman"] == pytest.approx(-100.0)


def test_correlations_constant_inputs_zero():
    refs = [["1"], ["2"], ["3"]]
    assert score_predictions(["pearson", "spearman"], ["0.1"] * 3, refs) == {"pearson": 0.0, "spearman": 0.0}
    assert score_predictions(["pearson"], ["1", "2", "3"], [["2.5"]] * 3) == {"pearson": 0.0}
    assert score_predictions(["pearson"], ["1"], [["1"]]) == {"pearson": 0.0}


# ---------------------------------------------------------------------------- MultiRC


def test_multirc_em_groups():
    groups = ["q1", "q1", "q2", "q2", "q2", None, None]
    refs = [["True"], ["False"], ["True"], ["False"], ["False"], ["True"], ["False"]]
    preds = ["True", "False", "True", "True", "False", "True", "True"]
    # q1 all right; q2 one wrong; each None example is its own group: right, wrong -> 2 of 4 groups
    out = score_predictions(["multirc_em", "multirc_f1a"], preds, refs, groups=groups)
    assert out["multirc_em"] == pytest.approx(100 * 2 / 4)
    # positive "True": TP = 3 (rows 0, 2, 5), FP = 2 (rows 3, 6), FN = 0
    assert out["multirc_f1a"] == pytest.approx(100 * 2 * 3 / (2 * 3 + 2 + 0))


def test_multirc_em_group_order_irrelevant():
    groups = ["a", "b", "a", "b"]
    refs = [["True"], ["True"], ["False"], ["True"]]
    preds = ["True", "False", "False", "True"]
    assert score_predictions(["multirc_em"], preds, refs, groups=groups)["multirc_em"] == pytest.approx(50.0)


# ---------------------------------------------------------------------------- SCROLLS average, names


def test_scrolls_average():
    assert scrolls_average({"gov_report": 10.0, "qasper": 20, "quality": 36.0}) == pytest.approx(22.0)


def test_metrics_tuple_and_duplicate_requests():
    assert set(METRICS) == {"em", "f1", "rgm", "accuracy", "mcc", "pearson", "spearman", "multirc_em",
                            "multirc_f1a"}
    assert score_predictions(["em", "em"], ["a"], [["b"]]) == {"em": 0.0}


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(metrics=["bleu"]), r"unknown metric 'bleu'; valid: em, f1, rgm, accuracy, .*f1_binary:<label>\."),
    (dict(metrics=[]), r"no metric requested; valid: em, f1"),
    (dict(metrics=["f1_binary:"]), r"metric 'f1_binary:' names no positive label"),
    (dict(predictions=[], references=[]), r"no predictions to score"),
    (dict(references=[["a"]]), r"2 predictions but 1 reference lists"),
    (dict(references=[["a"], []]), r"example 1: no reference to score against"),
    (dict(references=[["a"], [3]]), r"example 1: reference 3 is a int"),
    (dict(predictions=["a", None]), r"example 1: prediction None is a NoneType"),
    (dict(groups=["g"]), r"2 predictions but 1 groups"),
    (dict(metrics=["multirc_em"]), r"metric multirc_em needs groups"),
    (dict(metrics=["mcc"], labels=["a", "b", "c"]), r"mcc is binary and needs two labels .* got 3"),
    (dict(metrics=["mcc"], references=[["x"], ["y"]], labels=["a", "b"]), r"reference 'x' is outside the labels"),
    (dict(metrics=["mcc"], predictions=["a", "b", "c"], references=[["x"], ["y"], ["z"]]),
     r"references hold 3 labels \('x', 'y', 'z'\); pass the two labels"),
    (dict(metrics=["f1_binary:equivalnt"], labels=["not_equivalent", "equivalent"]),
     r"positive label 'equivalnt' is not in the label set not_equivalent, equivalent"),
    (dict(metrics=["pearson"], references=[["1"], ["high"]]), r"example 1: reference 'high' is not a finite number"),
])
def test_score_errors(kwargs, match):
    args = dict(metrics=["em"], predictions=["a", "b"], references=[["a"], ["b"]])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        score_predictions(**args)


def test_per_example_errors():
    with pytest.raises(ValueError, match="no reference to score against"):
        exact_match("a", [])
    with pytest.raises(ValueError, match="no reference to score against"):
        f1("a", [])
    with pytest.raises(ValueError, match="prediction 3 is a int"):
        f1(3, ["a"])


def test_scrolls_average_errors():
    with pytest.raises(ValueError, match="no dataset scores to average"):
        scrolls_average({})
    with pytest.raises(ValueError, match="score of 'qasper' is nan; the SCROLLS average needs finite numbers"):
        scrolls_average({"qasper": float("nan")})
    with pytest.raises(ValueError, match="score of 'qasper' is '3'"):
        scrolls_average({"qasper": "3"})
