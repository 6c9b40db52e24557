"""Name -> encoding class registry with validated, typed options (like HF's ``ROPE_INIT_FUNCTIONS``).

>>> from firepe import positions
>>> enc = positions.build("fire", num_heads=12, head_dim=64, mlp_layers=1)
>>> positions.available()  # doctest: +ELLIPSIS
['alibi', 'fire', ...]
>>> positions.parse_spec("lin=fire:mlp_layers=0,threshold=false")
Spec(label='lin', position='fire', options={'mlp_layers': 0, 'threshold': False})

Option types come from the annotations of the encoding's constructor: :func:`validate` refuses a
Python value of the wrong type (``bool`` is not an ``int``; an ``int`` is fine for a ``float``) and
:func:`parse_spec` converts the text of a spec (``true/false/1/0/yes/no`` for ``bool``, ``none``
for an optional option, ``a/b/c`` for a list: ``longrope:long_factor=1/1.5/2/4``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hints import describe, fits, split_optional
from .base import PositionEncoding

__all__ = ["register", "available", "get", "options", "validate", "check", "build", "Spec", "parse_spec",
           "training_options"]

_REGISTRY: dict[str, type[PositionEncoding]] = {}
_COMMON = ("num_heads", "head_dim")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def register(name: str):
    """Class decorator: register an encoding under ``name`` (a lowercase string)."""

    def deco(cls: type[PositionEncoding]) -> type[PositionEncoding]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"position encoding {name!r} is already registered by {_REGISTRY[name]!r}.")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Sorted names of every registered encoding."""
    return sorted(_REGISTRY)


def get(name: str) -> type[PositionEncoding]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown position encoding {name!r}; valid names: {', '.join(available())}.")
    return _REGISTRY[name]


def _parameters(name: str) -> dict[str, inspect.Parameter]:
    """Constructor parameters of ``name`` besides num_heads/head_dim, annotations evaluated."""
    found: dict[str, inspect.Parameter] = {}
    for klass in get(name).__mro__:  # a subclass taking **options accepts its parent's options
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__, eval_str=True).parameters
        for k, p in params.items():
            if k != "self" and k not in _COMMON and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(k, p)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return found


def options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts besides num_heads/head_dim, with defaults
    (``inspect.Parameter.empty`` marks a required option)."""
    return {k: p.default for k, p in _parameters(name).items()}


def _from_text(name: str, key: str, text: str, annotation) -> Any:
    """The value of option ``key`` written as ``text`` in a spec, converted by its annotation."""
    inner, optional = split_optional(annotation)
    word = text.strip().lower()
    if optional and word == "none":
        return None
    if typing.get_origin(inner) in (list, tuple, Sequence):
        items = [t.strip() for t in text.split("/")]
        item_hint = (typing.get_args(inner) or (float,))[0]
        try:
            if not all(items):
                raise ValueError
            return [_from_text(name, key, t, item_hint) for t in items]
        except ValueError:
            raise ValueError(f"option {key}={text!r} of position encoding {name!r} must be a list written "
                             f"a/b/c, each item {describe(item_hint, 'spec')}.") from None
    try:
        if inner is bool and word in _TRUE + _FALSE:
            return word in _TRUE
        if inner is int:
            return int(text)
        if inner is float:
            try:
                return int(text)  # kept an int, as written (labels and saved configs show "512")
            except ValueError:
                return float(text)
        if inner is str:
            return text
    except ValueError:
        pass
    raise ValueError(f"option {key}={text!r} of position encoding {name!r} must be {describe(annotation, 'spec')}.")


def validate(name: str, opts: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``opts`` has an option ``name`` does not accept, lacks a required one,
    or holds a value whose type does not match the constructor's annotation."""
    params = _parameters(name)
    unknown = sorted(set(opts) - set(params))
    if unknown:
        listing = ", ".join(params) if params else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for position encoding {name!r}; "
                         f"valid options: {listing}.")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in opts]
    if missing:
        raise ValueError(f"position encoding {name!r} needs option(s) {', '.join(missing)}.")
    for key, value in opts.items():
        annotation = params[key].annotation
        if annotation is not inspect.Parameter.empty and not fits(value, annotation):
            expected = describe(annotation, 'python')
            raise ValueError(f"option {key} of position encoding {name!r} must be {expected}, "
                             f"got {value!r} ({type(value).__name__}).")


def check(name: str, num_heads: int, head_dim: int, opts: dict[str, Any]) -> None:
    """:func:`validate`, then build the encoding once and discard it: ``ValueError`` for any option value it
    refuses (out of range, a list of the wrong length, a combination), for one it cannot be built with
    (overflow), and for non-finite initial parameters or buffers -- so a command checks every spec before
    it writes or trains anything. The global random state is left as it was."""
    validate(name, opts)
    try:
        # on the CPU whatever the default device is (transformers builds models on "meta")
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            module = get(name)(num_heads=num_heads, head_dim=head_dim, **opts)
    except (RuntimeError, OverflowError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "allocate" in first or "out of memory" in first.lower():
            raise  # an allocation failure stays one (the command line says "out of memory")
        raise ValueError(f"position encoding {name!r} cannot be built with options {opts} ({first}).") from None
    for tname, t in (*module.named_parameters(), *module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"position encoding {name!r} with options {opts} starts with non-finite values in "
                             f"{tname}; choose smaller option values.")


def build(name: str, num_heads: int, head_dim: int, **opts: Any) -> PositionEncoding:
    """Construct the encoding registered as ``name``; options are validated first."""
    validate(name, opts)
    return get(name)(num_heads=num_heads, head_dim=head_dim, **opts)


@dataclass
class Spec:
    """A parsed ``[label=]name[:key=value,...]``: run label, registry name and typed options."""

    label: str
    position: str
    options: dict[str, Any] = field(default_factory=dict)


def _spec_text(value: Any) -> str:
    """An option value as a spec writes it (lists as ``a/b/c``)."""
    return "/".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def parse_spec(text: str) -> Spec:
    """``[label=]name[:key=value,...]`` -> :class:`Spec`, e.g. ``fire_lin=fire:mlp_layers=0``.

    Values are converted by the annotation of the constructor parameter they set (``threshold=false``
    is ``False``, ``init_r1=none`` is ``None``) and validated against the registry. Without a label,
    the label is the name, followed by ``[key=value,...]`` when options are given.
    """
    text = text.strip()
    label = None
    head, sep, rest = text.partition(":")
    if "=" in head:
        label, _, head = head.partition("=")
        if not label.strip():
            raise ValueError(f"empty label in spec {text!r}; write label=name or just name.")
    name = head.strip()
    params = _parameters(name)
    options: dict[str, Any] = {}
    if sep:
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"option {item!r} in spec {text!r} must look like key=value.")
            if key in options:
                raise ValueError(f"option {key} is given twice in spec {text!r}.")
            if key in params and params[key].annotation is not inspect.Parameter.empty:
                options[key] = _from_text(name, key, val.strip(), params[key].annotation)
            else:
                options[key] = val.strip()  # unknown keys are reported by validate
    validate(name, options)
    if label is None:
        label = name if not options else name + "[" + ",".join(f"{k}={_spec_text(v)}" for k, v in options.items()) + "]"
    return Spec(label.strip(), name, options)


def training_options(position: str, options: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """``options`` plus the encoding's :meth:`~.base.PositionEncoding.training_defaults` for a run at
    ``seq_len`` (what ``firepe train`` and ``firepe compare`` use; a given option always wins)."""
    opts = dict(options)
    for key, value in get(position).training_defaults(dict(options), seq_len).items():
        opts.setdefault(key, value)
    return opts
