"""``metasam report``: what a study has produced, from whatever has run.

From the tuning study alone: the verdict (when the race has run), the race's standings, the
search's history and parameter importances, a population's members (PBT), the Pareto front of
the metric against compute, and the study's cost. With ``metasam compare``'s runs as well: the
test-set tables (Markdown, CSV, LaTeX) and plots. Each study gets one self-contained HTML page,
``NAME.html``, verdict first (:mod:`metasam.analysis.page`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasam.analysis.page import Section, write_page
from metasam.analysis.plots import (
    plot_cost,
    plot_population,
    plot_search,
    plot_sharpness,
    plot_test_accuracy,
)
from metasam.analysis.runs import collect
from metasam.analysis.tables import (
    build_table,
    column_label,
    method_name,
    to_markdown,
    write_tables,
)
from metasam.decision.budget import StudyCost
from metasam.decision.outcome import NAMES, Verdict
from metasam.decision.stage import planned_cost
from metasam.tuning.storage import StudyNotFoundError
from metasam.tuning.study_config import StudyConfig


@dataclass
class StudyReport:
    """One study's part of a report: what ran, and the files written for it."""

    config: StudyConfig
    column: str
    verdict: Verdict | None
    cost: StudyCost
    front: list[Any]
    runs: dict[str, list[dict[str, Any]]]      # compare's runs by method (empty: not run)
    best_name: str | None
    figures: dict[str, Path] = field(default_factory=dict)
    page: Path | None = None


def make_report(configs: list[StudyConfig], out: Path, *, html: bool = True) -> dict[str, Any]:
    """Write each study's figures and HTML page into ``out``, and, for the studies with
    comparison runs, ``report.md``/``.csv``/``.tex`` (methods × dataset variants) and
    ``compute.md``. Returns ``{"table": Table | None, "studies": [StudyReport], "written":
    [Path]}``. A study that was never tuned is an error naming ``metasam tune``."""
    # every study was tuned (else an error naming `metasam tune`), before anything is written
    studies = [config.load_study() for config in configs]
    out.mkdir(parents=True, exist_ok=True)
    reports: list[StudyReport] = []
    written: list[Path] = []
    results: dict[str, dict[str, list[float]]] = {}
    for config, study in zip(configs, studies, strict=True):
        report = study_report(config, out, list(results), study)
        reports.append(report)
        written += report.figures.values()
        if report.runs:
            results[report.column] = {m: [r["test_acc"] for r in rs]
                                      for m, rs in report.runs.items()}
    table = None
    if results:
        table = build_table(results)
        table.best_names = [r.best_name for r in reports if r.best_name]
        written += write_tables(table, out)
        written.append(_compute_table(reports, out / "compute.md"))
    if html:
        for report in reports:
            report.page = write_page(out / f"{report.config.name}.html", report.config.name,
                                     _subtitle(report), sections(report, table))
            written.append(report.page)
    return {"table": table, "studies": reports, "written": written}


def study_report(config: StudyConfig, out: Path, columns: list[str],
                 study: Any = None) -> StudyReport:
    """Read one study (its tuning study must exist) and draw its figures into ``out``."""
    from metasam.decision.export import best_optimizer
    from metasam.decision.stage import race_verdict
    from metasam.tuning.cost_score import pareto_front

    if study is None:
        study = config.load_study()     # StudyNotFoundError names `metasam tune`
    try:
        runs = collect(config)
    except StudyNotFoundError:
        runs = {}
    verdict = race_verdict(config, study)
    column = column_label(config.train, columns)
    best_name = best_optimizer(config)["name"] if "best" in runs else None
    report = StudyReport(config, column, verdict, planned_cost(config),
                         pareto_front(study, config.metric, config.mode), runs, best_name)
    name = config.name
    search = plot_search(study, config.metric, config.mode, out / f"{name}-search-history.png",
                         out / f"{name}-importances.png")
    report.figures.update(zip(("search", "importances"), search, strict=False))
    population = plot_population(study, config.train.epochs, config.metric, config.mode,
                                 out / f"{name}-population.png", f"{name}: the population")
    if population is not None:
        report.figures["population"] = population
    if runs:
        title = f"{name}: {column}, {config.train.model}"
        report.figures["test"] = plot_test_accuracy(runs, out / f"{name}-test-accuracy.png",
                                                    title, best_name)
        report.figures["cost"] = plot_cost(runs, out / f"{name}-cost.png",
                                           f"Accuracy against compute — {title}", best_name)
        if any("hessian_trace" in h for rs in runs.values() for r in rs
               for h in r["history"]):
            report.figures["sharpness"] = plot_sharpness(
                runs, out / f"{name}-sharpness.png", f"Hessian sharpness during training — "
                f"{title}")
    return report


