"""Every command's --help works (argparse formats help texts with %)."""

from __future__ import annotations

import pytest


def test_every_command_prints_its_help(capsys) -> None:
    from metasam.cli import SUBCOMMANDS, build_parser, main

    commands = [name for action in build_parser()._subparsers._group_actions
                for name in action.choices]
    assert {"train", "tune", "best", "trials", "compare", "report", "explain",
            "dashboard"} <= set(commands)
    assert len(SUBCOMMANDS) == 6
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: metasam " + command in capsys.readouterr().out


def test_every_option_says_what_it_does_and_its_allowed_values() -> None:
    """No option without a help text; an option with a fixed set of values lists them."""
    import argparse

    from metasam.cli import build_parser
    from metasam.training.config import TrainConfig

    missing = []
    for action in build_parser()._subparsers._group_actions:
        for command, parser in action.choices.items():
            for option in parser._actions:
                if option.option_strings and not isinstance(option, argparse._HelpAction) \
                        and not (option.help or "").strip():
                    missing.append(f"{command} {option.option_strings[0]}")
    assert not missing, missing
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    for field in ("model", "optimizer", "schedule", "test", "bn_stats"):
        allowed = TrainConfig.__dataclass_fields__[field].metadata["check"].allowed
        assert all(value in helps[field] for value in allowed), (field, helps[field])
