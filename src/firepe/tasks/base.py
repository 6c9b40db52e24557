"""Tasks as data: examples in the SCROLLS format, local JSONL/Parquet files, and their preparation.

Every task is a list of :class:`Example` built from rows ``{"id", "input", "output"}`` (the
SCROLLS format); several rows with one ``id`` are several references of one example. A row may
also carry ``"question"``: text placed after the input that truncation never cuts (passkey's
question; SCROLLS puts its query at the *start* of ``input`` instead).

Layout of a prompt (:func:`prepare`)::

    input (cut at its end to fit) + question + ANSWER_PREFIX   ->   output + end-of-document

Inputs longer than the length lose their *end*: the start of a SCROLLS input is its query,
followed by the document, so the query and the start of the document are kept (as SCROLLS's own
truncation of long inputs). The question and the answer are never cut; an example whose question,
prefix and answer do not fit the length is an error naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Example", "Task", "Prepared", "ANSWER_PREFIX", "group_rows", "read_jsonl", "read_parquet",
           "file_task", "prepare"]

#: text between the (truncated) input + question and the answer
ANSWER_PREFIX = "\nAnswer: "


@dataclass(frozen=True)
class Example:
    """One example: ``input`` text, its references ``outputs`` (one or more) and an optional
    ``question`` placed after the input and never truncated. ``group`` ties examples scored
    together (MultiRC: the answer options of one question)."""

    id: str
    input: str
    outputs: tuple[str, ...]
    question: str = ""
    group: str | None = None


@dataclass
class Task:
    """A named list of examples and how they are scored.

    ``metric``: the main metric (``f1``, ``em``, ``rgm``, ``accuracy``); ``metrics``: every metric
    reported (main first). ``labels``: the label set of a classification task (answers outside it
    are wrong, references outside it are an error).
    """

    name: str
    examples: list[Example]
    metric: str = "f1"
    metrics: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.metrics:
            self.metrics = (self.metric,)
        if not self.examples:
            raise ValueError(f"task {self.name!r} has no examples.")
        if self.labels is not None:
            allowed = set(self.labels)
            for ex in self.examples:
                bad = [o for o in ex.outputs if o not in allowed]
                if bad:
                    raise ValueError(f"task {self.name!r}: example {ex.id!r} has the label {bad[0]!r}, outside "
                                     f"the label set {', '.join(self.labels)}.")


def _text(value: Any, what: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # json reads NaN / Infinity: a missing value, not the text "nan"
            raise ValueError(f"{where}: field {what!r} is {value!r}, not text (NaN / Infinity in a JSON file "
                             "usually marks a missing value); give a string.")
        return str(value)
    raise ValueError(f"{where}: field {what!r} must be a string, got {type(value).__name__} {value!r:.60}.")


def group_rows(rows: Iterable[tuple[str, Any]], source: str) -> list[Example]:
    """Rows ``(where, {"id", "input", "output"[, "question"]})`` -> examples, rows sharing an id
    merged into one example with several references (first-seen order). ``output`` may also be a
    list of references. A missing field, an empty input, an empty (or blank) reference, or conflicting
    inputs for one id are one ``ValueError`` naming the row (``where``, e.g. ``data.jsonl line 3``)."""
    by_id: dict[str, dict[str, Any]] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not an object with fields id, input, output.")
        missing = [k for k in ("id", "input", "output") if k not in row or row[k] is None]
        if missing:
            raise ValueError(f"{where} has no {', '.join(repr(m) for m in missing)} field (each row needs "
                             "id, input, output).")
        ex_id = _text(row["id"], "id", where)
        text = _text(row["input"], "input", where)
        question = _text(row.get("question") or "", "question", where)
        outs = row["output"] if isinstance(row["output"], list) else [row["output"]]
        if not outs:
            raise ValueError(f"{where}: field 'output' is an empty list.")
        outs = [_text(o, "output", where) for o in outs]
        if any(not o.strip() for o in outs):
            raise ValueError(f"{where}: example {ex_id!r} has an empty output (as in an unlabeled test split); every "
                             "reference must hold text.")
        if not text.strip() and not question.strip():
            raise ValueError(f"{where}: example {ex_id!r} has an empty input.")
        seen = by_id.get(ex_id)
        if seen is None:
            by_id[ex_id] = {"input": text, "question": question, "outputs": outs}
        elif seen["input"] != text or seen["question"] != question:
            raise ValueError(f"{where}: id {ex_id!r} appears again with another input; rows sharing an id "
                             "must share the input (they are references of one example).")
        else:
            seen["outputs"] += outs
    if not by_id:
        raise ValueError(f"{source} holds no examples.")
    return [Example(k, v["input"], tuple(v["outputs"]), v["question"]) for k, v in by_id.items()]


def read_jsonl(path: str | Path) -> list[Example]:
    """Examples of a JSONL file (one row per line, blank lines skipped); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} does not exist." if not path.exists()
                         else f"task file {str(path)!r} is not a file.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"task file {str(path)!r} is not UTF-8 text.") from None
    except OSError as e:
        raise ValueError(f"cannot read task file {str(path)!r}: {e.strerror or e}.") from None

    def rows():
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n} is not valid JSON ({e.msg}).") from None
            yield f"{path} line {n}", row

    return group_rows(rows(), str(path))


