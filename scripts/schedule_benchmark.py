"""Schedule benchmark: do biases that change over training beat the best fixed ones, and at what
price?

For each task of the search benchmark (digits-noisy, MNIST-1D-noisy, MNIST-S-noisy), a PBT study
(``search: {type: pbt}``: 8 members started in SAM's and SSAM-F's regions, exploit every ~1/5 of
training, no race) finds a schedule; then, trained from scratch on train + validation and scored
on test over ``--seeds`` paired seeds (the search benchmark's seeds, so its runs are reproduced):

- ``pbt``: the best member's schedule (its ρ history as phases), replayed from scratch;
- ``winner``: the standard study's race winner on that task (docs/data/search-benchmark.json);
- the seven presets at their official defaults (the best of them on test is the oracle);
- ``sam ramp``: SAM with ρ rising linearly 0 → 0.2 (the first probe's schedule);
- ``ramp winner``: the winner of a standard study over ``search_spaces/ramps.yaml`` where
  ``scripts/search_benchmark.py --space search_spaces/ramps.yaml --out RAMPS`` has finished
  that task (``--ramps RAMPS``).

Prints per task the paired differences (mean ± 95% CI over seeds, one-sided p) and each
method's cost in full-run equivalents; writes ``OUT/benchmark.json`` and the schedules found
as ``OUT/schedules.png``. Resumable: every stage is a study in ``OUT/TASK.db``.

Usage (about an hour on a 2-core CPU for the three tasks)::

    python scripts/schedule_benchmark.py --data-dir DIR --out results/schedule-benchmark \\
        --ramps results/ramp-benchmark > schedule.log 2>&1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from metasam.benchmark import (
    TASKS,
    benchmark_main,
    ci,
    pair,
    spec_point,
    test_accuracies,
    unique_points,
    write_study,
)

ROOT = Path(__file__).resolve().parents[1]

SCHEDULE_TASKS = ("digits-noisy", "mnist1d-noisy", "mnist-S-noisy")
POPULATION = {"type": "pbt", "population": 8, "members": ["sam", "ssam"], "quantile": 0.25,
              "resample": 0.25}
# the standard study's winners (docs/data/search-benchmark.json; digits' ρ as recorded there)
WINNERS = {"digits-noisy": {"name": "ssam", "rho": 0.222}, "mnist1d-noisy": {"name": "ssam"},
           "mnist-S-noisy": {"name": "trace_sam"}}
SAM_RAMP = {"name": "sam", "vary": {"rho": {"ramp": [0.0, 0.2]}}}
PRESETS = ("sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam")


def study_file(out: Path, name: str, task: dict[str, Any], data_dir: str, seed: int,
               concurrency: int) -> Path:
    """A population (PBT) over SAM and SSAM on the presets' space, exploiting 5 times."""
    interval = max(1, task["train"]["epochs"] // 5)
    return write_study(out, f"{name}-pbt", task, data_dir,
                       search_space=str(ROOT / "search_spaces" / "presets.yaml"),
                       search={**POPULATION, "interval": interval}, concurrency=concurrency,
                       race=False, seed=seed)


def ramp_winner(ramps: Path | None, task: str) -> dict[str, Any] | None:
    """The race winner's spec of a finished ramp-space search benchmark on ``task``."""
    if ramps is None or not (ramps / f"{task}.yaml").is_file():
        return None
    from metasam.decision.export import best_optimizer
    from metasam.tuning import StudyConfig

    try:
        return best_optimizer(StudyConfig.from_yaml(ramps / f"{task}.yaml"))["spec"]
    except Exception as err:  # not finished: no race winner yet
        print(f"{task}: no ramp winner ({err})", file=sys.stderr)
        return None


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam.analysis.plots import population_members
    from metasam.family.spec import SharpnessSpec
    from metasam.tuning import StudyConfig
    from metasam.workflow import Study

    config = StudyConfig.from_yaml(study_file(args.out, name, TASKS[name], args.data_dir,
                                              args.seed, args.concurrency))
    t0 = time.time()
    Study(config, verbose=1).tune()
    t1 = time.time()
    members = population_members(config.load_study(), "val_acc")
    best = max((m for m in members if m["value"] is not None), key=lambda m: m["value"])
    specs: dict[str, dict[str, Any]] = {
        "pbt": best["spec"],
        "winner": SharpnessSpec.from_dict(WINNERS[name]).to_dict(),
        **{p: SharpnessSpec.from_dict({"name": p}).to_dict() for p in PRESETS},
        "sam ramp": SharpnessSpec.from_dict(SAM_RAMP).to_dict()}
    ramp = ramp_winner(args.ramps, name)
    if ramp is not None:
        specs["ramp winner"] = ramp
    methods, aliases = unique_points({m: spec_point(m, spec) for m, spec in specs.items()})
    acc = test_accuracies(config, args.seeds, methods, aliases)
    t2 = time.time()

    def mean(m: str) -> float:
        return 100 * sum(acc[m].values()) / len(acc[m])

    oracle = max(PRESETS, key=mean)
    figures = {f"pbt − {other}": pair(acc, "pbt", other)
               for other in ("winner", "sam", oracle, "sam ramp")}
    if "ramp winner" in acc:
        for other in ("winner", "sam", oracle):
            figures[f"ramp winner − {other}"] = pair(acc, "ramp winner", other)
    figures[f"sam ramp − {oracle}"] = pair(acc, "sam ramp", oracle)
    cost = Study(config, verbose=0).cost().to_dict()
    return {"task": name, "train": config.train.to_dict(), "oracle": oracle,
            "pbt": {"best": best["member"], "spec": best["spec"], "members": members,
                    "cost_fre": cost["tuning"],
                    "exploits": sum(len(m["events"]) for m in members)},
            "specs": specs, "aliases": aliases,
            "mean": {m: mean(m) for m in acc}, "runs": {m: len(acc[m]) for m in acc},
            "paired": figures, "seconds": {"pbt": t1 - t0, "test": t2 - t1}}


def schedule_figure(results: list[dict[str, Any]], path: Path) -> None:
    """Per task: every member's ρ over training (the best bold) above its lineage's
    validation accuracy (:func:`metasam.analysis.plots.population_figure`)."""
    from metasam._plotting import pyplot, save_figure
    from metasam.analysis.plots import population_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, len(results), figsize=(4.8 * len(results), 6.6), dpi=120,
                             squeeze=False)
    for col, r in enumerate(results):
        population_figure(r["pbt"]["members"], r["train"]["epochs"], "val_acc", "max",
                          r["task"], axes=(axes[0][col], axes[1][col]))
    fig.tight_layout()
    save_figure(fig, path)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| task | PBT's schedule (best member) | PBT cost (FRE) | pbt − standard winner | "
             "pbt − SAM (default) | pbt − best default preset (oracle) | pbt − SAM ρ 0→0.2 | "
             "ramp winner − standard winner |", "|" + "---|" * 8]
    from metasam.tuning.naming import describe_spec

    def cell(f: dict[str, Any], key: str) -> str:
        return ci(f.get(key))

    for r in results:
        f = r["paired"]
        lines.append(f"| {r['task']} | {describe_spec(r['pbt']['spec'])} | "
                     f"{r['pbt']['cost_fre']:.1f} ({r['pbt']['exploits']} exploits) | "
                     f"{cell(f, 'pbt − winner')} | {cell(f, 'pbt − sam')} | {r['oracle']}: "
                     f"{cell(f, 'pbt − ' + r['oracle'])} | {cell(f, 'pbt − sam ramp')} | "
                     f"{cell(f, 'ramp winner − winner')} |")
    lines += ["", "Test accuracy (%), mean over the paired seeds:", ""]
    for r in results:
        lines.append(f"- {r['task']}: " + ", ".join(
            f"{m} {v:.2f}" for m, v in sorted(r["mean"].items(), key=lambda kv: -kv[1])))
    return "\n".join(lines) + "\n"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ramps", type=lambda text: Path(text).resolve(), default=None,
                        help="OUT of a search benchmark over search_spaces/ramps.yaml")


def main() -> int:
    return benchmark_main(
        "schedule_benchmark", __doc__.split("\n\n")[0], list(SCHEDULE_TASKS),
        "schedule-benchmark", ROOT, run_task, markdown, add_arguments=arguments,
        after=lambda args, results: schedule_figure(results, args.out / "schedules.png"))

if __name__ == "__main__":
    sys.exit(main())
