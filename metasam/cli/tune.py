"""``metasam tune``, ``metasam best`` and ``metasam trials``: run, export and inspect studies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from metasam.cli._options import add_ray_options, load_study_config
from metasam.errors import ConfigError
from metasam.tuning.study_config import MetaSettings, StudyConfig, prior_file

if TYPE_CHECKING:  # the workflow pulls in Ray and Optuna: imported when a command runs
    from metasam.decision.outcome import Verdict
    from metasam.workflow import Study


def register(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser(
        "tune", help="run or resume a tuning study",
        description="Run a study until it has its number of finished trials. Re-running the "
        "same command resumes it; several processes (or machines, with a PostgreSQL storage "
        "and --address) can work on one study together.")
    tune.add_argument("study", metavar="STUDY.yaml")
    tune.add_argument("--trials", type=int, default=None, help="override the study's trials")
    tune.add_argument("--concurrency", type=int, default=None,
                      help="override the study's concurrency")
    tune.add_argument("--warm-start", metavar="OTHER.yaml", default=None,
                      help="evaluate the top-k specs of another study first")
    tune.add_argument("--top-k", type=int, default=3,
                      help="with --warm-start: how many of the other study's best specs "
                      "run first (whole numbers ≥ 1; default 3)")
    tune.add_argument("--meta", metavar="PRIOR", nargs="+", default=None,
                      help="finished studies (STUDY.yaml) or knowledge files (.json, from "
                      "`metasam meta --save`) to learn from, in place of the study file's "
                      "meta.from: a new study evaluates the zero-shot portfolio of their specs "
                      "first (weighted by task similarity) and samples the preset regions "
                      "within the similar tasks' winners' boxes on a share of its trials")
    tune.add_argument("--meta-k", type=int, default=None,
                      help="portfolio size (default: the study file's meta.k, or 3)")
    tune.add_argument("--meta-box", type=float, default=None, metavar="P",
                      help="share of region trials sampled within the boxes, 0 to 1 "
                      "(default: the study file's meta.box, or 0.5)")
    tune.add_argument("--thorough", action="store_true",
                      help="a quick study's file run as a thorough one: the search, race and "
                      "confirmation it configures (as the study NAME-thorough in the same "
                      "storage; docs/search.md §9 says when it pays)")
    add_ray_options(tune)
    tune.set_defaults(run=run_tune)

    best = sub.add_parser("best", help="print and write a study's best optimizer as JSON")
    best.add_argument("study", metavar="STUDY.yaml")
    best.add_argument("--out", default=None,
                      help="where to write it (default: STUDY.best.json next to the study)")
    best.add_argument("--max-cost", type=float, default=None, metavar="EVALS",
                      help="the best trial of the accuracy/cost Pareto front within EVALS "
                      "gradient evaluations (forward/backward passes) per run")
    best.add_argument("--thorough", action="store_true",
                      help="the thorough study run by `tune --thorough` on a quick file")
    best.set_defaults(run=run_best)

    trials = sub.add_parser("trials", help="list a study's trials")
    trials.add_argument("study", metavar="STUDY.yaml")
    trials.add_argument("--json", action="store_true",
                        help="every trial, the verdict, the cost and the Pareto front as one "
                        "JSON object")
    trials.add_argument("--wide", action="store_true",
                        help="show where each trial ran (host/device; shown anyway when more "
                        "than one host took part) and never cut rows to the terminal's width")
    trials.add_argument("--thorough", action="store_true",
                      help="the thorough study run by `tune --thorough` on a quick file")
    trials.set_defaults(run=run_trials)


def _meta_options(args: argparse.Namespace, config: StudyConfig) -> MetaSettings | None:
    """The study file's ``meta`` section with ``--meta``, ``--meta-k`` and ``--meta-box`` in
    place of its fields (validated as they are)."""
    meta = config.meta
    sources = tuple(prior_file("--meta", source, Path.cwd()) for source in args.meta or ())
    if args.meta_k is not None and args.meta_k < 1:
        raise ConfigError("--meta-k", f"out of range: {args.meta_k}", "whole numbers ≥ 1")
    if args.meta_box is not None and not 0 <= args.meta_box <= 1:
        raise ConfigError("--meta-box", f"out of range: {args.meta_box}", "[0, 1]")
    if not sources and meta is None:
        if args.meta_k is not None or args.meta_box is not None:
            raise ConfigError("--meta-k/--meta-box", "no prior studies to learn from",
                              "with --meta PRIOR ... or a meta section in the study file")
        return None
    base = meta or MetaSettings(sources)
    return MetaSettings(sources or base.sources,
                        args.meta_k if args.meta_k is not None else base.k,
                        args.meta_box if args.meta_box is not None else base.box)


def run_tune(args: argparse.Namespace) -> int:
    from metasam.decision.stage import study_plan
    from metasam.tuning.storage import open_storage, open_study
    from metasam.tuning.tracking import check_trackers
    from metasam.workflow import Study

    config = load_study_config(args.study)
    if args.thorough:
        config = config.thorough()
    config = config.with_overrides(args.trials, args.concurrency)
    if args.top_k < 1:
        raise ConfigError("--top-k", f"out of range: {args.top_k}", "whole numbers ≥ 1")
    warm = load_study_config(args.warm_start) if args.warm_start else None
    meta = _meta_options(args, config)
    config.check_data()
    # a tracker that does not answer, a budget the stages cannot fit: before anything is written
    check_trackers(config.tracking, str(config.path))
    plan = study_plan(config) if config.race is not None else None
    # the storage first: a broken one fails in one line, before anything is printed
    config.check_definition(open_study(open_storage(config.storage), config.name, config.mode))
    print(f"study {config.name}: {config.headline()}, storage {config.storage}",
          file=sys.stderr)
    study = Study(config, address=args.address, verbose=0 if args.quiet else 1)
    if plan is not None:   # what the study may spend and claim, before any run
        print(f"study {config.name}: {plan.line(config.metric)}", file=sys.stderr)
    outcome = study.run(warm_start=warm, top_k=args.top_k, meta=meta)
    state = outcome.tuning.census
    if not config.quick:   # a quick study has no search of its own
        print(f"study {config.name}: {state.describe(config.target)}")
    if not outcome.tuning.done:
        print(f"study {config.name}: stopped before the end ({outcome.tuning.released} "
              "unfinished trials given back); run the same command again to resume",
              file=sys.stderr)
        return 130
    if not outcome.decided:
        print(f"study {config.name}: the race stopped before the end; run the same "
              "command again to resume", file=sys.stderr)
        return 130
    _print_verdict(study, verdict=outcome.verdict)   # the one Study.run computed
    return 0


def _print_verdict(study: Study, file: TextIO | None = None,
                   verdict: Verdict | None = None) -> None:
    """The race's winner and its verdicts (``verdict``, when the caller has it already), or
    what the study's best is without; then the study's cost."""
    verdict = verdict if verdict is not None else study.verdict()
    config = study.config
    if verdict is None:
        print(f"study {config.name}: no race runs (race: false, or none finished): the best "
              "trial is a single-instance result", file=file)
    else:
        for line in verdict.lines(config.metric):
            print(line, file=file)
    print(study.cost().line(), file=file)


def run_best(args: argparse.Namespace) -> int:
    from metasam.workflow import Study

    config = load_study_config(args.study)
    config = config.thorough() if args.thorough else config
    if args.max_cost is not None and not args.max_cost > 0:
        raise ConfigError("--max-cost", f"out of range: {args.max_cost:g}",
                          "a positive number of gradient evaluations")
    study = Study(config)
    data = study.export(max_cost=args.max_cost)
    if args.max_cost is not None:
        _print_front(config, data["front"], data["trial"], file=sys.stderr)
    out = Path(args.out) if args.out else config.path.with_name(f"{config.name}.best.json")
    text = json.dumps(data, indent=2, ensure_ascii=False)
    out.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"written to {out}", file=sys.stderr)
    if args.max_cost is None:
        _print_verdict(study, file=sys.stderr)
    return 0


def _fit(line: str, columns: int) -> str:
    """A table row cut to the terminal's width (its trailing note gives way first)."""
    line = line.rstrip()
    return line if len(line) <= columns else line[:max(20, columns - 1)] + "…"


