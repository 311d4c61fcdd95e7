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
