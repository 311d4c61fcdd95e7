"""Command-line options generated from a config dataclass's fields."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from metasam import _config


def _parse_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """``--field-name VALUE`` for every field of ``cls`` (``--flag/--no-flag`` for booleans);
    options not given stay absent from the parsed namespace (``argparse.SUPPRESS``)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (also settable in --config YAML)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        allowed = _config.allowed_text(f.metadata["check"]) if "check" in f.metadata else None
        if allowed:
            default = "" if f.default is dataclasses.MISSING else f"; default {f.default}"
            help_text += f" (one of: {allowed}{default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help
        kind = hints[f.name]
        base = _base_type(kind)
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif base is list:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_text,
                               type=_list_type(f.name))
        elif base is dict:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="JSON",
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, type=base,
                               help=help_text)


def _list_type(name: str) -> Any:
    if name == "milestones":
        return _parse_list
    return lambda text: [v for v in text.split(",") if v]


def _base_type(kind: Any) -> type:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _base_type(args[0])
    if origin is not None:
        return origin
    return kind


def overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    """``--address`` and ``--quiet`` of the commands that run trials through Ray Tune."""
    parser.add_argument("--address", default=None, help="join this Ray cluster (e.g. "
                        "HOST:6379) instead of starting a local one")
    parser.add_argument("--quiet", action="store_true", help="no progress table")


def load_study_config(path: str) -> Any:
    """A study config from its YAML file (validated; errors name the file)."""
    from metasam.tuning.study_config import StudyConfig

    return StudyConfig.from_yaml(path)
