"""Metrics of SCROLLS's own scorer and of GLUE/SuperGLUE, reported in percent.

Per example (fractions in 0..1):

* :func:`normalize_answer` -- SQuAD normalization: lower case, ASCII punctuation
  (``string.punctuation``) removed, the articles ``a``/``an``/``the`` removed as whole words,
  whitespace collapsed (in that order, as SQuAD's script, so ``"the-end"`` -> ``"theend"``).
* :func:`exact_match` -- ``max_r [normalize(p) == normalize(r)]`` over the references ``r``.
* :func:`f1` -- SQuAD v1 unigram F1 of the normalized tokens, max over references::

      common = |Counter(p_tokens) & Counter(r_tokens)|     (multiset intersection)
      P = common / |p_tokens|,  R = common / |r_tokens|,  F1 = 2 P R / (P + R),  F1 = 0 when common = 0

  Empty strings: as SQuAD v1 and SCROLLS's ``f1.py``, a prediction or reference with no token
  left after normalization shares no token, so F1 = 0 -- even ``f1("", [""]) == 0`` (while
  ``exact_match("", [""]) == 1``: two empty strings are equal).
* :func:`rouge` -- ROUGE-1/2/L F-measures of the ``rouge-score`` library, configured as SCROLLS's
  scorer (``metrics/scrolls.py`` of the ``tau/scrolls`` Hugging Face dataset, the file the official
  evaluator ``tau-nlp/scrolls/evaluator/dataset_evaluator.py`` downloads): ``RougeScorer`` with
  ``use_stemmer=False``, ``score(target=reference, prediction=prediction)``, several references
  combined by the *max per ROUGE type* (ROUGE-1 and ROUGE-2 may come from different references).
  The geometric mean uses ``rougeL`` (LCS over the whole text), not ``rougeLsum``; SCROLLS's
  sentence splitting with NLTK before scoring only changes ``rougeLsum`` (the library's tokenizer
  treats newlines as any other separator), so it is not needed here.

Corpus level, :func:`score_predictions` (percent; per-example metrics are means over examples):

* ``em``, ``f1`` -- ``100 * mean`` of the per-example values above (SCROLLS's ``exact_match``, ``f1``).
* ``rgm`` -- SCROLLS's ``rouge/geometric_mean``: ``R_t = 100 * mean_examples(max_refs ROUGE_t)`` for
  t in (rouge1, rouge2, rougeL), then ``rgm = (R_1 * R_2 * R_L) ** (1/3)``; ``rouge1``, ``rouge2``,
  ``rougeL`` (the ``R_t``) are returned with it. SCROLLS rounds to 4 decimals; nothing is rounded here.
* ``accuracy`` -- ``100 * mean [p.strip() == r.strip() for some reference r]`` (case-sensitive: the
  answer of a classification task is the label's name).
* ``f1_binary:<label>`` -- F1 of the positive class ``<label>`` (MRPC: ``f1_binary:equivalent``, QQP:
  ``f1_binary:duplicate``): ``100 * 2 TP / (2 TP + FP + FN)`` with ``p.strip() == label`` as the
  prediction and ``r.strip() == label`` as the truth (``r``: the first reference); 0 when no
  prediction and no reference is positive (2 TP + FP + FN = 0). With ``labels``, ``<label>`` must be
  one of them (a typo would otherwise score 0 silently).
* ``mcc`` -- Matthews correlation (CoLA), binary, ``100 * (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``.
  The label pair is ``labels`` (negative ``labels[0]``, positive ``labels[1]``) or, without
  ``labels``, the sorted distinct first references (at most two). A prediction outside the pair
  counts as the *negative* label (as a classifier that abstains says "no"). The value does not
  depend on which label is called positive, only this fallback does. 0 when a factor of the
  denominator is 0 (all predictions, or all references, in one class).
* ``pearson``, ``spearman`` -- STS-B correlations (``100 * r``): predictions parsed as floats after
  ``strip()``; one that does not parse, or parses to nan/inf, counts as 0.0 (the bottom of the STS-B
  scale), so a model that emits junk is penalized rather than dropped. References must parse (an
  error otherwise). Spearman is the Pearson correlation of the average ranks (ties get the mean of
  the ranks they span, 1-based). 0 when either side is constant (zero variance).
* ``multirc_em`` -- MultiRC exact match: a group (one question, ``groups[i]``) is right when all of its
  answer options are right (``accuracy``'s rule); ``100 * mean over groups``. An example whose group
  is ``None`` is a group of its own.
* ``multirc_f1a`` -- MultiRC F1a: ``f1_binary:True`` over all answer options (Hugging Face
  ``super_glue``/``multirc`` labels are ``False``/``True``).

Correlations (``mcc``, ``pearson``, ``spearman``) are in -100..100, everything else in 0..100.
"""

