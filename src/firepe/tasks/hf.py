"""SCROLLS, GLUE and SuperGLUE from Hugging Face ``datasets``, cast as text-to-text :class:`Task` s.

Specs: ``scrolls:<name>`` (``tau/scrolls``), ``glue:<task>`` (``nyu-mll/glue``), ``super_glue:<task>``
(``aps/super_glue``; ``wsc`` is the config ``wsc.fixed``). :func:`hf_task` loads one split with
``datasets.load_dataset(NAME, CONFIG, split=split)`` (SCROLLS: the member ``<name>/<split>.jsonl`` of the
repository's ``<name>.zip`` through the ``json`` builder, as ``tau/scrolls`` is a loading script that
``datasets`` >= 4 does not run), or -- with ``data_files`` (local ``.jsonl`` /
``.json`` / ``.parquet`` / ``.csv`` copies in the same row shapes, joined by ``,``) --
``datasets.load_dataset("json" | "parquet" | "csv", data_files=[...], split="train")``, and casts
every row the same way either way.

SCROLLS rows are ``{id, pid, input, output}``; rows sharing an ``id`` are several references of one
example (:func:`~firepe.tasks.base.group_rows`). Main metric per dataset: :data:`SCROLLS`.

GLUE / SuperGLUE are cast as T5 does (Raffel et al., 2020, ``t5.data.preprocessors``): the input is
``"<task> <field>: <value> <field>: <value> ..."`` with the fields in T5's order (sorted by name,
except MultiRC ``question, answer, paragraph`` and WiC ``sentence1, sentence2, word``) and the
answer is the label's *name* (the Hugging Face ``ClassLabel`` names, :data:`GLUE`, :data:`SUPER_GLUE`).
Special casts:

* STS-B: the answer is the similarity rounded to the nearest 0.2, ``"%.1f" % (round(5 y) / 5)``;
  ``round`` breaks ties to even, as T5's ``tf.round`` (2.5 -> ``"2.4"``). No label set.
* MultiRC: one example per answer option, ``id = "<paragraph>-<question>-<answer>"`` (the ``idx``
  fields) and ``group = "<paragraph>-<question>"`` (``multirc_em`` scores a question as right when all
  its options are); ``<br>`` becomes a space and ``<b>``/``</b>`` are removed, as T5.
* ReCoRD: ``"record query: <query> entities: <e1, e2, ...> passage: <passage>"`` with the CNN/Daily Mail
  ``@highlight`` lines joined into sentences (after ``.?!"'`` by a space, else by ``". "``); every
  answer is a reference (EM / F1 take the max over them); ``id = "<passage>-<query>"``. No label set.
* WSC (``wsc.fixed``): ``"wsc text: <text>"`` with the noun span marked ``* noun *`` and the pronoun
  ``# pronoun #`` at their word indices (a span not found at its index stays unmarked, as T5).
* BoolQ: T5's ``"boolq passage: <p> question: <q>"``, with ``" question: <q>"`` as the example's
  ``question`` (:class:`~firepe.tasks.base.Example`), so truncating a long passage never cuts it.

Other examples have ``id = str(idx)`` (the row number from 0 when a local copy has no ``idx``).
Labels given as integers index the label names; names are accepted as they are; label ``-1`` (the
unlabeled test splits) is an error, as is any other value outside the label set. ``limit`` keeps
the first ``limit`` examples: SCROLLS ids with all their references, MultiRC questions with all their
answer options.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .base import Example, Task, group_rows

__all__ = ["SCROLLS", "GLUE", "SUPER_GLUE", "GROUPS", "TASK_SPECS", "HF_NAMES", "hf_task"]

#: SCROLLS dataset -> main metric (the SCROLLS paper's Table 1)
SCROLLS = {"gov_report": "rgm", "summ_screen_fd": "rgm", "qmsum": "rgm", "qasper": "f1",
           "narrative_qa": "f1", "quality": "em", "contract_nli": "em"}

#: benchmark -> Hugging Face dataset name
HF_NAMES = {"scrolls": "tau/scrolls", "glue": "nyu-mll/glue", "super_glue": "aps/super_glue"}


@dataclass(frozen=True)
class _Cast:
    """How one GLUE/SuperGLUE task becomes text: ``fields`` in T5's order, the label names (``None``:
    no label set), the metrics (main first), the cast (``fields``, ``stsb``, ``multirc``, ``record``,
    ``wsc``), the Hugging Face config and the fields placed in the never-truncated ``question``."""

    fields: tuple[str, ...]
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...] = ("accuracy",)
    cast: str = "fields"
    config: str | None = None
    tail: tuple[str, ...] = ()


_BOOL = ("False", "True")
_NLI2 = ("entailment", "not_entailment")

#: GLUE task -> its cast (label names are the ``nyu-mll/glue`` ClassLabel names, in index order)
GLUE = {
    "cola": _Cast(("sentence",), ("unacceptable", "acceptable"), ("accuracy", "mcc")),
    "sst2": _Cast(("sentence",), ("negative", "positive")),
    "mrpc": _Cast(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1_binary:equivalent")),
    "qqp": _Cast(("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1_binary:duplicate")),
    "stsb": _Cast(("sentence1", "sentence2"), None, ("accuracy", "pearson", "spearman"), cast="stsb"),
    "mnli": _Cast(("hypothesis", "premise"), ("entailment", "neutral", "contradiction")),
    "qnli": _Cast(("question", "sentence"), _NLI2),
    "rte": _Cast(("sentence1", "sentence2"), _NLI2),
    "wnli": _Cast(("sentence1", "sentence2"), ("not_entailment", "entailment")),
}

#: SuperGLUE task -> its cast (label names of ``aps/super_glue``)
SUPER_GLUE = {
    "boolq": _Cast(("passage", "question"), _BOOL, tail=("question",)),
    "cb": _Cast(("hypothesis", "premise"), ("entailment", "contradiction", "neutral")),
    "copa": _Cast(("choice1", "choice2", "premise", "question"), ("choice1", "choice2")),
    "multirc": _Cast(("question", "answer", "paragraph"), _BOOL, ("multirc_em", "multirc_f1a"), cast="multirc"),
    "record": _Cast(("query", "entities", "passage"), None, ("em", "f1"), cast="record"),
    "wic": _Cast(("sentence1", "sentence2", "word"), _BOOL),
    "wsc": _Cast(("span1_index", "span1_text", "span2_index", "span2_text", "text"), _BOOL, cast="wsc",
                 config="wsc.fixed"),
}

_TABLES = {"glue": GLUE, "super_glue": SUPER_GLUE}

#: the paper's groups: Table 1 (SCROLLS) and Table 13 (GLUE without STS-B, SuperGLUE)
GROUPS = {
    "scrolls": [f"scrolls:{n}" for n in SCROLLS],
    "glue": [f"glue:{t}" for t in ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli")],
    "super_glue": [f"super_glue:{t}" for t in SUPER_GLUE],
}

#: every valid spec
TASK_SPECS = [*GROUPS["scrolls"], *(f"glue:{t}" for t in GLUE), *GROUPS["super_glue"]]

_SPLITS = ("train", "validation", "test")
_MNLI_SPLITS = ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def hf_task(spec: str, split: str, data_files: str | None = None, limit: int | None = None) -> Task:
    """``scrolls:<name>`` / ``glue:<task>`` / ``super_glue:<task>`` -> a :class:`Task` of ``split``.

    ``data_files``: local copies (``.jsonl``, ``.json``, ``.parquet``, ``.csv`` or glob patterns,
    joined by ``,``) read instead of the hub; ``split`` then only names them in messages. For MNLI,
    ``validation`` / ``test`` mean ``validation_matched`` / ``test_matched``. ``limit``: the first N
    examples. Every error is one ``ValueError``.
    """
    bench, _, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (bench == "scrolls" and name in SCROLLS or name in _TABLES.get(bench, {})):
        raise ValueError(f"unknown task {spec!r}; valid: {', '.join(TASK_SPECS)}.")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}.")
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"task {spec}: the split must be a name such as 'validation', got {split!r}.")
    cast = None if bench == "scrolls" else _TABLES[bench][name]
    if data_files is None:
        split = _hub_split(spec, name, split)
    config = name if cast is None else cast.config or name
    rows, source = _load(spec, HF_NAMES[bench], config, split, data_files)
    ctx = _Ctx(spec, f"{spec} {source}", split, "validation_matched" if name == "mnli" else "validation",
               local=data_files is not None)
    extra = {"dataset": HF_NAMES[bench], "config": config, "split": split, "source": source}
    if cast is None:
        metric = SCROLLS[name]
        return Task(spec, _scrolls(rows, ctx, limit), metric=metric, metrics=(metric,), extra=extra)
    examples = _glue(rows, ctx, name, cast, limit)
    return Task(spec, examples, metric=cast.metrics[0], metrics=cast.metrics, labels=cast.labels, extra=extra)


def _hub_split(spec: str, name: str, split: str) -> str:
    if name == "mnli":
        split = {"validation": "validation_matched", "test": "test_matched"}.get(split, split)
    valid = _MNLI_SPLITS if name == "mnli" else _SPLITS
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for task {spec}; valid: {', '.join(valid)}.")
    return split


def _files(spec: str, data_files: str) -> tuple[str, list[str]]:
    """``data_files`` -> (builder, paths): every item a file or a matching glob, one builder for all."""
    items = [f.strip() for f in str(data_files).split(",") if f.strip()]
    if not items:
        raise ValueError(f"task {spec}: data_files is empty; give .jsonl, .json, .parquet or .csv files joined by ','.")
    builders = set()
    for item in items:
        if any(c in item for c in "*?["):
            if not any(os.path.isfile(m) for m in glob.glob(item, recursive=True)):
                raise ValueError(f"task {spec}: data_files pattern {item!r} matches no file.")
        elif os.path.isdir(item):
            raise ValueError(f"task {spec}: data_files item {item!r} is a folder; give files or a glob such as "
                             f"'{item}/*.jsonl'.")
        elif not os.path.isfile(item):
            raise ValueError(f"task {spec}: data_files file {item!r} does not exist.")
        ext = next((e for e in _BUILDERS if item.lower().endswith(e)), None)
        if ext is None:
            raise ValueError(f"task {spec}: data_files item {item!r} is not .jsonl, .json, .parquet or .csv.")
        builders.add(_BUILDERS[ext])
    if len(builders) > 1:
        raise ValueError(f"task {spec}: data_files mix formats ({', '.join(sorted(builders))}); give files of one "
                         "format.")
    return builders.pop(), items


def _load(spec: str, name: str, config: str, split: str, data_files: str | None) -> tuple[Iterable[dict], str]:
    """The rows of the dataset and a phrase naming where they come from."""
    files = _files(spec, data_files) if data_files is not None else None
    try:
        import datasets
    except ImportError:
        raise ValueError(f"task {spec} needs the datasets package: pip install 'firepe[tasks]'.") from None
    from ..data import error_cause, quiet_hub

    if files is not None:
        builder, paths = files
        shown = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
        bars = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # "Generating train split" of a few local rows is noise
        try:
            with quiet_hub():
                ds = datasets.load_dataset(builder, data_files=paths, split="train")
        except Exception as e:  # undecodable, malformed or mixed-schema files
            raise ValueError(f"could not read the {builder} files {shown} for task {spec} ({error_cause(e)}).") from e
        finally:
            if not bars:
                datasets.enable_progress_bars()
        return ds, f"(files {shown})"
    try:
        with quiet_hub():
            if name == HF_NAMES["scrolls"]:
                ds = _scrolls_hub(datasets, name, config, split)
            else:
                ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, hub, cache and builder errors of datasets / huggingface_hub
        raise ValueError(f"could not load Hugging Face dataset {name!r} (config {config!r}, split {split!r}) for "
                         f"task {spec} ({error_cause(e)}); without the hub, pass local copies with data_files "
                         "(.jsonl/.json/.parquet/.csv) or set HF_DATASETS_OFFLINE=1 with the dataset already in the "
                         "Hugging Face cache.") from e
    return ds, f"(split {split!r})"


def _scrolls_hub(datasets: Any, name: str, config: str, split: str) -> Any:
    """``tau/scrolls`` is a loading-script dataset, which ``datasets`` >= 4 no longer runs; its repository
    also holds the data as ``<config>.zip`` with ``<config>/<split>.jsonl`` inside. The zip comes through
    ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``) and the member is read by the ``json`` builder."""
    import huggingface_hub

    archive = huggingface_hub.hf_hub_download(name, f"{config}.zip", repo_type="dataset")
    return datasets.load_dataset("json", data_files={split: f"zip://{config}/{split}.jsonl::{archive}"}, split=split)


@dataclass(frozen=True)
class _Ctx:
    spec: str
    what: str  # "glue:cola (split 'validation')"
    split: str
    labeled: str  # the split to suggest when this one has no labels
    local: bool = False  # rows from data_files (no split to suggest)

    def unlabeled(self, where: str, why: str) -> ValueError:
        if self.local:
            return ValueError(f"{self.what} has no labels ({where} {why}, as in the unlabeled test split); pass "
                              "a labeled copy (the train or validation split).")
        return ValueError(f"split {self.split!r} of {self.spec} has no labels ({where} {why}, as in the unlabeled test "
                          f"split); use {self.labeled!r}.")


def _rows(rows: Iterable[Any], ctx: _Ctx) -> Iterable[tuple[str, dict]]:
    for n, row in enumerate(rows, 1):
        where = f"{ctx.what} row {n}"
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not an object with named fields.")
        yield where, row


def _take(items: Iterable[tuple[str, Any]], limit: int | None) -> Iterable[Any]:
    """Items ``(key, value)`` until the ``limit + 1``-th distinct key."""
    keys: set[str] = set()
    for key, value in items:
        if key not in keys:
            if limit is not None and len(keys) == limit:
                return
            keys.add(key)
        yield value


def _scrolls(rows: Iterable[Any], ctx: _Ctx, limit: int | None) -> list[Example]:
    def items():
        for where, row in _rows(rows, ctx):
            for key in ("id", "input", "output"):
                if key not in row or key != "output" and row[key] is None:
                    raise ValueError(f"{where} has no field {key!r} (SCROLLS rows need id, pid, input, output).")
            out = row["output"]
            if out is None or isinstance(out, str) and not out.strip():
                raise ctx.unlabeled(where, "has an empty output")
            yield str(row["id"]), (where, {"id": row["id"], "input": row["input"], "output": out})

    return group_rows(_take(items(), limit), ctx.what)


def _field(row: dict, key: str, where: str, need: str) -> Any:
    value = row.get(key)
    if value is None:
        raise ValueError(f"{where} has no field {key!r} ({need}).")
    return value


def _text(row: dict, key: str, where: str, need: str) -> str:
    value = _field(row, key, where, need)
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: field {key!r} must be text, got {type(value).__name__} {value!r:.60}.")


def _label(value: Any, labels: tuple[str, ...], where: str, ctx: _Ctx) -> str:
    """An int label indexes ``labels``; a name must be one of them; -1 marks an unlabeled split."""
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, int):  # bool too: False/True -> 0/1
        if number == -1:
            raise ctx.unlabeled(where, "has label -1")
        if 0 <= number < len(labels):
            return labels[int(number)]
    elif isinstance(value, str) and value in labels:
        return value
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(labels))
    raise ValueError(f"{where}: label {value!r} is outside the label set of {ctx.spec} ({valid}).")


def _stsb(value: Any, where: str, ctx: _Ctx) -> str:
    """Similarity in [0, 5] -> ``"%.1f" % (round(5 y) / 5)`` (ties to even, as ``tf.round``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{where}: label {value!r} is not a similarity in [0, 5].")
    if value == -1:
        raise ctx.unlabeled(where, "has label -1")
    if not 0 <= value <= 5:
        raise ValueError(f"{where}: label {value!r} is outside the STS-B scale [0, 5].")
    return f"{round(value * 5) / 5:.1f}"


def _idx(row: dict, keys: tuple[str, ...], where: str, need: str) -> str:
    idx = _field(row, "idx", where, need)
    if not isinstance(idx, dict) or any(k not in idx for k in keys):
        raise ValueError(f"{where}: field 'idx' must be an object with {', '.join(keys)}, got {idx!r:.80}.")
    return "-".join(str(idx[k]) for k in keys)


def _record_passage(passage: str) -> str:
    """CNN/Daily Mail highlights as sentences: ``'.\\n@highlight\\n'`` -> ``'. '``, bare ones -> ``'. '``."""
    passage = re.sub(r"([.?!\"'])\n@highlight\n", r"\1 ", passage)
    return passage.replace("\n@highlight\n", ". ")


def _mark(text: str, span: str, index: int, mark: str) -> str:
    """``span`` starting at word ``index`` (words split by one whitespace) as ``mark span mark``."""
    m = re.match(r"((?:\S+\s){" + str(index) + "})(" + re.escape(span) + ")", text)
    return text if m is None else f"{text[:m.start(2)]}{mark} {span} {mark}{text[m.end(2):]}"


def _wsc_text(row: dict, where: str, need: str) -> str:
    text = _text(row, "text", where, need)
    spans = []
    for k in (1, 2):
        index = _field(row, f"span{k}_index", where, need)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"{where}: field 'span{k}_index' must be a word index >= 0, got {index!r}.")
        spans.append((_text(row, f"span{k}_text", where, need), index))
    (s1, i1), (s2, i2) = spans
    text = _mark(text, s1, i1, "*")
    return "wsc text: " + _mark(text, s2, i2 + 2 * (i1 < i2), "#")  # "* noun *" added two words before i2


