"""What a command's options mean for a run: the model a set of model options builds, and the one rule of
what ``--resume`` may change (reconciliation), for ``train`` and ``finetune`` alike.

Options arrive as a dict of values keyed by field name (``seq_len``, ``corpus``, ``preset``, ``position``, ...)
and the set of those the user gave; messages name each option as a flag (``seq_len`` -> ``--seq-len``,
:func:`flag`), so the command line only parses and prints.

* :func:`model_config` -- ``--preset`` + the model fields given + the encoding spec and its training defaults.
* :func:`resume_changes_given` -- the :data:`~firepe.config.RESUMABLE` changes of ``train --resume``; one
  ValueError naming every given option that differs from the saved run and may not change.
* :func:`resume_finetune_changes` -- the same for ``finetune --resume`` (task options, model changes, RUN).
* :func:`finetune_inputs` -- a new fine-tune's ``(FinetuneConfig, TrainConfig, model changes)`` from its options.
"""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from .config import RESUMABLE, DataConfig, GPTConfig, TrainConfig, preset, resume_changes
from .positions import parse_spec, training_options
from .runs import RunFolder

__all__ = ["flag", "model_config", "resumed_run", "resume_changes_given", "resume_finetune_changes",
           "finetune_inputs", "position_options", "check_task_options", "MODEL_FLAGS"]

#: the GPTConfig fields with a flag of their own
_MODEL_FIELDS = [f for f in fields(GPTConfig) if f.metadata.get("cli") is not False]
#: model option -> the GPTConfig fields it sets (what a --resume compares)
MODEL_FLAGS = {"preset": tuple(f.name for f in _MODEL_FIELDS if f.metadata.get("preset")),
               "untied": ("tie_embeddings",), **{f.name: (f.name,) for f in _MODEL_FIELDS}}


def flag(name: str) -> str:
    """The flag of an option: ``seq_len`` -> ``--seq-len``."""
    return "--" + name.replace("_", "-")


def model_config(values: dict[str, Any], position: str, seq_len: int) -> GPTConfig:
    """The model of ``--preset`` (``values["preset"]``), the model fields given a value, ``--untied`` and the
    encoding ``position`` (a spec) with its training defaults at ``seq_len``."""
    given = {f.name: values[f.name] for f in _MODEL_FIELDS if values.get(f.name) is not None}
    spec = parse_spec(position)
    opts = training_options(spec.position, spec.options, seq_len)
    return preset(values.get("preset", "cpu"), position=spec.position, position_options=opts,
                  tie_embeddings=not values.get("untied", False), **given)


def resumed_run(out: str | Path) -> RunFolder:
    """The run folder ``--resume --out`` names (ValueError if it holds no run)."""
    run = RunFolder(out)
    run.check_exists()
    if not run.has_run():
        raise ValueError(f"--resume: {str(out)!r} holds no run (no config.json); drop --resume to start one.")
    return run


