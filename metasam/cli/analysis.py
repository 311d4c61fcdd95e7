"""``metasam compare``, ``metasam report`` and ``metasam explain``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metasam.cli._options import add_ray_options, load_study_config
from metasam.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="train the study's best bias and every baseline over several seeds",
        description="Train the best spec of a study and SGD, SAM, ASAM, SSAM-F, Trace-, Frob- "
        "and Det-SAM with the full budget on train + validation, for each seed, through Ray "
        "Tune; resumable like `metasam tune`.")
    compare.add_argument("study", metavar="STUDY.yaml")
    compare.add_argument("--seeds", type=int, default=4,
                         help="paired seeds per method (whole numbers ≥ 1; default 4)")
    compare.add_argument("--tune-baselines", action="store_true",
                         help="tune each baseline by its own small grid on validation first")
    compare.add_argument("--sharpness-every", type=int, default=0,
                         help="Hessian measures (tr H, ‖H‖_F, λ_max on the train.sharpness_"
                         "examples) every K epochs, for the report's sharpness plot; 0 (the "
                         "default): none. Each measure costs about as much as an epoch on "
                         "small data (80 s for 256 examples on a 2-core CPU)")
    add_ray_options(compare)
    compare.set_defaults(run=run_compare)

    report = sub.add_parser(
        "report", help="an HTML page per study, tables (Markdown, CSV, LaTeX) and plots",
        description="From the tuning study alone: the verdict, the race, the search's history, "
        "Pareto front and cost, as NAME.html (self-contained, verdict first) and PNG plots; "
        "with `metasam compare`'s runs, the test-set tables and plots too.")
    report.add_argument("studies", metavar="STUDY.yaml", nargs="+")
    report.add_argument("--out", default=None,
                        help="output folder (default: report/ next to the first study)")
    report.add_argument("--no-html", action="store_true", help="skip the HTML pages")
    report.add_argument("--screenshot", action="store_true",
                        help="also NAME-page.png: the page's first screen (1280 × 900) in "
                        "headless Chromium (Debian's chromium, or METASAM_BROWSER)")
    report.set_defaults(run=run_report)

    explain = sub.add_parser(
        "explain", help="what a bias measures",
        description="Evaluate a spec's implied measure S(H) on synthetic spectra and compare it "
        "with tr H, ‖H‖_F², det H and λ_max.")
    explain.add_argument("spec", metavar="SPEC", help="a spec or optimizer JSON, a study YAML "
                         "(its best) or a preset name")
    explain.add_argument("--dim", type=int, default=10, help="dimension of the spectra")
    explain.add_argument("--spectra", type=int, default=200,
                         help="random Hessian spectra to evaluate the measure on (default 200)")
    explain.add_argument("--scale", type=float, default=None,
                         help="overall Hessian scale (default: the measure's characteristic one)")
    explain.add_argument("--plot", default=None, help="PNG path (default: explain-NAME.png)")
    explain.add_argument("--json", action="store_true",
                         help="print the explanation as one JSON object")
    explain.set_defaults(run=run_explain)


def run_compare(args: argparse.Namespace) -> int:
    from metasam.analysis.runs import collect
    from metasam.decision.compare import run_compare as compare

    config = load_study_config(args.study)
    if args.seeds < 1:
        raise ConfigError("--seeds", f"out of range: {args.seeds}", "whole numbers ≥ 1")
    if args.sharpness_every < 0:
        raise ConfigError("--sharpness-every", f"out of range: {args.sharpness_every}",
                          "whole numbers ≥ 0")
    config.check_data()
    comparison = compare(config, args.seeds, tuned_baselines=args.tune_baselines,
                         address=args.address, verbose=0 if args.quiet else 1,
                         sharpness_every=args.sharpness_every)
    runs = collect(config)
    print(f"{comparison.name}: " + ", ".join(f"{m}: {len(r)} seeds" for m, r in runs.items()))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from metasam.analysis.report import headline, make_report
    from metasam.analysis.tables import to_markdown

    configs = [load_study_config(p) for p in args.studies]
    if args.screenshot and args.no_html:
        raise ConfigError("--screenshot", "needs the HTML pages", "leave out --no-html")
    out = Path(args.out) if args.out else configs[0].folder / "report"
    result = make_report(configs, out, html=not args.no_html)
    if result["table"] is not None:
        print(to_markdown(result["table"]))
    for report in result["studies"]:
        print(f"{report.config.name}: {headline(report.verdict, report.config.metric)}")
        if report.page is not None:
            print(f"  page: {report.page}")
        if args.screenshot and report.page is not None:
            from metasam.analysis.browser import find_browser, screenshot

            if find_browser() is None:
                raise ConfigError("--screenshot", "no Chromium found on PATH",
                                  "install Debian's chromium, or set METASAM_BROWSER")
            shot = screenshot(report.page, report.page.with_name(f"{report.config.name}"
                                                                 "-page.png"))
            print(f"  first screen: {shot}")
    for path in result["written"]:
        print(f"written: {path}", file=sys.stderr)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from metasam.analysis.explain import (
        explain,
        over_training,
        over_training_lines,
        plot_explanation,
    )
    from metasam.workflow import resolve_spec

    spec = resolve_spec(args.spec)
    stretches = over_training(spec)
    # one explanation per distinct (φ, ψ) the spec trains with; ρ and λ set only its strength
    measured = [i for i, e in enumerate(stretches) if e.get("measures") == i]
    stem = (spec.name or "spec").replace(" ", "-")
    results = []
    for k, index in enumerate(measured or [0]):
        member = spec.at(stretches[index]["from"]) if measured else spec
        if member.is_plain:
            member = spec.replace(vary=None)
        result = explain(member, dim=args.dim, count=args.spectra, scale=args.scale)
        suffix = f"-stretch{index + 1}" if len(measured) > 1 else ""
        plot = Path(args.plot) if args.plot and k == 0 else Path(
            f"{Path(args.plot).with_suffix('') if args.plot else 'explain-' + stem}"
            f"{suffix}.png")
        plot_explanation(result, plot)
        results.append((index, result, plot))
    if args.json:
        out = [{"stretch": index + 1, "dim": result.dim, "scale": result.scale,
                "spearman": result.correlations, "closest": result.closest,
                "scaling_exponent": result.scaling_exponent,
                "reshape_log_ratio": result.reshape_trend,
                "invariance_change": result.invariance_change,
                "scale_invariant": result.scale_invariant,
                "summary": result.sentences(), "plot": str(plot)}
               for index, result, plot in results]
        body = {"spec": spec.to_dict(), **{k: v for k, v in out[0].items() if k != "stretch"}}
        if spec.vary is not None:
            body.update(over_training=stretches, stretches=out)
        print(json.dumps(body))
        return 0
    print(spec.describe())
    if spec.vary is not None:
        print("over training:")
        for line in over_training_lines(spec):
            print(f"  {line}")
    for index, result, plot in results:
        if len(results) > 1:
            print(f"stretch {index + 1} measures:")
        for sentence in result.sentences():
            print(f"- {sentence}")
        print(f"plot: {plot}")
    return 0