def _glue(rows: Iterable[Any], ctx: _Ctx, name: str, cast: _Cast, limit: int | None) -> list[Example]:
    required = {"fields": cast.fields, "stsb": cast.fields, "multirc": (*cast.fields, "idx"),
                "record": ("passage", "query", "entities", "answers", "idx"), "wsc": cast.fields}[cast.cast]
    need = f"{name} rows need {', '.join(required)}" + ("" if cast.cast == "record" else ", label")
    make: Callable[[dict, str, int], tuple[str, Example]]

    def plain_id(row: dict, n: int) -> str:
        idx = row.get("idx")
        return str(n if idx is None else idx)

    def fields(row: dict, where: str, n: int) -> tuple[str, Example]:
        vals = {k: _text(row, k, where, need) for k in cast.fields}
        text = " ".join([name] + [f"{k}: {vals[k]}" for k in cast.fields if k not in cast.tail])
        question = "".join(f" {k}: {vals[k]}" for k in cast.tail)
        if cast.cast == "stsb":
            answer = _stsb(_field(row, "label", where, need), where, ctx)
        else:
            answer = _label(_field(row, "label", where, need), cast.labels or (), where, ctx)
        ex_id = plain_id(row, n)
        return ex_id, Example(ex_id, text, (answer,), question)

    def multirc(row: dict, where: str, n: int) -> tuple[str, Example]:
        vals = {k: _text(row, k, where, need) for k in cast.fields}
        group = _idx(row, ("paragraph", "question"), where, need)
        ex_id = _idx(row, ("paragraph", "question", "answer"), where, need)
        text = " ".join([name] + [f"{k}: {vals[k]}" for k in cast.fields])
        text = re.sub(r"</?b>", "", text.replace("<br>", " "))
        answer = _label(_field(row, "label", where, need), cast.labels or (), where, ctx)
        return group, Example(ex_id, text, (answer,), group=group)

    def record(row: dict, where: str, n: int) -> tuple[str, Example]:
        passage, query = _text(row, "passage", where, need), _text(row, "query", where, need)
        entities, answers = _field(row, "entities", where, need), _field(row, "answers", where, need)
        for key, value in (("entities", entities), ("answers", answers)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: field {key!r} must be a list of strings, got {value!r:.80}.")
        if not answers:
            raise ctx.unlabeled(where, "has no answers")
        ex_id = _idx(row, ("passage", "query"), where, need)
        text = f"record query: {query} entities: {', '.join(entities)} passage: {_record_passage(passage)}"
        return ex_id, Example(ex_id, text, tuple(dict.fromkeys(answers)))

    def wsc(row: dict, where: str, n: int) -> tuple[str, Example]:
        text = _wsc_text(row, where, need)
        answer = _label(_field(row, "label", where, need), cast.labels or (), where, ctx)
        ex_id = plain_id(row, n)
        return ex_id, Example(ex_id, text, (answer,))

    make = {"fields": fields, "stsb": fields, "multirc": multirc, "record": record, "wsc": wsc}[cast.cast]

    def items():
        seen: set[str] = set()
        for n, (where, row) in enumerate(_rows(rows, ctx)):
            key, ex = make(row, where, n)
            if ex.id in seen:
                raise ValueError(f"{where}: example id {ex.id!r} (from 'idx') appears twice; each row of {name} needs "
                                 "its own idx.")
            seen.add(ex.id)
            yield key, ex

    examples = list(_take(items(), limit))
    if not examples:
        raise ValueError(f"{ctx.what} holds no examples.")
    return examples