def _print_front(config: StudyConfig, front: list[dict[str, Any]], chosen: int | None = None,
                 file: TextIO | None = None) -> None:
    """The Pareto front of the metric against gradient evaluations, cheapest first."""
    print(f"Pareto front ({config.metric} against gradient evaluations per run, "
          f"{len(front)} points):", file=file)
    from metasam.decision.outcome import Verdict

    scale, _ = Verdict.scale_of(config.metric)
    for p in front:
        mark = " <- chosen" if p["number"] == chosen else ""
        value = f"{p['value'] * scale:.2f}%" if scale == 100.0 else f"{p['value']:.4f}"
        print(f"  #{p['number']:<4} {p['grad_evals']:>9} evals  {config.metric} "
              f"{value}  {p['label']}{mark}", file=file)


def run_trials(args: argparse.Namespace) -> int:
    from metasam.analysis.tables import trial_rows
    from metasam.tuning.cost_score import pareto_front
    from metasam.tuning.storage import census
    from metasam.workflow import Study

    config = load_study_config(args.study)
    config = config.thorough() if args.thorough else config
    workflow = Study(config)
    study = config.load_study()
    front = pareto_front(study, config.metric, config.mode)
    rows = trial_rows(study)
    if args.json:
        verdict = workflow.verdict()
        print(json.dumps({"trials": rows,
                          "verdict": verdict.to_dict(config.metric) if verdict else None,
                          "cost": workflow.cost().to_dict(),
                          "front": [vars(p) for p in front]}))
        return 0
    import shutil
    import textwrap

    from metasam.decision.outcome import Verdict

    # one unit per metric (accuracies in %, as the race table), each label once, rows cut to
    # the terminal (COLUMNS) unless --wide
    scale, _ = Verdict.scale_of(config.metric) if config.objective == config.metric \
        else (1.0, "")
    head = f"{config.objective} %" if scale == 100.0 else config.objective
    # where each trial ran: shown when more than one host or Ray node took part, or with --wide
    hosts = {r["placement"]["host"] for r in rows if r["placement"]}
    nodes = {(r["placement"]["host"], r["placement"]["node"]) for r in rows if r["placement"]}
    wide = args.wide or len(nodes) > 1
    columns = 10_000 if args.wide else shutil.get_terminal_size((120, 24)).columns
    where_width = max([5] + [len(r["where"]) for r in rows]) if wide else 0
    where_head = f"{'where':<{where_width}} " if wide else ""
    print(textwrap.fill(
        f"columns: # trial number; Optuna's state; {head}: its value at the last epoch it ran "
        f"(ep); full: reached all {config.train.epochs} epochs (else stopped early by ASHA); "
        "passes: forward-backward passes per step; then the member it trains, and its spec or "
        "why it stopped", width=max(40, min(columns, 100))))
    print(_fit(f"{'#':>4} {'state':<9} {head:>9} {'ep':>3} {'full':>4} {'passes':>6}  "
               f"{where_head}label — spec or reason", columns))
    for r in rows:
        value = "" if r["value"] is None else f"{r['value'] * scale:.2f}" if scale == 100.0 \
            else f"{r['value']:.4f}"
        summary = r["summary"] if r["summary"] and r["summary"] not in str(r["label"]) else ""
        note = "interrupted, re-run" if r["interrupted"] else (
            "surplus" if not r["counted"] else (r["reason"] or summary))
        where = f"{r['where']:<{where_width}} " if wide else ""
        print(_fit(f"{r['number']:>4} {r['state']:<9} {value:>9} "
                   f"{r['epochs'] if r['epochs'] is not None else '':>3} "
                   f"{'yes' if r['full_budget'] else '':>4} {r['passes'] or '':>6}  {where}"
                   f"{r['label']}{' — ' + note if note else ''}", columns))
    if len(nodes) > 1:
        print(f"ran on {len(nodes)} Ray node(s) on {len(hosts)} host(s): "
              + ", ".join(f"{host}/{(node or '?')[:8]}" for host, node in sorted(
                  nodes, key=lambda n: (n[0], n[1] or ""))))
    print(census(study).describe(config.target))
    if front:
        _print_front(config, [vars(p) for p in front])
    _print_verdict(workflow)
    return 0
