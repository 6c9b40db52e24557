"""The command line's parsing plumbing: the one-line error parser, flags derived from the config
dataclasses (litgpt style), the options a user gave, and one-line warnings. :mod:`firepe.cli` builds
its commands from these and calls one library function per command.
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import DataConfig, GPTConfig, TrainConfig
from .hints import split_optional
from .limits import check_at_most

__all__ = ["Parser", "int_arg", "float_arg", "add_dataclass_args", "dataclass_from_args", "add_model_args",
           "add_train_args", "model_values", "given_options", "one_line_warning", "check_out", "positive",
           "DATA_HELP", "MODEL_FIELDS"]

DATA_HELP = {
    "corpus": "stdlib | PATH[,PATH...] | hf:NAME[:CONFIG]",
    "tokenizer": "byte | bpe | path/to/tokenizer.json",
    "bpe_vocab_size": "vocabulary of --tokenizer bpe",
    "val_percent": "percent of the corpus held out for validation",
    "max_train_tokens": "cap on training tokens (and the budget pulled from streaming corpora)",
    "val_tokens": "validation tokens scored at every evaluation length",
    "hf_data_files": "local files for hf:json / hf:text / hf:parquet (comma-separated)",
    "hf_text_field": "text field of Hugging Face rows",
    "data": "a folder made by firepe prepare (instead of --corpus: its tokens, tokenizer and split)",
}

#: the GPTConfig fields with a flag of their own (the model group of train, compare, ablate, synth)
MODEL_FIELDS = [f.name for f in fields(GPTConfig) if f.metadata.get("cli") is not False]


class Parser(argparse.ArgumentParser):
    """argparse with the error contract: one line ``firepe: error: ...``, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"firepe: error: {message}\n")


def int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_dataclass_args(group, cls, defaults, help_fallback: dict[str, str] | None = None,
                       skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass ``cls`` (``seq_len`` -> ``--seq-len``): type from the annotation,
    default from the instance ``defaults``, help from the field metadata; ``bool`` fields that
    default to true get ``--no-NAME``. Fields with ``metadata["cli"] = False`` get no flag."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = getattr(defaults, f.name)
        text = f.metadata.get("help") or (help_fallback or {}).get(f.name, "")
        flag = "--" + f.name.replace("_", "-")
        kind = split_optional(hints[f.name])[0]  # int | None -> int
        if kind is bool:
            if default:
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                   default=True, help=f"no {text}" if text else None)
            else:
                group.add_argument(flag, dest=f.name, action="store_true", default=False, help=text or None)
            continue
        conv = {int: int_arg, float: float_arg, str: str}.get(kind)
        if conv is None:
            continue
        shown = "" if default is None else f" (default: {default})"
        group.add_argument(flag, dest=f.name, type=conv, default=default, choices=f.metadata.get("choices"),
                           help=(text + shown) or None)


def dataclass_from_args(cls, args) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def add_model_args(p: argparse.ArgumentParser, with_position: bool, preset: str = "cpu") -> None:
    """``--preset``, ``--position`` (a spec, train only), ``--untied``, and one flag per :class:`GPTConfig`
    field with a flag (:func:`add_dataclass_args`; the preset's fields default to None: the preset's)."""
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=preset, help="tiny | cpu | small | base | large (Table 8)")
    if with_position:
        g.add_argument("--position", default="fire",
                       help="encoding spec, e.g. fire, rope, fire:mlp_layers=1,activation=gelu")
    defaults = GPTConfig()
    add_dataclass_args(g, GPTConfig, argparse.Namespace(**{
        f.name: None if f.metadata.get("preset") else getattr(defaults, f.name) for f in fields(GPTConfig)}))
    g.add_argument("--untied", action="store_true", help="untie input and output embeddings")


def add_train_args(p: argparse.ArgumentParser, train_defaults, data_defaults) -> None:
    add_dataclass_args(p.add_argument_group("training"), TrainConfig, train_defaults)
    add_dataclass_args(p.add_argument_group("data"), DataConfig, data_defaults, DATA_HELP)


def model_values(args) -> dict[str, Any]:
    """The model flags of ``args`` for :func:`firepe.resume.model_config`: ``preset``, ``untied`` and the
    :data:`MODEL_FIELDS` given a value (None: the preset's)."""
    return {"preset": args.preset, "untied": args.untied,
            **{n: getattr(args, n) for n in MODEL_FIELDS if getattr(args, n, None) is not None}}


def given_options(parser: argparse.ArgumentParser, argv: list[str], command: str) -> set[str]:
    """Destinations the user gave on the command line (``--steps=6`` and abbreviations included):
    the command's parser re-run with every default suppressed."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    saved = [(a, a.default) for a in sub._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        ns, _ = sub.parse_known_args(argv[argv.index(command) + 1:])
    finally:
        for a, d in saved:
            a.default = d
    return set(vars(ns))


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings of a command print as one line ``firepe: warning: ...`` (not file, line and source)."""
    text = " ".join(str(message).split())
    return f"firepe: warning: {text[len('firepe: '):] if text.startswith('firepe: ') else text}\n"


def check_out(path: str, what: str = "--out") -> Path:
    if not str(path).strip():
        raise ValueError(f"{what} is empty; pass a folder name.")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{what} {str(out)!r} is an existing file, not a folder.")
    return out


def positive(value: Any, flag: str, minimum: int = 1, maximum: int | None = None) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{flag} must be >= {minimum}, got {value}.")
    if maximum is not None:
        check_at_most(value, flag, maximum)
