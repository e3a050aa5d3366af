"""Protobuf enum values as the short lower-case words people and JSON use, and back.

`VERDICT_REVIEW` is `review` on a screen, in an MES message and in a log; one pair of functions
so every service spells them the same way and an unknown number or word is handled once.
"""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def _prefix(enum: EnumTypeWrapper) -> str:
    """The shared `VERDICT_` style prefix: the name of value 0 up to its last underscore."""
    zero = enum.Name(0) if 0 in enum.values() else ""
    return zero.rsplit("_", 1)[0] + "_" if "_" in zero else ""


def enum_word(enum: EnumTypeWrapper, value: int) -> str:
    """`VERDICT_REVIEW` -> `review`; 0 (unspecified) -> ``""``; an unknown number keeps its digits."""
    if not value:
        return ""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(_prefix(enum)).lower()


def enum_value(enum: EnumTypeWrapper, word: str) -> int:
    """`review` or `VERDICT_REVIEW` -> its number; ValueError naming the allowed words otherwise."""
    prefix = _prefix(enum)
    name = word.strip().upper()
    name = name if name.startswith(prefix) else prefix + name
    if name not in enum.keys() or name == enum.Name(0):  # noqa: SIM118 (EnumTypeWrapper has no __contains__)
        allowed = ", ".join(enum_words(enum))
        raise ValueError(f"unknown value {word!r}; expected one of: {allowed}")
    return int(enum.Value(name))


def enum_words(enum: EnumTypeWrapper) -> list[str]:
    """Every word except the unspecified value, in declaration order."""
    prefix = _prefix(enum)
    return [n.removeprefix(prefix).lower() for n in enum.keys() if enum.Value(n) != 0]  # noqa: SIM118
