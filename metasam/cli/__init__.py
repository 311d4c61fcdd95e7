"""The ``metasam`` command: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metasam.errors import ValidationError

SUBCOMMANDS = ("train", "sharpness", "tune", "analysis", "dashboard", "meta")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="metasam", description="Search the universal class of sharpness-aware "
        "minimization for the best sharpness bias per dataset.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"metasam.cli.{name}")
        module.register(sub)  # tune: tune/best/trials; analysis: compare/report/explain
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValidationError as err:  # the user's input: one line, exit 2
        print(f"metasam {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metasam {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if type(err).__module__.startswith("sqlalchemy"):
            # a database error after the storage opened (a file corrupted or made read-only
            # meanwhile, a server gone): the environment, not a bug; one line, not a trace
            orig = getattr(err, "orig", None) or err
            print(f"metasam {args.command}: error: the study storage failed: "
                  f"{_one_line(orig)}", file=sys.stderr)
            return 2
        return _internal_error(args.command, err)


def _internal_error(command: str, err: BaseException) -> int:
    """Anything but bad input is a bug in metasam: say so, keep the traceback (written to a
    file, or printed with ``METASAM_TRACEBACK=1``), exit 1."""
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(err))
    if os.environ.get("METASAM_TRACEBACK"):
        print(text, file=sys.stderr, end="")
        where = "traceback above"
    else:
        fd, path = tempfile.mkstemp(prefix="metasam-traceback-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = f"traceback written to {path}"
    print(f"metasam {command}: internal error (a bug in metasam, please report it): "
          f"{type(err).__name__}: {_one_line(err)}; {where}", file=sys.stderr)
    return 1


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