def headline(verdict: Verdict | None, metric: str) -> str:
    """The verdict in one line: the winner and what it beats with confidence."""
    if verdict is None:
        return "No verdict yet: the race has not run (`metasam tune` finishes the decision)."
    name = verdict.winner.candidate.name
    plan = verdict.plan
    if plan is not None and plan.instances < 2 and plan.note in ("hopeless", "budget"):
        why = ("its plan showed the held-back data cannot see the difference asked for"
               if plan.note == "hopeless" else "the budget left no confirmation runs")
        return f"Pick {name}, not a claim: no confirmation ran ({why})."
    if not verdict.complete:
        return f"Race leader {name}; the confirmation has not finished (`metasam tune` resumes)."
    beaten = [NAMES[k].removeprefix("against ") for k, c in verdict.against.items()
              if c.confident]
    if not beaten:
        return f"Winner {name}: beats nothing with confidence."
    return f"Winner {name}: beats {', '.join(beaten)} with confidence."


def sections(report: StudyReport, table: Any) -> list[Section]:
    """The page's sections, in reading order."""
    config, verdict = report.config, report.verdict
    scale, unit = Verdict.scale_of(config.metric)
    out = [_verdict_section(report, scale, unit)]
    if verdict is not None:
        out.append(_race_section(verdict, config.metric, scale))
    front = "\n".join(["| trial | gradient evaluations | " + config.metric + " | member |",
                       "|---|---|---|---|"] + [f"| #{p.number} | {p.grad_evals:,} | "
                                               f"{p.value * scale:.2f} | {p.label} |"
                                               for p in report.front])
    search = Section("Search", tables=[front] if report.front else [],
                     notes=["The Pareto front: full-budget trials that no cheaper one beats on "
                            f"{config.metric} (one seed each, on the tuning split)."]
                     if report.front else [],
                     figures=[report.figures[k] for k in ("search", "importances", "population")
                              if k in report.figures])
    out.append(search)
    c = report.cost
    planned = c.planned or ("", "", "")
    total_planned = sum(c.planned) if c.planned else ""
    notes = ["A full-run equivalent is one training run of the study's full epochs; "
             "ASHA-stopped trials count their share."]
    if c.planned:
        from metasam.decision.stage import study_plan

        notes.insert(0, study_plan(config).line(config.metric))
    out.append(Section("Cost", tables=["| stage | runs | full-run equivalents | planned |\n"
                                       "|---|---|---|---|\n"
                                       f"| tuning | {c.tuning_trials} | {c.tuning:.1f} | "
                                       f"{planned[0]} |\n"
                                       f"| race | {c.race_runs} | {c.race:.1f} | {planned[1]} |\n"
                                       f"| confirmation | {c.confirmation_runs} | "
                                       f"{c.confirmation:.1f} | {planned[2]} |\n"
                                       f"| total | | {c.total:.1f} | {total_planned} |"],
                       notes=notes))
    if report.runs and table is not None:
        out.append(Section("Test set (compare)", tables=[to_markdown(table).split("\n\n")[0]],
                           notes=[to_markdown(table).split("\n\n", 1)[1].strip()],
                           figures=[report.figures[k] for k in ("test", "cost", "sharpness")
                                    if k in report.figures]))
    else:
        out.append(Section("Test set (compare)", text=[
            f"Not run yet: `metasam compare {config.path}` trains the winner and every "
            "baseline on train + validation over several seeds and scores them on test."]))
    return out


