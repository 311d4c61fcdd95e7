"""Meta-learning benchmark: leave one task out, cold search against meta-started search.

For each task of the search benchmark (its cold study must exist in ``--cold``, made by
``scripts/search_benchmark.py``), a meta-started twin of the study — same space, budget and seed
— learns from the *other* tasks' cold studies (``tune --meta``: the zero-shot portfolio first,
the preset regions sampled within the prior winners' boxes on most trials), then runs its
confirmation stage. Printed per task:

- the cold study's final best validation value (full budget) and the trial count at which each
  study first reached it (the meta-started study within the same trial budget, or never);
- test accuracy (train + validation, last epoch, 3 seeds as ``metasam compare``) of both
  confirmed winners, and the one-sided Welch p-value that the cold winner is above the meta one.

Usage (about 20 minutes on a 2-core CPU for the three CPU tasks)::

    python scripts/meta_benchmark.py --data-dir DIR --cold results/search-benchmark \\
        --out results/meta-benchmark > meta.log 2>&1
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metasam.stats import Summary, welch_greater  # noqa: E402

TASKS = ("digits-noisy", "mnist-S-noisy", "mnist1d-noisy")

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
    """The confirmed winner trained as `metasam compare` trains its best (train + validation,
    seeds config.seed + s, test accuracy of the last epoch)."""
    from metasam.training import train
    from metasam.tuning.export import best_optimizer

    best = best_optimizer(config)
    base = {k: v for k, v in best["base_optimizer"].items()
            if k in ("lr", "weight_decay", "momentum") and getattr(config.train, k) != v}
    out = []
    for s in range(seeds):
        cfg = config.train.replace(spec=best["spec"], seed=config.seed + s, val_fraction=0.0,
                                   test="final", num_threads=2, **base)
        out.append(train(cfg)["test_acc"])
    return out


def ensure_priors(args: argparse.Namespace) -> None:
    """The cold studies of the prior-only tasks, made (or finished) where missing."""
    from search_benchmark import study_file

    from metasam.tuning import StudyConfig
    from metasam.tuning.runner import tune_study

    space = Path(__file__).resolve().parent.parent / "search_spaces" / "universal-poly.yaml"
    for name in args.extra_priors:
        path = args.cold / f"{name}.yaml"
        if not path.exists():
            study_file(args.cold, name, PRIOR_TASKS[name], space, args.data_dir, 0, 2)
        start = time.time()
        tune_study(StudyConfig.from_yaml(path), verbose=0)
        print(f"prior {name}: {time.time() - start:.0f} s", flush=True)


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam.analysis.runs import collect
    from metasam.tuning import StudyConfig
    from metasam.tuning.confirm import run_confirmation
    from metasam.tuning.export import best_optimizer
    from metasam.tuning.runner import tune_study
    from metasam.tuning.storage import best_trials, load_study

    cold = StudyConfig.from_yaml(args.cold / f"{task}.yaml")
    priors = [StudyConfig.from_yaml(args.cold / f"{t}.yaml")
              for t in (*args.tasks, *args.also, *args.extra_priors) if t != task]
    data = yaml.safe_load((args.cold / f"{task}.yaml").read_text())
    data["name"] = f"{task}-meta"
    path = args.out / f"{task}-meta.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    meta = StudyConfig.from_yaml(path)
    start = time.time()
    settings = {"from": priors, "k": args.k, "box": args.box}
    tune_study(meta, meta=settings, verbose=0)
    run_confirmation(meta, verbose=0)
    seconds = time.time() - start
    cold_study = load_study(cold.storage, cold.name)
    target = best_trials(cold_study, "max", 1)[0].value
    cold_test = [r["test_acc"] for r in collect(cold).get("best", [])]
    meta_test = winner_test_accuracy(meta, len(cold_test) or 3)
    from metasam.meta.knowledge import load_priors
    from metasam.meta.transfer import plan_transfer

    plan = plan_transfer(meta, load_study(meta.storage, meta.name), load_priors(priors, "meta"),
                         args.k)
    return {"task": task, "priors": [p.name for p in priors], "cold_best_val": target,
            "similarity": plan.similarity, "similar": plan.similar,
            "portfolio": [p.label for p in plan.points], "boxes": plan.boxes,
            "cold_trials": cold.trials,
            "cold_reached_at": first_reaching(cold_study, target),
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
    parser.add_argument("--box", type=float, default=0.5,
                        help="share of region trials sampled within the boxes")
    args = parser.parse_args()
    args.tasks, args.also, args.extra_priors = (
        [t for t in v.split(",") if t] for v in (args.tasks, args.also, args.extra_priors))
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_priors(args)
    if args.priors_only:
        return 0
    results = [run_task(t, args) for t in args.tasks]
    (args.out / "meta-benchmark.json").write_text(json.dumps(results, indent=1))
    lines = ["| task | cold best val | reached: cold | reached: meta (of 30) | cold winner: "
             "test % | meta winner: test % | p(cold > meta) |", "|---|---|---|---|---|---|---|"]
    ratios = []
    for r in results:
        c, m = Summary.of([100 * v for v in r["cold_test"]]), Summary.of(
            [100 * v for v in r["meta_test"]])
        lines.append(f"| {r['task']} | {r['cold_best_val']:.4f} | {r['cold_reached_at']} | "
                     f"{r['meta_reached_at'] or 'never'} | {r['cold_winner']}: "
                     f"{c.mean:.2f} ± {c.std:.2f} | {r['meta_winner']}: {m.mean:.2f} ± "
                     f"{m.std:.2f} | {r['p_cold_gt_meta']:.3f} |")
        reached = r["meta_reached_at"] or (r["cold_trials"] + 1)
        ratios.append(reached / r["cold_trials"])
    lines.append(f"\nmedian over tasks of (trials the meta-started study needed to reach the "
                 f"cold study's best) / (the cold study's trials): {statistics.median(ratios):.2f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
