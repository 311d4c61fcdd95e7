"""Small validators shared by the family's parts; each raises a one-line :class:`SpecError`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from metasam.errors import SpecError


def number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within optional bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(field, f"expected a number, got {value!r}", _range(low, high, low_open,
                                                                          high_open))
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(field, f"must be finite, got {value!r}",
                        _range(low, high, low_open, high_open))
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise SpecError(field, f"out of range: {value!r}", _range(low, high, low_open, high_open))
    return value


def integer(field: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number within optional bounds (floats with an integral value are accepted)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"expected a whole number, got {value!r}", _range(low, high))
    if (low is not None and value < low) or (high is not None and value > high):
        raise SpecError(field, f"out of range: {value!r}", _range(low, high))
    return value


def boolean(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, f"expected true or false, got {value!r}", "true, false")
    return value


def choice(field: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise SpecError(field, f"unknown value {value!r}", allowed)
    return value


def numbers(field: str, values: Any, *, min_len: int = 1) -> tuple[float, ...]:
    """A non-empty list of finite numbers."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise SpecError(field, f"expected a list of numbers, got {values!r}",
                        f"a list of at least {min_len} finite numbers")
    values = list(values)
    if len(values) < min_len:
        raise SpecError(field, f"needs at least {min_len} entries, got {len(values)}",
                        f"a list of at least {min_len} finite numbers")
    return tuple(number(f"{field}[{i}]", v) for i, v in enumerate(values))


def known_keys(field: str, mapping: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject keys outside ``allowed`` (a typo must not be ignored silently)."""
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            prefix = f"{field}." if field else ""
            raise SpecError(f"{prefix}{key}", "unknown key", allowed)


def mapping(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(field, f"expected a mapping, got {type(value).__name__}")
    return value


def _range(low: float | None, high: float | None, low_open: bool = False,
           high_open: bool = False) -> str:
    if low is None and high is None:
        return "finite numbers"
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    if low is None:
        left = "("
    if high is None:
        right = ")"
    return f"{left}{lo}, {hi}{right}"