def _verdict_section(report: StudyReport, scale: float, unit: str) -> Section:
    verdict, metric = report.verdict, report.config.metric
    section = Section("Verdict", lead=headline(verdict, metric), boxed=True)
    if verdict is None or verdict.plan is None:
        return section
    rows = ["| against | candidate | difference (95% CI) | P(improvement) | p | Holm p | "
            "detectable | verdict |", "|---|---|---|---|---|---|---|---|"]
    for key, comparison in verdict.against.items():
        d = comparison.to_dict(scale)
        if not d["complete"]:
            rows.append(f"| {NAMES[key].removeprefix('against ')} | {d['name']} | — | — | — "
                        "| — | — | not finished |")
            continue
        said = "beats it with confidence" if d["confident"] else "not with confidence"
        rows.append(f"| {NAMES[key].removeprefix('against ')} | {d['name']} | "
                    f"{d['mean']:+.2f} ± {d['ci95']:.2f}{unit} | {d['p_improvement']:.2f} | "
                    f"{_p(d['p_value'])} | {_p(d['p_holm'])} | {d['detectable']:.2f}{unit} | "
                    f"{said} |")
    section.tables.append("\n".join(rows))
    plan = verdict.plan
    value = verdict.winner.confirmed_mean()
    if not math.isnan(value):
        shown = "%" if scale == 100.0 else ""
        section.text.append(f"The winner's {metric} on the confirmation: "
                            f"{value * scale:.2f}{shown} "
                            f"over {len(verdict.winner.confirmed)} fresh instances "
                            f"(validation folds of {plan.fold} held-back examples).")
    section.notes.append(verdict.meaning() + ".")
    return section


def _race_section(verdict: Verdict, metric: str, scale: float) -> Section:
    opening = min(len(st.values) for st in verdict.standings)
    rows = [f"| candidate | instances | mean of the first {opening} ({metric}) | mean of all "
            "its instances | how it ended | diverged |", "|---|---|---|---|---|---|"]
    for st in verdict.standings:
        if st is verdict.winner:
            ended = "**winner**"
        elif st.dropped_after is None:
            ended = "to the end"
        elif verdict.rule == "halving":
            ended = f"stopped after {st.dropped_after}: not in the better half"
        else:
            ended = f"dropped after {st.dropped_after}: worse by the test"
        rows.append(f"| {st.candidate.name} | {len(st.values)} | "
                    f"{st.mean(opening) * scale:.2f} | {st.mean() * scale:.2f} | {ended} | "
                    f"{st.diverged or ''} |")
    return Section("Race", tables=["\n".join(rows)], notes=[
        f"Rule {verdict.rule}, {verdict.runs} runs, ended: {verdict.end.value}. An instance is "
        "a training seed and a validation fold of the pool's rest; the first "
        f"{opening} instances are the ones every candidate ran (like for like). The race means "
        "chose the winner and are biased upwards — the verdict above is on fresh instances."])


def _p(value: float) -> str:
    return "—" if math.isnan(value) else (f"{value:.3f}" if value >= 0.001 else "< 0.001")


def _subtitle(report: StudyReport) -> str:
    train = report.config.train
    return (f"{report.column}, model {train.model}, {train.epochs} epochs; metric "
            f"{report.config.metric}; {report.cost.total:.1f} full-run equivalents")


def _compute_table(reports: list[StudyReport], path: Path) -> Path:
    costs, fronts = [], []
    for report in reports:
        for method, rs in report.runs.items():
            passes = rs[0]["passes_per_step"]
            walls = [r["wall_time"] for r in rs if r["wall_time"] is not None]
            evals = [r["grad_evals"] for r in rs if r["grad_evals"] is not None]
            name = method_name(method, report.best_name)
            costs.append(f"| {report.column} | {name} | {passes} | "
                         f"{sum(evals) / len(evals):.0f} | {sum(walls) / len(walls):.1f} |"
                         if walls and evals else f"| {report.column} | {name} | {passes} | — "
                         "| — |")
        fronts += [f"| {report.column} | #{p.number} | {p.grad_evals} | {p.value:.4f} | "
                   f"{p.label} |" for p in report.front]
    path.write_text("Compute: forward/backward passes per step of a full step (1 + n), "
                    "gradient evaluations per run as made (a scheduled member's plain steps "
                    "cost one) and wall time per run, mean over seeds.\n\n| column | method | "
                    "passes/step | gradient evaluations/run | seconds/run |\n|---|---|---|---|"
                    "---|\n" + "\n".join(costs) + "\n\nThe search's Pareto front: full-budget "
                    "trials that no cheaper one beats on the study's metric (validation; "
                    "gradient evaluations per run, single seed).\n\n| column | trial | gradient "
                    "evaluations | metric | member |\n|---|---|---|---|---|\n" + "\n".join(fronts)
                    + "\n")
    return path
