"""``metasam report``: tables and plots from the comparison runs of one or more studies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metasam.analysis.plots import plot_cost, plot_search, plot_sharpness, plot_test_accuracy
from metasam.analysis.runs import collect
from metasam.analysis.tables import build_table, column_label, method_name, write_tables
from metasam.errors import ConfigError
from metasam.tuning.study import StudyConfig


def make_report(configs: list[StudyConfig], out: Path) -> dict[str, Any]:
    """Write ``report.md``/``.csv``/``.tex`` (methods × dataset variants) and the PNG plots of
    each study into ``out``; returns the table and the written paths."""
    from metasam.decision.export import best_optimizer

    results: dict[str, dict[str, list[float]]] = {}
    best_names: list[str] = []
    costs: list[str] = []
    fronts: list[str] = []
    written: list[Path] = []
    for config in configs:
        runs = collect(config)
        if not runs:
            raise ConfigError("study", f"{config.name!r} has no finished comparison runs",
                              f"a compared study: run `metasam compare {config.path}` first")
        column = column_label(config.train, list(results))
        best_name = best_optimizer(config)["name"] if "best" in runs else None
        if best_name is not None:
            best_names.append(best_name)
        results[column] = {m: [r["test_acc"] for r in rs] for m, rs in runs.items()}
        for method, rs in runs.items():
            passes = rs[0]["passes_per_step"]
            walls = [r["wall_time"] for r in rs if r["wall_time"] is not None]
            evals = [r["grad_evals"] for r in rs if r["grad_evals"] is not None]
            name = method_name(method, best_name)
            costs.append(f"| {column} | {name} | {passes} | "
                         f"{sum(evals) / len(evals):.0f} | {sum(walls) / len(walls):.1f} |"
                         if walls and evals else f"| {column} | {name} | {passes} | — | — |")
        title = f"{config.name}: {column}, {config.train.model}"
        written.append(plot_test_accuracy(runs, out / f"{config.name}-test-accuracy.png",
                                          title, best_name))
        written.append(plot_cost(runs, out / f"{config.name}-cost.png",
                                 f"Accuracy against compute — {title}", best_name))
        written.append(plot_sharpness(runs, out / f"{config.name}-sharpness.png",
                                      f"Hessian sharpness during training — {title}"))
        study = config.load_study()
        from metasam.tuning.cost import pareto_front

        for p in pareto_front(study, config.metric, config.mode):
            fronts.append(f"| {column} | #{p.number} | {p.grad_evals} | {p.value:.4f} | "
                          f"{p.label} |")
        written += plot_search(study, config.metric, config.mode,
                               out / f"{config.name}-search-history.png",
                               out / f"{config.name}-importances.png")
    table = build_table(results)
    table.best_names = best_names
    written += write_tables(table, out)
    cost_table = out / "compute.md"
    cost_table.write_text("Compute: forward/backward passes per step of a full step (1 + n), "
                          "gradient evaluations per run as made (a scheduled member's plain "
                          "steps cost one) and wall time per run, mean over seeds.\n\n"
                          "| column | method | passes/step | gradient evaluations/run | "
                          "seconds/run |\n|---|---|---|---|---|\n" + "\n".join(costs) + "\n"
                          "\nThe search's Pareto front: full-budget trials that no cheaper one "
                          "beats on the study's metric (validation; gradient evaluations per "
                          "run, single seed).\n\n| column | trial | gradient evaluations | "
                          "metric | member |\n|---|---|---|---|---|\n" + "\n".join(fronts)
                          + "\n")
    written.append(cost_table)
    return {"table": table, "written": written}