def read_parquet(path: str | Path) -> list[Example]:
    """Examples of a Parquet file with columns id, input, output (needs ``pyarrow``, in the
    ``firepe[tasks]`` extra); errors name the row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} does not exist." if not path.exists()
                         else f"task file {str(path)!r} is not a file.")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("parquet: tasks need pyarrow: pip install 'firepe[tasks]'.") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on damaged files
        raise ValueError(f"task file {str(path)!r} is not a readable Parquet file "
                         f"({str(e).splitlines()[0]}).") from None
    missing = [c for c in ("id", "input", "output") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(repr(m) for m in missing)} (columns: "
                         f"{', '.join(table.column_names)}); a task needs id, input, output.")
    return group_rows(((f"{path} row {i + 1}", r) for i, r in enumerate(table.to_pylist())), str(path))


def file_task(kind: str, path: str, metric: str = "f1") -> Task:
    """``jsonl:PATH`` / ``parquet:PATH`` -> a :class:`Task` scored with ``metric``."""
    examples = read_jsonl(path) if kind == "jsonl" else read_parquet(path)
    return Task(f"{kind}:{path}", examples, metric=metric)


@dataclass
class Prepared:
    """An example as token ids at one length: ``prompt`` (input cut to fit + question + prefix)
    and ``answer`` (the first reference + end-of-document, used for fine-tuning); ``references``
    are the texts scored against; ``depth``: passkey's key depth (``None`` elsewhere)."""

    id: str
    prompt: list[int]
    answer: list[int]
    references: tuple[str, ...]
    length: int
    depth: float | None = None
    group: str | None = None
    truncated: int = 0


def prepare(examples: Sequence[Example], tokenizer, length: int, for_training: bool = False,
            task: str = "task") -> list[Prepared]:
    """Token ids of every example for a model of ``length`` tokens.

    For scoring, the prompt is at most ``length`` tokens (the generated answer follows it); for
    training (``for_training``) prompt + answer + end-of-document fit ``length + 1`` tokens (a
    training row of ``length`` inputs predicts ``length`` targets). The input loses tokens at its
    end; question, prefix and answer are never cut: when they alone exceed the length, a
    ``ValueError`` names the example.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ValueError(f"the length must be an integer >= 2, got {length!r}.")
    out = []
    prefix = tokenizer.encode(ANSWER_PREFIX)
    for ex in examples:
        question = tokenizer.encode(ex.question) if ex.question else []
        answer = tokenizer.encode(ex.outputs[0]) + [tokenizer.eos_id]
        fixed = len(question) + len(prefix) + (len(answer) if for_training else 0)
        budget = (length + 1 if for_training else length) - fixed
        if budget < 1:
            what = "question, answer prefix and answer" if for_training else "question and answer prefix"
            raise ValueError(f"{task}: example {ex.id!r} does not fit length {length}: its {what} take {fixed} "
                             f"tokens alone (the answer is longer than the length); use a larger --seq-len "
                             "or --lengths.")
        ids = tokenizer.encode(ex.input)
        cut = max(0, len(ids) - budget)
        out.append(Prepared(ex.id, ids[:len(ids) - cut] + question + prefix, answer, ex.outputs, length,
                            group=ex.group, truncated=cut))
    return out
