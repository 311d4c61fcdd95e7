"""The ten-run answer on the search benchmark's tasks: the quick study (``effort: quick``,
``budget: 10``) against the thorough study's winner and SAM at its default, on test.

For each task: the quick study (the shipped portfolio raced over paired instances, the pick by
posterior mean, a sequential confirmation where its plan allows one) → every portfolio member,
and the thorough study's recorded winner (``docs/data/search-benchmark-halving.json``, its ρ as
recorded there, to three digits), trained on train + validation and scored on test over
``--seeds`` paired seeds. The race's runs do not depend on the prior, so the same race also
gives the pick with a prior built without the task (leave one task out: the honest figure for
a task the knowledge never saw) and the race's plain pick (no prior); their test accuracies
are those of the portfolio members they name.

    python scripts/quick_benchmark.py --data-dir DIR --out results/quick-benchmark \
        > quick.log 2>&1

Resumable: each task's studies live in ``OUT/TASK.db``; figures in ``OUT/benchmark.json``.
"""

from __future__ import annotations

import argparse
import statistics
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
    write_study,
)

ROOT = Path(__file__).resolve().parents[1]
QUICK_TASKS = {k: TASKS[k] for k in ("digits-noisy", "mnist1d-noisy", "mnist-S-noisy")}
# the thorough (halving) study's winners, docs/data/search-benchmark-halving.json
THOROUGH = {"digits-noisy": {"preset": "sam", "rho": 0.188},
            "mnist1d-noisy": {"preset": "asam"},
            "mnist-S-noisy": {"preset": "sam"}}
# the portfolio's per-task differences to its first candidate (points), from which the
# leave-one-task-out priors are built (metasam/decision/data/portfolio.yaml's comments)
GAINS = {"digits-noisy": (0.0, 0.0, -0.22, -0.22), "mnist1d-noisy": (0.0, -0.10, -0.45, -0.16),
         "mnist-S-noisy": (0.0, -0.26, -0.19, -0.50)}


def quick_file(out: Path, name: str, task: dict[str, Any], data_dir: str, seed: int,
               concurrency: int) -> Path:
    """The quick study of ``task`` at the default budget of 10 full-run equivalents."""
    return write_study(out, name, task, data_dir,
                       search_space=str(ROOT / "search_spaces" / "presets.yaml"),
                       concurrency=concurrency, seed=seed, effort="quick", budget=10,
                       race={"detect": 0.01, "power": 0.8})


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam import Study
    from metasam.decision.prior import shrunk_pick
    from metasam.decision.stage import quick_candidates, selection, study_plan
    from metasam.family import presets
    from metasam.tuning import StudyConfig

    path = quick_file(args.out, name, QUICK_TASKS[name], args.data_dir, args.seed,
                      args.concurrency)
    config = StudyConfig.from_yaml(path)
    study = Study(config, verbose=0)
    plan = study_plan(config)
    t0 = time.time()
    study.tune()
    study.decide()
    t1 = time.time()
    verdict = study.verdict()
    chosen = selection(config)
    candidates, means, taus = quick_candidates(config)
    others = [t for t in GAINS if t != name]
    loo = [statistics.fmean(GAINS[t][i] for t in others) / 100 for i in range(len(means))]
    picks = {"quick": chosen.winner.name,
             "leave-one-task-out prior": next(
                 c.name for c in candidates if c.id == shrunk_pick(chosen.race, loo, taus))
             if len(loo) == len(candidates) else chosen.winner.name,
             "race alone": next(c.name for c in candidates if c.id == chosen.race.winner())}
    points = {c.name: spec_point(c.name, c.spec, c.train) for c in candidates}
    thorough = THOROUGH[name]
    spec = presets.get(thorough["preset"], **{k: v for k, v in thorough.items()
                                               if k != "preset"}).to_dict()
    label = "thorough winner"
    points[label] = spec_point(label, spec)
    acc = test_accuracies(config, args.seeds, points, history=False)
    t2 = time.time()

    test = {"mean": {m: 100 * statistics.fmean(v.values()) for m, v in acc.items()},
            "seeds": {m: len(v) for m, v in acc.items()}}
    for key, pick in picks.items():
        test[key] = {"pick": pick, "vs thorough winner": pair(acc, pick, label),
                     "vs sam": pair(acc, pick, "sam")}
    return {"task": name, "plan": plan.to_dict(), "plan_line": plan.line(),
            "verdict": verdict.to_dict(config.metric) if verdict else None,
            "cost": study.cost().to_dict(), "thorough_cost": "see search-benchmark-halving",
            "picks": picks, "test": test,
            "seconds": {"study": t1 - t0, "test": t2 - t1}}


def markdown(results: list[dict[str, Any]]) -> str:
    rows = ["| task | pick (how) | cost (FRE) | − thorough winner | − SAM (default) |",
            "|---|---|---|---|---|"]
    for r in results:
        for key in ("quick", "leave-one-task-out prior", "race alone"):
            t = r["test"][key]
            rows.append(f"| {r['task']} | {t['pick']} ({key}) | {r['cost']['total']:.1f} | "
                        f"{ci(t['vs thorough winner'])} | {ci(t['vs sam'])} |")
    return "\n".join(rows)


def main() -> int:
    return benchmark_main("quick_benchmark", __doc__.split("\n\n")[0], list(QUICK_TASKS),
                          "quick-benchmark", ROOT, run_task, markdown)


if __name__ == "__main__":
    sys.exit(main())
