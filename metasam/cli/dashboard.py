"""``metasam dashboard``: optuna-dashboard on a study's storage."""

from __future__ import annotations

import argparse
import sys

from metasam.cli._options import load_study_config
from metasam.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    dashboard = sub.add_parser(
        "dashboard", help="browse a study in optuna-dashboard",
        description="Serve optuna-dashboard on the study's storage (SQLite, PostgreSQL or "
        "journal); every trial shows metasam's attributes (label, spec, train, epochs, "
        "full_budget, status). Needs the extra: pip install 'metasam[dashboard]'.")
    dashboard.add_argument("study", metavar="STUDY.yaml")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=int, default=8080,
                           help="port to serve on, 1 to 65535 (default 8080)")
    dashboard.set_defaults(run=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:

    if not 0 < args.port < 65536:
        raise ConfigError("--port", f"{args.port} is not a port", "1 to 65535")
    config = load_study_config(args.study)
    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("", "optuna-dashboard is not installed",
                          "pip install 'metasam[dashboard]'") from None
    study = config.load_study()  # the study must exist (no empty file) and match this file
    print(f"metasam dashboard: study {config.name!r} at http://{args.host}:{args.port}/ "
          "(Ctrl-C stops it)", file=sys.stderr, flush=True)
    from metasam.tuning.compat import study_storage

    optuna_dashboard.run_server(study_storage(study), host=args.host, port=args.port)
    return 0
