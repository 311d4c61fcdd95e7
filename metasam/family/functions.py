"""Reading φ blocks and ψ from their JSON form: one reader for both.

A function is a name (``"square"``), or ``{"fn": NAME, ...parameters}`` for a named function
(its parameters checked against its table entry), or one of the special forms with their own
fields (``{"fn": "polynomial", "coefficients": [...]}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metasam import _checks
from metasam.errors import SpecError


@dataclass(frozen=True)
class Form:
    """A special form: the fields it takes, those it needs, how to say what is allowed, and its
    constructor (called with the fields as keywords)."""

    keys: tuple[str, ...]
    required: tuple[str, ...]
    allowed: str
    build: Callable[..., Any]


def read_function(obj: Any, *, named: Mapping[str, Any], forms: Mapping[str, Form],
                  make_named: Callable[..., Any]) -> Any:
    """The function ``obj`` describes: a special form of ``forms`` or ``make_named(name,
    **parameters)`` for a name of ``named``."""
    if isinstance(obj, str):
        obj = {"fn": obj}
    obj = _checks.mapping("", obj)
    choices = sorted(named) + list(forms)
    if "fn" not in obj:
        raise SpecError("fn", "missing", choices)
    fn = obj["fn"]
    rest = {k: v for k, v in obj.items() if k != "fn"}
    if not isinstance(fn, str):
        raise SpecError("fn", f"expected a name, got {fn!r}", choices)
    form = forms.get(fn)
    if form is None:
        return make_named(fn, **rest)
    _checks.known_keys("", rest, form.keys)
    for key in form.required:
        if key not in rest:
            raise SpecError(key, "missing", form.allowed)
    return form.build(**rest)


def named_parameters(table: Mapping[str, Any], name: str, params: dict[str, Any], symbol: str,
                     forms: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The table entry of a named function and its checked parameters (defaults filled in).
    Each entry has ``params`` (name → default) and ``check`` (parameters → checked ones)."""
    definition = table.get(name)
    if definition is None:
        raise SpecError("fn", f"unknown {symbol} function {name!r}", sorted(table) + list(forms))
    _checks.known_keys("", params, definition.params)
    return definition, definition.check({**definition.params, **params})
