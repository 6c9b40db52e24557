"""Type hints read one way: encoding options (:mod:`.registry`), config fields (:mod:`firepe.config`)
and command-line flags (:mod:`firepe.cli`) all ask these three functions what a hint allows.

* :func:`split_optional` -- ``X | None`` -> ``(X, True)``.
* :func:`fits` -- whether a value matches a hint (``int`` excludes ``bool``; ``float`` takes integers;
  lists and tuples check their items; unknown hints accept anything).
* :func:`describe` -- the hint in words, in the style of the caller: ``"json"`` (config files),
  ``"spec"`` (an option written in a spec string) or ``"python"`` (an option passed from Python).

A leaf: it imports nothing from firepe, so the config leaf and the positions package both use it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["split_optional", "fits", "describe"]

_UNIONS = (typing.Union, types.UnionType)
_SEQUENCES = (list, tuple, Sequence)


def split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in _UNIONS:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _is_sequence_hint(hint: Any) -> bool:
    return typing.get_origin(hint) in _SEQUENCES or hint in _SEQUENCES


def fits(value: Any, hint: Any, finite: bool = False) -> bool:
    """Whether ``value`` matches ``hint``. ``finite``: a ``float`` must also be finite (config files);
    encoding options leave that check to the encoding. A tensor passes for a list hint."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if typing.get_origin(hint) in _UNIONS:
        return any(fits(value, h, finite) for h in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and (not finite or math.isfinite(value)))
    if hint is str:
        return isinstance(value, str)
    if _is_sequence_hint(hint):
        if hasattr(value, "tolist") and hasattr(value, "dim"):  # a tensor of values
            return True
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(fits(v, args[0], finite) for v in value) if args else True
    if typing.get_origin(hint) is dict or hint is dict:
        return isinstance(value, dict)
    return True


_WORDS = {
    "json": {type(None): "null", bool: "true/false", int: "an integer", float: "a finite number", str: "a string"},
    "spec": {bool: "a bool (true/false/1/0/yes/no)", int: "an integer", float: "a number", str: "a string"},
    "python": {bool: "a bool (True or False)", int: "an integer", float: "a number", str: "a string"},
}


def describe(hint: Any, style: str = "json") -> str:
    """``hint`` in words: ``json`` joins every member of a union with "or" ("an integer or null");
    ``spec`` and ``python`` describe ``X | None`` as X's words plus "or none" / "or None"."""
    words = _WORDS[style]
    if style == "json":
        if typing.get_origin(hint) in _UNIONS:
            return " or ".join(describe(h, style) for h in typing.get_args(hint))
        return words.get(hint, getattr(hint, "__name__", str(hint)))
    inner, optional = split_optional(hint)
    base = "a list" if _is_sequence_hint(inner) else words.get(inner, getattr(inner, "__name__", str(inner)))
    return base + ((" or none" if style == "spec" else " or None") if optional else "")
