"""Name -> encoding class registry with validated options (like HF's ``ROPE_INIT_FUNCTIONS``).

>>> from firepe import positions
>>> enc = positions.build("fire", num_heads=12, head_dim=64, mlp_layers=1)
>>> positions.available()  # doctest: +ELLIPSIS
['alibi', 'fire', ...]
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import PositionEncoding

_REGISTRY: dict[str, type[PositionEncoding]] = {}
_COMMON = ("num_heads", "head_dim")


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


def options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts besides num_heads/head_dim, with defaults
    (``inspect.Parameter.empty`` marks a required option)."""
    found: dict[str, Any] = {}
    for klass in get(name).__mro__:  # a subclass taking **options accepts its parent's options
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        for k, p in params.items():
            if k != "self" and k not in _COMMON and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(k, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return found


def validate(name: str, opts: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``opts`` has an option ``name`` does not accept or lacks a required one."""
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        listing = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for position encoding {name!r}; "
                         f"valid options: {listing}.")
    missing = [k for k, d in valid.items() if d is inspect.Parameter.empty and k not in opts]
    if missing:
        raise ValueError(f"position encoding {name!r} needs option(s) {', '.join(missing)}.")


def build(name: str, num_heads: int, head_dim: int, **opts: Any) -> PositionEncoding:
    """Construct the encoding registered as ``name``; options are validated first."""
    validate(name, opts)
    return get(name)(num_heads=num_heads, head_dim=head_dim, **opts)