def _train_conflicts(values: dict[str, Any], given: set[str], saved: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    wanted = {f.name: values[f.name] for f in fields(TrainConfig) if f.name in given}
    changes, refused = resume_changes(saved, wanted)
    return changes, [f"{flag(k)} {new} (run: {old})" for k, (old, new) in refused.items()]


def resume_changes_given(out: str | Path, values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """The TrainConfig changes ``train --resume`` asks for; ValueError naming every given option that differs
    from the saved run and may not change (train, data and model options, ``--position``)."""
    run = resumed_run(out)
    saved_model, saved_train, saved_data = run.configs()
    changes, conflicts = _train_conflicts(values, given, saved_train)
    wanted_data = DataConfig(**{f.name: values[f.name] for f in fields(DataConfig) if f.name in values}).resolved()
    for f in fields(DataConfig):
        if f.name in given and getattr(wanted_data, f.name) != getattr(saved_data, f.name):
            conflicts.append(f"{flag(f.name)} {values[f.name]} (run: {getattr(saved_data, f.name)})")
    if "position" in given:
        spec = parse_spec(values["position"])
        if spec.position != saved_model.position or any(
                saved_model.position_options.get(k) != v for k, v in spec.options.items()):
            conflicts.append(f"--position {values['position']} (run: {saved_model.position} "
                             f"{saved_model.position_options})")
    wanted = model_config(values, saved_model.position, saved_train.seq_len)
    for dest, names in MODEL_FLAGS.items():
        if dest in given and any(getattr(wanted, n) != getattr(saved_model, n) for n in names):
            conflicts.append(f"{flag(dest)} (run: " + ", ".join(f"{n}={getattr(saved_model, n)}" for n in names) + ")")
    if conflicts:
        raise ValueError("--resume continues a run with its saved settings; these options differ and cannot "
                         f"change: {'; '.join(conflicts)}. Only {', '.join(RESUMABLE)} may.")
    return changes


def resume_finetune_changes(out: str | Path, values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """TrainConfig changes of ``finetune --resume``; every other given option must match the run."""
    from .finetune import FinetuneConfig, finetune_section

    run = resumed_run(out)
    cfg = run.read_config()
    if "finetune" not in cfg:
        raise ValueError(f"--resume: {str(out)!r} is a pretraining run; continue it with firepe train --resume.")
    _, saved_train, _ = run.configs()
    saved_ft = asdict(finetune_section(cfg, f"{run.config_path} [finetune]"))
    changes, conflicts = _train_conflicts(values, given, saved_train)
    for f in fields(FinetuneConfig):
        if f.name not in given:
            continue
        value = values[f.name]
        if f.name == "task":  # saved with absolute paths: the same relative path is the same task
            value = FinetuneConfig.absolute_task(value)
        elif f.name == "task_files":
            value = FinetuneConfig.absolute_files(value)
        if value != saved_ft[f.name]:
            conflicts.append(f"{flag(f.name)} {values[f.name]} (run: {saved_ft[f.name]})")
    for name in ("dropout", "attention", "position_options", "position"):
        if name in given:
            conflicts.append(f"{flag(name)} (fixed by the run's model configuration)")
    if values.get("run") is not None:
        conflicts.append(f"RUN {values['run']} (the run started from {saved_ft['base_run']})")
    if conflicts:
        raise ValueError("--resume continues a fine-tuning run with its saved settings; these options differ and "
                         f"cannot change: {'; '.join(conflicts)}. Only {', '.join(RESUMABLE)} may.")
    return changes


def position_options(text: str | None, position: str) -> dict[str, Any]:
    """``--position-options`` (``factor=4,...``) read as options of encoding ``position``."""
    if text is None:
        return {}
    if not text.strip():
        raise ValueError("--position-options is empty; pass e.g. factor=4.")
    return parse_spec(f"{position}:{text}").options


def check_task_options(task: str, given: set[str], passkey_only: tuple[str, ...]) -> None:
    """A given option the task does not read is an error rather than ignored: ``passkey_only`` options with
    another task, ``--limit`` / ``--metric`` with passkey, ``--split`` without a Hugging Face task."""
    from .tasks import expand_tasks

    specs = expand_tasks(task)
    passkey = specs == ["passkey"]
    for dest in passkey_only:
        if dest in given and not passkey:
            raise ValueError(f"{flag(dest)} applies to the passkey task only; --task {task} does not read it.")
    for dest in ("limit", "metric"):
        if dest in given and passkey:
            raise ValueError(f"{flag(dest)} does not apply to the passkey task (generated per length and depth, "
                             "--examples of each, scored by accuracy).")
    if "split" in given and not any(s.partition(":")[0] in ("scrolls", "glue", "super_glue") for s in specs):
        raise ValueError(f"--split applies to scrolls:, glue: and super_glue: tasks only; --task {task} does not "
                         "read it.")


def finetune_inputs(values: dict[str, Any], given: set[str]):
    """``(FinetuneConfig, TrainConfig, model changes)`` of a new fine-tuning run from its options (``--seq-len``
    defaults to the base run's; task file paths made absolute)."""
    from .finetune import FinetuneConfig

    run = values.get("run")
    if run is None:
        raise ValueError("finetune needs RUN, the trained run folder to start from (or --resume --out FT).")
    base = RunFolder(run)
    base.check_exists()
    if not base.has_run():
        raise ValueError(f"{run!r} is not a firepe run folder (no config.json); pass the folder of a trained run.")
    base_model, base_train, _ = base.configs()
    train = TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name in values})
    if "seq_len" not in given:
        train = replace(train, seq_len=base_train.seq_len)
    ft = FinetuneConfig(**{f.name: values[f.name] for f in fields(FinetuneConfig) if f.name in values})
    check_task_options(values["task"], given, passkey_only=("filler",))  # after the values' own checks
    ft = ft.resolved()
    position, options = None, None
    if values.get("position") is not None:
        spec = parse_spec(values["position"])
        position, options = spec.position, spec.options
        if values.get("position_options") is not None:
            raise ValueError("give the encoding's options in --position (e.g. rope_pi:factor=4), not also in "
                             "--position-options.")
    changes = {"dropout": values.get("dropout"), "attention": values.get("attention"), "position": position,
               "position_options": options if position else position_options(values.get("position_options"),
                                                                                 base_model.position)}
    return ft, train, changes