from __future__ import annotations

import math
import numbers
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["METRICS", "F1_BINARY", "ROUGE_TYPES", "normalize_answer", "exact_match", "f1", "rouge",
           "check_metric", "score_predictions", "scrolls_average"]

#: metric names with no argument; ``f1_binary:<label>`` (:data:`F1_BINARY` + a label) is valid too
METRICS = ("em", "f1", "rgm", "accuracy", "mcc", "pearson", "spearman", "multirc_em", "multirc_f1a")
#: prefix of the positive-class F1 metric, ``f1_binary:<positive label>``
F1_BINARY = "f1_binary:"
#: the ROUGE types whose geometric mean is ``rgm``
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
#: positive label of MultiRC (Hugging Face ClassLabel names False/True)
MULTIRC_POSITIVE = "True"

_VALID = ", ".join([*METRICS, F1_BINARY + "<label>"])
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


# ---------------------------------------------------------------------------- per example


def normalize_answer(s: str) -> str:
    """SQuAD normalization: lower case, ASCII punctuation removed, articles a/an/the removed,
    whitespace collapsed to single spaces (no leading or trailing space)."""
    s = s.lower().translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _refs(references: Sequence[str] | str, where: str = "") -> list[str]:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError(f"{where}no reference to score against; each example needs at least one reference.")
    for r in refs:
        if not isinstance(r, str):
            raise ValueError(f"{where}reference {r!r:.60} is a {type(r).__name__}; references must be strings.")
    return refs


