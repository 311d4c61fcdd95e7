"""Meta-learning benchmark: leave one task out, cold search against meta-started search.

For each task of the search benchmark (its cold study must exist in ``--cold``, made by
``scripts/search_benchmark.py``), a meta-started twin of the study — same space, budget and seed
— learns from the *other* tasks' cold studies (``tune --meta``: the zero-shot portfolio first,
the preset regions sampled within the prior winners' boxes on most trials), then runs its
race. Printed per task:

- the cold study's final best validation value (full budget) and the trial count at which each
  study first reached it (the meta-started study within the same trial budget, or never);
- test accuracy (train + validation, last epoch, 3 seeds as ``metasam compare``) of both
  winners (the races'), and the one-sided Welch p-value that the cold winner is above the meta one.

The priors of each held-out task: the other held-out tasks' cold studies, the CIFAR task of
the search benchmark, and three prior-only tasks (other noise levels and models, made here on
first use, ~3 minutes). ``--seed S`` repeats the comparison with fresh cold and meta-started
studies of the held-out tasks at study seed S (priors unchanged); the summary pools every seed
found in ``--out``.

Usage (about 10 minutes per seed on a 2-core CPU for the three CPU tasks, 20 with seed ≠ 0)::

    python scripts/meta_benchmark.py --data-dir DIR --cold results/search-benchmark \\
        --out results/meta-benchmark [--seed 1] > meta.log 2>&1
    python scripts/meta_benchmark.py --data-dir DIR --out results/meta-benchmark --summarize
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from metasam.benchmark import TASKS as BENCHMARK_TASKS
from metasam.benchmark import search_study
from metasam.stats import Summary, welch_greater

TASKS = ("digits-noisy", "mnist-S-noisy", "mnist1d-noisy")

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "universal-poly.yaml"

# Tasks that only ever serve as priors (never held out): other noise levels and models on the
# shipped data, so that each held-out task learns from more than its two siblings. Their cold
# studies are made here when missing (tune only: the knowledge base needs no confirmation).
PRIOR_TASKS: dict[str, dict[str, Any]] = {
    "digits-noisy40": {"train": {"dataset": "digits", "label_noise": 0.4, "model": "cnn",
                                 "epochs": 10, "batch_size": 64, "lr": 0.05,
                                 "val_fraction": 0.2}, "trials": 30},
    "mnist1d-mlp-noisy": {"train": {"dataset": "mnist1d", "label_noise": 0.2, "model": "mlp",
                                    "epochs": 15, "batch_size": 128, "lr": 0.05,
                                    "val_fraction": 0.15}, "trials": 30},
    "mnist-S-noisy40": {"train": {"dataset": "mnist-S", "label_noise": 0.4, "model": "mlp",
                                  "epochs": 12, "batch_size": 128, "lr": 0.05,
                                  "val_fraction": 0.15}, "trials": 30},
}


def first_reaching(study: Any, target: float) -> int | None:
    """The 1-based count of counted trials at which a full-budget value first reached
    ``target`` (max mode)."""
    from metasam.tuning.record import TrialRecord

    counted = sorted((t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).counts),
                     key=lambda t: t.number)
    for i, t in enumerate(counted, start=1):
        if TrialRecord.of(t).full_budget and t.value is not None and t.value >= target - 1e-12:
            return i
    return None


def winner_test_accuracy(config: Any, seeds: int) -> list[float]:
    """The race's winner trained as `metasam compare` trains its best (train + validation,
    seeds config.seed + s, test accuracy of the last epoch)."""
    from metasam.decision.export import best_optimizer
    from metasam.training import train

    best = best_optimizer(config)
    base = {k: v for k, v in best["base_optimizer"].items()
            if k in ("lr", "weight_decay", "momentum") and getattr(config.train, k) != v}
    out = []
    for s in range(seeds):
        cfg = config.train.replace(spec=best["spec"], seed=config.seed + s, val_fraction=0.0,
                                   test="final", num_threads=2, **base)
        result = train(cfg)
        # a run that diverged has no test accuracy: it counts as 0 (a failure of the winner)
        out.append(result.get("test_acc", 0.0) if result["status"] != "diverged" else 0.0)
        if result["status"] == "diverged":
            print(f"{config.name}: the winner diverged at seed {config.seed + s}", flush=True)
    return out


def ensure_priors(args: argparse.Namespace) -> None:
    """The cold studies of the prior-only tasks, made (or finished) where missing."""
    from metasam.tuning import StudyConfig
    from metasam.tuning.runner import tune_study

    for name in args.extra_priors:
        path = args.cold / f"{name}.yaml"
        if not path.exists():
            search_study(args.cold, name, PRIOR_TASKS[name], SPACE, args.data_dir, 0, 2)
        start = time.time()
        tune_study(StudyConfig.from_yaml(path), verbose=0)
        print(f"prior {name}: {time.time() - start:.0f} s", flush=True)


def cold_study(task: str, args: argparse.Namespace) -> Any:
    """The held-out task's cold study: the search benchmark's (seed 0), or for another
    ``--seed`` one made here (tune + race) as ``TASK-sSEED``."""
    from metasam import Study
    from metasam.tuning import StudyConfig

    if args.seed == 0:
        return StudyConfig.from_yaml(args.cold / f"{task}.yaml")
    name = f"{task}-s{args.seed}"
    path = args.cold / f"{name}.yaml"
    if not path.exists():
        search_study(args.cold, name, BENCHMARK_TASKS[task], SPACE, args.data_dir, args.seed,
                     2)
    config = StudyConfig.from_yaml(path)
    Study(config, verbose=0).run()
    return config


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam import Study
    from metasam.analysis.runs import collect
    from metasam.decision.export import best_optimizer
    from metasam.meta.knowledge import load_priors
    from metasam.meta.transfer import plan_transfer
    from metasam.tuning import StudyConfig
    from metasam.tuning.storage import StudyNotFoundError, best_trials, load_study
    from metasam.tuning.study_config import MetaSettings

    cold = cold_study(task, args)
    priors = [StudyConfig.from_yaml(args.cold / f"{t}.yaml")  # other tasks, seed 0
              for t in (*args.tasks, *args.also, *args.extra_priors) if t != task]
    data = yaml.safe_load(cold.path.read_text())
    data["name"] = f"{cold.name}-meta"
    path = args.out / f"{cold.name}-meta.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    meta = StudyConfig.from_yaml(path)
    start = time.time()
    settings = MetaSettings(tuple(str(p.path) for p in priors), args.k, args.box)
    Study(meta, verbose=0).run(meta=settings)
    seconds = time.time() - start
    cold_trials = load_study(cold.storage, cold.name)
    target = best_trials(cold_trials, "max", 1)[0].value
    try:  # from the search benchmark's `compare` runs
        cold_test = [r["test_acc"] for r in collect(cold).get("best", [])]
    except StudyNotFoundError:  # a cold study made here, never compared
        cold_test = []
    if not cold_test:
        cold_test = winner_test_accuracy(cold, 3)
    meta_test = winner_test_accuracy(meta, len(cold_test))
    plan = plan_transfer(meta, load_study(meta.storage, meta.name), load_priors(priors, "meta"),
                         args.k)
    return {"task": task, "seed": args.seed, "priors": [p.name for p in priors],
            "cold_best_val": target, "similarity": plan.similarity, "similar": plan.similar,
            "portfolio": [p.label.method for p in plan.points], "boxes": plan.boxes,
            "cold_trials": cold.trials,
            "cold_reached_at": first_reaching(cold_trials, target),
            "meta_reached_at": first_reaching(load_study(meta.storage, meta.name), target),
            "cold_winner": best_optimizer(cold)["name"], "meta_winner": best_optimizer(meta)[
                "name"], "cold_test": cold_test, "meta_test": meta_test,
            "p_cold_gt_meta": welch_greater(cold_test, meta_test), "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cold", type=Path, default=Path("results/search-benchmark"))
    parser.add_argument("--out", type=Path, default=Path("results/meta-benchmark"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--also", default="cifar10-jpeg-S",
                        help="further cold studies of the search benchmark used as priors only")
    parser.add_argument("--extra-priors", default=",".join(PRIOR_TASKS),
                        help=f"prior-only tasks made here when missing: {', '.join(PRIOR_TASKS)}")
    parser.add_argument("--priors-only", action="store_true",
                        help="make the prior-only studies and stop")
    parser.add_argument("-k", type=int, default=3, help="portfolio size")
    parser.add_argument("--seed", type=int, default=0,
                        help="study seed of the held-out tasks' cold and meta-started studies "
                        "(not 0: their cold studies are made here; priors stay at seed 0)")
    parser.add_argument("--summarize", action="store_true",
                        help="print the table of what --out holds, run nothing")
    parser.add_argument("--box", type=float, default=0.5,
                        help="share of region trials sampled within the boxes")
    args = parser.parse_args()
    args.tasks, args.also, args.extra_priors = (
        [t for t in v.split(",") if t] for v in (args.tasks, args.also, args.extra_priors))
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize:
        ensure_priors(args)
    if args.priors_only:
        return 0
    if not args.summarize:
        results = [run_task(t, args) for t in args.tasks]
        (args.out / f"meta-benchmark-s{args.seed}.json").write_text(
            json.dumps(results, indent=1))
    print(summary(sorted(args.out.glob("meta-benchmark-s*.json"))))
    return 0


def summary(files: list[Path]) -> str:
    """The table of every (task, seed) measured so far, and the medians the issue asks for."""
    results = [r for f in files for r in json.loads(f.read_text())]
    lines = ["| task | seed | cold best val | reached: cold | reached: meta | cold winner: "
             "test % | meta winner: test % | p(cold > meta) |",
             "|---|---|---|---|---|---|---|---|"]
    ratios: dict[int, list[float]] = {}
    for r in sorted(results, key=lambda r: (r.get("seed", 0), r["task"])):
        c, m = Summary.of([100 * v for v in r["cold_test"]]), Summary.of(
            [100 * v for v in r["meta_test"]])
        lines.append(f"| {r['task']} | {r.get('seed', 0)} | {r['cold_best_val']:.4f} | "
                     f"{r['cold_reached_at']} | {r['meta_reached_at'] or 'never'} | "
                     f"{r['cold_winner']}: {c.mean:.2f} ± {c.std:.2f} | {r['meta_winner']}: "
                     f"{m.mean:.2f} ± {m.std:.2f} | {r['p_cold_gt_meta']:.3f} |")
        reached = r["meta_reached_at"] or (r["cold_trials"] + 1)  # never: one past the budget
        ratios.setdefault(r.get("seed", 0), []).append(reached / r["cold_trials"])
    every = [v for vs in ratios.values() for v in vs]
    lines.append("\n(trials the meta-started study needed to reach the cold study's final best "
                 "validation value) / (trials of the cold study), median over tasks: " + ", ".join(
                     f"seed {s}: {statistics.median(v):.2f}" for s, v in sorted(ratios.items()))
                 + f"; over all {len(every)} (task, seed): {statistics.median(every):.2f}")
    below = [r for r in results if r["p_cold_gt_meta"] < 0.05]
    lines.append(f"meta winner significantly below the cold one (one-sided Welch, p < 0.05): "
                 f"{len(below)} of {len(results)}" + "".join(
                     f"; {r['task']} seed {r.get('seed', 0)}" for r in below))
    tasks = sorted({r["task"] for r in results})
    pooled = []
    for task in tasks:
        runs = [r for r in results if r["task"] == task]
        cold = [v for r in runs for v in r["cold_test"]]
        meta = [v for r in runs for v in r["meta_test"]]
        pooled.append(f"{task} {100 * statistics.mean(cold):.2f} vs "
                      f"{100 * statistics.mean(meta):.2f} (p = {welch_greater(cold, meta):.3f}, "
                      f"{len(runs)} seeds)")
    lines.append("per task, every seed's winner runs pooled (cold vs meta test %, one-sided "
                 "Welch): " + "; ".join(pooled))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
