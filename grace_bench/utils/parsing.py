"""Parsing of loosely typed settings (config files, method arguments, environment variables): one copy each."""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(value: Any) -> bool:
    """``True``/``False``, 0/1, or one of ``TRUE_WORDS``/``FALSE_WORDS`` (any case) -> bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_number(value: Any) -> float:
    """A float from a number or a string such as ``"4/255"``, ``"0.0157"`` or ``"1e-5"``; ValueError otherwise.

    The one parser of fraction strings (ε, PGD step sizes, hyperparameters); ``attacks.threat.parse_eps`` adds
    ε's own checks.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    if "/" in text:
        num, _, den = text.partition("/")
        denominator = float(den)
        if denominator == 0:
            raise ValueError(value)
        return float(num) / denominator
    return float(text)