def _pred(prediction: Any, where: str = "") -> str:
    if not isinstance(prediction, str):
        raise ValueError(f"{where}prediction {prediction!r:.60} is a {type(prediction).__name__}; predictions must "
                         "be strings.")
    return prediction


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals some normalized reference, else 0.0."""
    p = normalize_answer(_pred(prediction))
    return float(any(p == normalize_answer(r) for r in _refs(references)))


def _f1_one(p_tokens: list[str], r_tokens: list[str]) -> float:
    common = sum((Counter(p_tokens) & Counter(r_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p_tokens), common / len(r_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD v1 unigram F1 (0..1) of normalized tokens, max over references; 0 when no token is
    shared (so also when either side is empty after normalization)."""
    p_tokens = normalize_answer(_pred(prediction)).split()
    return max(_f1_one(p_tokens, normalize_answer(r).split()) for r in _refs(references))


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ValueError("metric rgm needs the rouge-score package: pip install 'firepe[tasks]'.") from None
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0..1) as SCROLLS scores them: ``rouge-score`` without stemmer, each
    type the max over the references on its own. Keys: ``rouge1``, ``rouge2``, ``rougeL``."""
    prediction = _pred(prediction)
    refs = _refs(references)
    scorer = _rouge_scorer()
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for r in refs:
        scores = scorer.score(r, prediction)  # (target, prediction)
        for t in ROUGE_TYPES:
            best[t] = max(best[t], float(scores[t].fmeasure))
    return best


# ---------------------------------------------------------------------------- statistics


def _binary_counts(pred_pos: np.ndarray, true_pos: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum(pred_pos & true_pos))
    fp = int(np.sum(pred_pos & ~true_pos))
    fn = int(np.sum(~pred_pos & true_pos))
    tn = int(np.sum(~pred_pos & ~true_pos))
    return tp, fp, fn, tn


def _f1_positive(pred_pos: np.ndarray, true_pos: np.ndarray) -> float:
    tp, fp, fn, _ = _binary_counts(pred_pos, true_pos)
    den = 2 * tp + fp + fn
    return 0.0 if den == 0 else 2 * tp / den


def _mcc(pred_pos: np.ndarray, true_pos: np.ndarray) -> float:
    tp, fp, fn, tn = _binary_counts(pred_pos, true_pos)
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return 0.0 if den == 0 else (tp * tn - fp * fn) / math.sqrt(den)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    # constant input: zero variance, correlation undefined -> 0 (checked exactly, not via a
    # centred sum that rounding can leave a hair above zero)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    r = float(np.sum(xc * yc) / math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc))))
    return max(-1.0, min(1.0, r))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_run = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(x)]
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = run_rank[np.cumsum(new_run) - 1]
    return ranks


def _to_float_prediction(text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        return 0.0
    return v if math.isfinite(v) else 0.0


def _to_float_reference(text: str, i: int) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise ValueError(f"example {i}: reference {text!r:.60} is not a finite number; pearson and spearman need "
                         "numeric references (STS-B scores).")
    return v


# ---------------------------------------------------------------------------- corpus level


def check_metric(name: str) -> str:
    """``name`` if it is a valid metric name, else one ``ValueError`` listing the valid ones."""
    if isinstance(name, str) and name.startswith(F1_BINARY):
        if not name[len(F1_BINARY):].strip():
            raise ValueError(f"metric {name!r} names no positive label; write {F1_BINARY}<label>, e.g. "
                             f"{F1_BINARY}equivalent.")
        return name
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid: {_VALID}.")
    return name


def _correct(prediction: str, refs: list[str]) -> bool:
    p = prediction.strip()
    return any(p == r.strip() for r in refs)


def score_predictions(metrics: Sequence[str] | str, predictions: Sequence[str],
                      references: Sequence[Sequence[str]], groups: Sequence[str | None] | None = None,
                      labels: Sequence[str] | None = None) -> dict[str, float]:
    """Corpus-level scores in percent, one entry per requested metric (see the module docstring for
    each formula), plus ``rouge1``/``rouge2``/``rougeL`` when ``rgm`` is asked.

    ``predictions[i]`` is scored against ``references[i]`` (one or more strings; a bare string is
    one reference). ``groups[i]`` is the MultiRC question of example ``i`` (needed by
    ``multirc_em``); ``labels`` the label set of a classification task (``mcc``'s label pair).
    ``metrics`` may be one name. Bad input -- no metric, an unknown metric, no predictions, lengths
    that differ, an example without references -- is one ``ValueError``.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError(f"no metric requested; valid: {_VALID}.")
    for name in names:
        check_metric(name)
    preds = [_pred(p, f"example {i}: ") for i, p in enumerate(predictions)]
    if not preds:
        raise ValueError("no predictions to score (the predictions list is empty).")
    if len(references) != len(preds):
        raise ValueError(f"{len(preds)} predictions but {len(references)} reference lists; give one reference "
                         "list per prediction.")
    refs = [_refs(r, f"example {i}: ") for i, r in enumerate(references)]
    if groups is not None and len(groups) != len(preds):
        raise ValueError(f"{len(preds)} predictions but {len(groups)} groups; give one group per prediction.")
    if labels is not None:
        labels = list(labels)

    out: dict[str, float] = {}
    for name in names:
        if name in out:
            continue
        if name == "em":
            out[name] = 100.0 * float(np.mean([exact_match(p, r) for p, r in zip(preds, refs)]))
        elif name == "f1":
            out[name] = 100.0 * float(np.mean([f1(p, r) for p, r in zip(preds, refs)]))
        elif name == "rgm":
            per = [rouge(p, r) for p, r in zip(preds, refs)]
            means = {t: 100.0 * float(np.mean([s[t] for s in per])) for t in ROUGE_TYPES}
            out.update(means)
            out[name] = float((means["rouge1"] * means["rouge2"] * means["rougeL"]) ** (1.0 / 3.0))
        elif name == "accuracy":
            out[name] = 100.0 * float(np.mean([_correct(p, r) for p, r in zip(preds, refs)]))
        elif name.startswith(F1_BINARY) or name == "multirc_f1a":
            positive = name[len(F1_BINARY):].strip() if name.startswith(F1_BINARY) else MULTIRC_POSITIVE
            if labels is not None and positive not in labels:
                raise ValueError(f"metric {name}: the positive label {positive!r} is not in the label set "
                                 f"{', '.join(labels)}.")
            pred_pos = np.array([p.strip() == positive for p in preds], dtype=bool)
            true_pos = np.array([r[0].strip() == positive for r in refs], dtype=bool)
            out[name] = 100.0 * _f1_positive(pred_pos, true_pos)
        elif name == "mcc":
            out[name] = 100.0 * _mcc_score(preds, refs, labels)
        elif name in ("pearson", "spearman"):
            x = np.array([_to_float_prediction(p) for p in preds], dtype=np.float64)
            y = np.array([_to_float_reference(r[0], i) for i, r in enumerate(refs)], dtype=np.float64)
            if name == "spearman":
                x, y = _average_ranks(x), _average_ranks(y)
            out[name] = 100.0 * _pearson(x, y)
        elif name == "multirc_em":
            if groups is None:
                raise ValueError("metric multirc_em needs groups (the question of each answer option); none were "
                                 "given.")
            by_group: dict[object, bool] = {}
            for i, (p, r, g) in enumerate(zip(preds, refs, groups)):
                key: object = ("example", i) if g is None else ("group", g)
                by_group[key] = by_group.get(key, True) and _correct(p, r)
            out[name] = 100.0 * float(np.mean(list(by_group.values())))
    return out


def _mcc_score(preds: list[str], refs: list[list[str]], labels: list[str] | None) -> float:
    truths = [r[0].strip() for r in refs]
    if labels is not None:
        if len(labels) != 2:
            raise ValueError(f"metric mcc is binary and needs two labels (negative, positive), got {len(labels)}: "
                             f"{', '.join(map(repr, labels))}.")
        pair = [str(lab).strip() for lab in labels]
        outside = sorted({t for t in truths if t not in pair})
        if outside:
            raise ValueError(f"metric mcc: reference {outside[0]!r} is outside the labels {pair[0]!r}, {pair[1]!r}.")
    else:
        pair = sorted(set(truths))
        if len(pair) > 2:
            raise ValueError(f"metric mcc is binary but the references hold {len(pair)} labels "
                             f"({', '.join(map(repr, pair))}); pass the two labels.")
    positive = pair[-1]  # with one distinct reference label it is the positive one; MCC is then 0 anyway
    # a prediction outside the pair is not `positive`, so it counts as the negative label
    pred_pos = np.array([p.strip() == positive for p in preds], dtype=bool)
    true_pos = np.array([t == positive for t in truths], dtype=bool)
    return _mcc(pred_pos, true_pos)


def scrolls_average(scores: Mapping[str, float]) -> float:
    """SCROLLS benchmark score: the plain mean of the per-dataset main scores (``{dataset: score}``,
    each already in percent; the official average is over all seven datasets, the mean of whatever
    is given here). An empty mapping or a non-finite score is a ``ValueError``."""
    if not scores:
        raise ValueError("no dataset scores to average (the SCROLLS average needs at least one).")
    values = []
    for name, v in scores.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"score of {name!r} is {v!r}; the SCROLLS average needs finite numbers.")
        values.append(float(v))
    return sum(values) / len(values)
