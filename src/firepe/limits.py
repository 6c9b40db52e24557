"""Upper bounds of every size-like setting, checked before any work starts.

A typo such as ``--batch-size 1000000000`` or ``--max-new-tokens 1000000000`` used to be accepted and
then allocate, or decode, for minutes before running out of memory (or never end). These bounds are far
above anything the paper or a GPU run uses and far below what would tie a machine up; a value past one is
refused in one sentence naming the setting and the bound.
"""

from __future__ import annotations

from typing import Any

#: tokens in one sequence: a training length, an evaluation or scoring length, prompt + new tokens
MAX_LENGTH = 2**20
#: tokens of one optimizer step (batch_size x seq_len), of one evaluation/scoring forward (--batch-tokens)
MAX_BATCH_TOKENS = 2**24
#: optimizer steps, warm-up steps, logging/checkpoint intervals
MAX_STEPS = 10**9
#: examples generated or scored per cell (passkey --examples, --task-examples)
MAX_EXAMPLES = 10**6
#: validation tokens and a training-token cap
MAX_TOKENS = 2**40

__all__ = ["MAX_LENGTH", "MAX_BATCH_TOKENS", "MAX_STEPS", "MAX_EXAMPLES", "MAX_TOKENS", "check_at_most",
           "split_list"]


def check_at_most(value: Any, name: str, limit: int, unit: str = "") -> None:
    """``ValueError`` when the number ``value`` exceeds ``limit`` (None and non-numbers pass: other checks
    own them)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        raise ValueError(f"{name} must be at most {limit:,}{unit} (firepe.limits), got {value:,}.")


def split_list(text: Any, convert, flag: str, items: str, example: str) -> list:
    """A comma-separated option (``--lengths``, ``--depths``) -> its items through ``convert``; ValueError naming
    ``flag`` when an item does not convert (``must be comma-separated {items}``) or there is none."""
    try:
        values = [convert(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated {items}, got {text!r}.") from None
    if not values:
        raise ValueError(f"{flag} is empty; pass e.g. {example}.")
    return values
