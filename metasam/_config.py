"""Validated dataclass configs read from dicts and YAML files, with one-line errors.

A config dataclass declares each field with :func:`option`, giving its check. Reading a mapping
rejects unknown keys, runs every check, and reports the first problem as
``FILE: field: problem; allowed: values``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from metasam import _checks
from metasam.errors import ConfigError, ValidationError

T = TypeVar("T")
Check = Callable[[str, Any], Any]


def option(default: Any, check: Check, help: str = "", *, factory: Callable[[], Any] | None = None
           ) -> Any:
    """A dataclass field whose value ``check(field_name, value)`` validates and normalizes."""
    metadata = {"check": check, "help": help}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def validate(instance: Any) -> None:
    """Run every field's check on a dataclass instance (in ``__post_init__``)."""
    for f in dataclasses.fields(instance):
        check = f.metadata.get("check")
        if check is None:
            continue
        try:
            value = check(f.name, getattr(instance, f.name))
        except ValidationError as err:
            raise ConfigError(err.field, err.problem, err.allowed, err.source) from None
        object.__setattr__(instance, f.name, value)


def from_mapping(cls: type[T], data: Any, source: str | None = None, prefix: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys; errors name ``source`` (and the
    keys sit under ``prefix``, e.g. ``search``, in a nested section)."""
    try:
        if not isinstance(data, Mapping):
            raise ConfigError(prefix, f"expected a mapping of fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        try:
            _checks.known_keys(prefix, data, names)
        except ValidationError as err:
            raise ConfigError(err.field, err.problem, err.allowed) from None
        return cls(**data)
    except ValidationError as err:
        raise (err.with_source(source) if source else err) from None


def section(cls: type[T], shape: str) -> Check:
    """The check of a mapping section read into the option dataclass ``cls`` (absent: its
    defaults); errors name the section's fields (``resources.cpu``) and its ``shape``."""
    def check(name: str, value: Any) -> T:
        if isinstance(value, cls):
            return value
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(name, f"expected {shape}")
        try:
            return from_mapping(cls, value, prefix=name)
        except ValidationError as err:
            if err.field == name or err.field.startswith(f"{name}.") or not err.field:
                raise
            raise err.within(name) from None
    return check


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line :class:`ConfigError`."""
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError("file", f"cannot read ({err.strerror})", source=source) from None
    try:
        return yaml.load(text, Loader=_unique_keys_loader())  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as err:
        raise ConfigError(err.key, f"duplicated key at line {err.line} (YAML would silently "
                          "keep the last value)", "each key once per mapping",
                          source=source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("yaml", f"invalid YAML{where}: {problem}", source=source) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


def _unique_keys_loader() -> Any:
    """yaml.SafeLoader that refuses a key given twice in one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def to_mapping(instance: Any) -> dict[str, Any]:
    return dataclasses.asdict(instance)


# --- checks -----------------------------------------------------------------------------------

def choice(*allowed: str) -> Check:
    def check(name: str, value: Any) -> Any:
        return _checks.choice(name, value, allowed)
    check.allowed = allowed  # type: ignore[attr-defined]   # for help texts
    return check


def one_or_more(allowed: Callable[[], Sequence[str]] | Sequence[str], what: str) -> Check:
    """A name or a non-empty list of names, each one of ``allowed`` (or of what ``allowed()``
    returns, for a registry imported late); returned as a tuple."""
    def check(name: str, value: Any) -> tuple[str, ...]:
        names = tuple(allowed() if callable(allowed) else allowed)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(name, f"expected a list of {what}, got {value!r}",
                              ", ".join(names))
        return tuple(_checks.choice(name, v, names) for v in value)
    return check


def allowed_text(check: Check) -> str | None:
    """The allowed values of a :func:`choice` check, for a help text (``None``: not one)."""
    allowed = getattr(check, "allowed", None)
    return ", ".join(allowed) if allowed else None


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           optional: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return None
        return _checks.number(name, value, low=low, high=high, low_open=low_open)
    return check


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return None
        return _checks.integer(name, value, low=low, high=high)
    return check


def boolean(name: str, value: Any) -> bool:
    return _checks.boolean(name, value)


def text(optional: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return None
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return str(value)
    return check


def anything(name: str, value: Any) -> Any:
    return value
