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

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from search_benchmark import TASKS, common_arguments, paired, run_tasks, task_names  # noqa: E402

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
    train = {"schedule": "cosine", "weight_decay": 5e-4, "data_dir": data_dir, **task["train"]}
    study = {"name": name, "search_space": str(ROOT / "search_spaces" / "presets.yaml"),
             "train": train, "metric": "val_acc", "concurrency": concurrency,
             "resources": {"cpu": 1, "gpu": 0}, "seed": seed, "effort": "quick",
             "budget": 10, "race": {"detect": 0.01, "power": 0.8}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam import Study
    from metasam.analysis.runs import collect
    from metasam.decision.compare import compare_config
    from metasam.decision.prior import shrunk_pick
    from metasam.decision.stage import quick_candidates, selection, study_plan
    from metasam.family import presets
    from metasam.tuning import StudyConfig
    from metasam.tuning.protocol import Label, Point, Role
    from metasam.tuning.runner import tune_study

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
    points = {c.name: Point(Label(Role.COMPARE, c.name, c.spec.get("name")), c.spec, c.train)
              for c in candidates}
    thorough = THOROUGH[name]
    spec = presets.get(thorough["preset"], **{k: v for k, v in thorough.items()
                                               if k != "preset"}).to_dict()
    label = "thorough winner"
    points[label] = Point(Label(Role.COMPARE, label, thorough["preset"]), spec, {})
    comparison = compare_config(config, args.seeds, points, sharpness_every=0)
    tune_study(comparison, verbose=0, record_history=False)
    t2 = time.time()
    runs = collect(config)
    acc = {m: {r["seed"]: r["test_acc"] for r in rs} for m, rs in runs.items()}

    def pair(a: str, b: str) -> dict[str, float]:
        seeds = sorted(set(acc[a]) & set(acc[b]))
        return paired([acc[a][s] for s in seeds], [acc[b][s] for s in seeds])

    test = {"mean": {m: 100 * statistics.fmean(v.values()) for m, v in acc.items()},
            "seeds": {m: len(v) for m, v in acc.items()}}
    for key, pick in picks.items():
        test[key] = {"pick": pick, "vs thorough winner": pair(pick, label),
                     "vs sam": pair(pick, "sam")}
    return {"task": name, "plan": plan.to_dict(), "plan_line": plan.line(),
            "verdict": verdict.to_dict(config.metric) if verdict else None,
            "cost": study.cost().to_dict(), "thorough_cost": "see search-benchmark-halving",
            "picks": picks, "test": test,
            "seconds": {"study": t1 - t0, "test": t2 - t1}}


def ci(d: dict[str, float]) -> str:
    return f"{d['mean']:+.2f} ± {d['ci95']:.2f} (p = {d['p']:.3f})"


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, list(QUICK_TASKS), "quick-benchmark")
    args = parser.parse_args()
    names = task_names("quick_benchmark", args.tasks, list(QUICK_TASKS))
    if names is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(Path(args.data_dir).resolve())
    run_tasks(names, args, run_task, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
