"""Downstream tasks (the paper's Sec. 4.2-4.4): sources, preparation and metrics.

Task specs (``--task``), several joined by ``,`` form a mixture (fine-tuning) or a list (scoring):

* ``passkey`` -- built in, offline: passkey retrieval at any length and depth (:mod:`.passkey`).
* ``jsonl:PATH`` / ``parquet:PATH`` -- local files of rows ``{"id", "input", "output"}`` (:mod:`.base`).
* ``scrolls:NAME`` (gov_report, summ_screen_fd, qmsum, qasper, narrative_qa, quality, contract_nli),
  ``glue:TASK``, ``super_glue:TASK`` -- Hugging Face ``datasets`` (extra ``firepe[tasks]``), cast as
  text-to-text (:mod:`.hf`); ``scrolls``, ``glue`` and ``super_glue`` alone name every task of the
  group (the paper's Tables 1 and 13).
"""

from __future__ import annotations

from .base import ANSWER_PREFIX, Example, Prepared, Task, file_task, group_rows, prepare, read_jsonl, read_parquet
from .passkey import PasskeyTask, parse_depths

__all__ = ["Example", "Task", "Prepared", "ANSWER_PREFIX", "group_rows", "read_jsonl", "read_parquet", "prepare",
           "file_task", "PasskeyTask", "parse_depths", "expand_tasks", "load_task", "valid_tasks", "check_task_files",
           "TASK_HELP"]

TASK_HELP = ("passkey | jsonl:PATH | parquet:PATH | scrolls[:NAME] | glue[:TASK] | super_glue[:TASK]; "
             "several joined by ','")


def valid_tasks() -> list[str]:
    from .hf import GROUPS, TASK_SPECS

    return ["passkey", "jsonl:PATH", "parquet:PATH", *GROUPS, *TASK_SPECS]


def expand_tasks(text: str) -> list[str]:
    """``--task`` text -> task specs: groups expanded, duplicates and unknown names refused."""
    from .hf import GROUPS, TASK_SPECS

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--task is empty; valid: {TASK_HELP}.")
    items = [t.strip() for t in text.split(",")]
    if any(not t for t in items):
        raise ValueError(f"--task {text!r} has an empty entry; join task names with ',' ({TASK_HELP}).")
    out: list[str] = []
    for item in items:
        kind, _, rest = item.partition(":")
        if item in GROUPS:
            out += GROUPS[item]
        elif item == "passkey" or item in TASK_SPECS:
            out.append(item)
        elif kind in ("jsonl", "parquet"):
            if not rest.strip():
                raise ValueError(f"--task {item!r} names no file; pass {kind}:PATH.")
            out.append(item)
        else:
            listing = ", ".join(["passkey", "jsonl:PATH", "parquet:PATH", *GROUPS, *TASK_SPECS])
            raise ValueError(f"unknown task {item!r}; valid: {listing}.")
    dup = sorted({t for t in out if out.count(t) > 1})
    if dup:
        raise ValueError(f"--task names {dup[0]!r} twice.")
    if "passkey" in out and len(out) > 1:
        raise ValueError("passkey is generated per length; run it alone (not in a mixture with other tasks).")
    return out


def check_task_files(specs: list[str], data_files: str | None) -> None:
    """``data_files`` (``--task-files``) are the local copies of *one* Hugging Face task: a ``ValueError``
    for passkey and ``jsonl:``/``parquet:`` tasks (nothing would read them) and for several tasks (every
    task would read the same files)."""
    if data_files is None:
        return
    if not any(s.partition(":")[0] in ("scrolls", "glue", "super_glue") for s in specs):
        raise ValueError(f"--task-files applies to scrolls:, glue: and super_glue: tasks (local copies of their "
                         f"Hugging Face data); --task {','.join(specs)} does not read it.")
    if len(specs) > 1:
        raise ValueError(f"--task-files holds the local copies of one task, but the task names {len(specs)} "
                         f"({', '.join(specs)}) and each would read the same files; fine-tune or score them one at "
                         "a time.")


def load_task(spec: str, split: str, data_files: str | None = None, limit: int | None = None,
              metric: str | None = None) -> Task:
    """One non-passkey task spec -> :class:`Task` (``split`` for Hugging Face datasets;
    ``data_files``: local copies of a Hugging Face task; ``metric`` overrides a local file's ``f1``)."""
    from .hf import hf_task

    kind, _, rest = spec.partition(":")
    if kind in ("jsonl", "parquet"):
        task = file_task(kind, rest, metric or "f1")
        if limit is not None:
            task.examples = task.examples[:limit]
        return task
    task = hf_task(spec, split, data_files=data_files, limit=limit)
    if metric is not None:
        task.metric, task.metrics = metric, (metric, *[m for m in task.metrics if m != metric])
    return task
