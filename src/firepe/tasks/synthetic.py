"""Synthetic length-generalization tasks, generated offline and deterministically from a seed.

Each task has a small vocabulary of its own (not bytes of text), so a tiny GPT trained from scratch
learns it in minutes on a CPU; the loss is on the answer tokens only. :class:`SynthConfig` names a
task and its options; :func:`make_task` builds its generator (a :class:`~firepe.tasks.synth_base.SynthTask`,
one module per family: ``recall``, ``strings`` (copy, reverse), ``arithmetic`` (addition), ``ruler`` (the
RULER-style needle, variable-tracking and word-extraction tasks)). The model reads ``tokens`` and is
trained and scored on predicting every answer token from the tokens before it; an answer is correct
when every one of its tokens is the argmax (one teacher-forced pass, which is exactly greedy decoding's exact match).

Evaluation examples depend on ``eval_seed`` and the level only (never on the training seed), so every
encoding and every seed is scored on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .arithmetic import AdditionTask
from .recall import RecallTask
from .ruler import NEEDLE_TASKS, RULER_TASKS, WORD_TASKS, NeedleTask, WordTask, check_ruler_options
from .strings import StringTask
from .synth_base import EOS, PAD, SEP, SynthTask, bin_of, distance_bins, rows_from, score_batch

__all__ = ["SynthConfig", "SynthTask", "make_task", "SYNTH_TASKS", "TASK_OPTIONS", "GENERATORS",
           "PAD", "SEP", "EOS", "rows_from", "score_batch", "distance_bins", "bin_of"]

#: task name -> generator class
GENERATORS: dict[str, type[SynthTask]] = {"recall": RecallTask, "copy": StringTask, "reverse": StringTask,
                                          "addition": AdditionTask}
GENERATORS.update({**{t: NeedleTask for t in NEEDLE_TASKS}, **{t: WordTask for t in WORD_TASKS}})  # RULER-style
SYNTH_TASKS = tuple(GENERATORS)
FORMATS = ("fact", "split")


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


#: the options some tasks read only (given another value for another task, they are refused)
TASK_OPTIONS = {**{k: ("recall",) for k in ("pairs", "keys", "values", "queries", "format", "filler")},
                "symbols": ("copy", "reverse"), "digits": ("addition",), "hints": ("addition",),
                "position_ids": ("addition",), "max_offset": ("addition",)}
TASK_OPTIONS.update({"noise": NEEDLE_TASKS, "names": NEEDLE_TASKS, "value_len": NEEDLE_TASKS,
                     "needles": ("niah_multikey", "niah_multivalue", "niah_multiquery"),
                     "query_keys": ("niah_multiquery",), "chains": ("vartrack",), "hops": ("vartrack",),
                     "words": WORD_TASKS, "top": WORD_TASKS})
#: the initialization of recall --format split unless --attn-std/--embed-std are given: larger q, k, v weights
#: and token embeddings than GPT-2's 0.02, under which the induction circuit forms (docs/synthetic.md)
SPLIT_INIT = {"attn_std": 0.1, "embed_std": 0.3}
#: addition's position-id schemes (``default``: ``0 .. n-1``; see :mod:`.arithmetic`)
POSITION_IDS = ("default", "abacus", "coupled")


@dataclass
class SynthConfig:
    """A synthetic task and its options; saved as the ``synth`` section of every run's config.json."""

    task: str = field(default="recall", metadata=_help(
        "recall | copy | reverse | addition | " + " | ".join(RULER_TASKS)))
    pairs: int = field(default=4, metadata=_help("recall: key -> value bindings per sequence (K)"))
    keys: int = field(default=8, metadata=_help("recall: key vocabulary"))
    values: int = field(default=8, metadata=_help("recall: value vocabulary"))
    queries: int = field(default=16, metadata=_help("recall: queries at the end of each sequence"))
    format: str = field(default="fact", metadata=_help("recall: fact (one token k=v) | split (two tokens k v)"))
    filler: int = field(default=16, metadata=_help("recall: filler vocabulary"))
    symbols: int = field(default=16, metadata=_help("copy/reverse: alphabet size"))
    digits: int = field(default=4, metadata=_help("addition: most digits per number in training (scored up to 4x)"))
    hints: bool = field(default=False, metadata=_help("addition: index hints before every digit"))
    position_ids: str = field(default="default", metadata=_help(
        "addition: default (0 .. n-1) | abacus (each digit's place in its number; other tokens 0) | coupled "
        "(digits of one significance share an id; + and = place 0, EOS one past the sum)"))
    max_offset: int | None = field(default=None, metadata=_help(
        "addition with abacus/coupled: random offset of the ids per training example, uniform in [0, M] "
        "(default 3 x --digits, so training sees every id scoring reaches); 0 in scoring"))
    noise: int = field(default=4, metadata=_help("niah_*/vartrack: distinct tokens of the repeated noise pattern"))
    names: int = field(default=16, metadata=_help("niah_*/vartrack: key (variable) name vocabulary"))
    value_len: int = field(default=4, metadata=_help("niah_*/vartrack: digit tokens per value"))
    needles: int = field(default=4, metadata=_help(
        "niah_multikey/multiquery: needles (distinct keys) per sequence; niah_multivalue: values of the one key"))
    query_keys: int = field(default=2, metadata=_help("niah_multiquery: distinct keys queried (separate answers)"))
    chains: int = field(default=2, metadata=_help("vartrack: variable chains per sequence (one queried)"))
    hops: int = field(default=2, metadata=_help("vartrack: copies X2 = X1, ... per chain (hops + 1 names)"))
    words: int = field(default=16, metadata=_help("cwe/fwe: word vocabulary"))
    top: int = field(default=3, metadata=_help("cwe/fwe: most frequent words answered, most frequent first"))
    attn_std: float | None = field(default=None, metadata=_help(
        "std of the attention's q, k, v weights at initialization (default: the model's, GPT-2's 0.02; recall "
        "--format split: 0.1)"))
    embed_std: float | None = field(default=None, metadata=_help(
        "std of the token embedding at initialization (default: the model's, 0.02; recall --format split: 0.3)"))
    eval_seed: int = field(default=1234, metadata=_help("seed of the evaluation examples (fixed across seeds)"))

    def __post_init__(self) -> None:
        if self.task not in SYNTH_TASKS:
            raise ValueError(f"unknown synthetic task {self.task!r}; valid: {', '.join(SYNTH_TASKS)}.")
        for name in ("pairs", "keys", "values", "queries", "filler", "symbols", "digits"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {v!r}.")
            if v > 4096:
                raise ValueError(f"--{name} must be at most 4096, got {v}.")
        if self.format == "fact" and self.keys * self.values > 65536:
            raise ValueError(f"--keys x --values ({self.keys} x {self.values}) must be at most 65536 fact tokens.")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be fact or split, got {self.format!r}.")
        if self.task == "recall" and self.pairs > self.keys:
            raise ValueError(f"--pairs {self.pairs} is more than the {self.keys} distinct keys (--keys); each binding "
                             "needs its own key.")
        if self.position_ids not in POSITION_IDS:
            raise ValueError(f"--position-ids must be one of {', '.join(POSITION_IDS)}, got {self.position_ids!r}.")
        if self.max_offset is not None and (not isinstance(self.max_offset, int) or isinstance(self.max_offset, bool)
                                            or not 0 <= self.max_offset <= 65536):
            raise ValueError(f"--max-offset must be an integer in [0, 65536], got {self.max_offset!r}.")
        if self.max_offset is not None and self.position_ids == "default":
            raise ValueError("--max-offset applies to --position-ids abacus and coupled only.")
        if not isinstance(self.hints, bool):
            raise ValueError(f"hints must be true or false, got {self.hints!r}.")
        for name in ("attn_std", "embed_std"):  # the recipe of recall split (docs/synthetic.md) unless given
            if getattr(self, name) is None and self.task == "recall" and self.format == "split":
                setattr(self, name, SPLIT_INIT[name])
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 10):
                raise ValueError(f"--{name.replace('_', '-')} must be a number in (0, 10], got {v!r}.")
        if not isinstance(self.eval_seed, int) or isinstance(self.eval_seed, bool) or self.eval_seed < 0:
            raise ValueError(f"--eval-seed must be an integer >= 0, got {self.eval_seed!r}.")
        check_ruler_options(self)
        for name, tasks in TASK_OPTIONS.items():  # another task's option, set: refused, never ignored
            if self.task not in tasks and getattr(self, name) != type(self).__dataclass_fields__[name].default:
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} applies to {' and '.join(tasks)} only, not to --task {self.task}.")


def make_task(cfg: SynthConfig) -> SynthTask:
    """The generator of ``cfg.task``."""
    return GENERATORS[cfg.task](cfg)
