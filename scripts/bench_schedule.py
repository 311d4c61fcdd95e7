"""Scheduled sharpness terms: test accuracy against gradient evaluations, full and scheduled.

For each task (from the search benchmark: label noise or limited data) and each member — SAM
and Frob-SAM at their official defaults, and the task's tuned winner when its search-benchmark
study exists — trains the member with the term on every step ("full") and with a schedule
("scheduled", default ``{"every": 5, "reuse": true}``: LookSAM, 0.6× SAM's passes or less),
for several seeds, on train + validation with the test accuracy of the last epoch. Prints per
pair the mean ± std test accuracy, the gradient evaluations (forward/backward passes, counted
as made) and their ratio, and the one-sided Welch p-value that the scheduled twin is *below*
the full one.

Usage (about 15 minutes on a 2-core CPU)::

    python scripts/bench_schedule.py --data-dir DIR [--seeds 3] [--tasks digits-noisy,...]
        [--schedule '{"every": 5, "reuse": true}'] [--winners results/search-benchmark]

Results land in ``--out`` (default ``results/bench-schedule.json``) and as Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from metasam import SharpnessSpec, presets
from metasam.benchmark import TASKS
from metasam.stats import Summary, welch_greater
from metasam.training import train


def members(task: str, winners: Path) -> dict[str, dict[str, Any]]:
    out = {"SAM": presets.sam().to_dict(), "Frob-SAM": presets.frob_sam().to_dict()}
    study = winners / f"{task}.yaml"
    if study.is_file():
        from metasam.decision.export import best_optimizer
        from metasam.tuning import StudyConfig

        try:
            best = best_optimizer(StudyConfig.from_yaml(study))
            if best["spec"] and best["spec"].get("lam", 0) > 0:
                out[f"winner ({best['name']})"] = best["spec"]
        except ValueError as err:
            print(f"{task}: no winner ({err})", file=sys.stderr)
    return out


def run(task: str, spec: dict[str, Any], seed: int, data_dir: str) -> dict[str, Any]:
    config = {"schedule": "cosine", "weight_decay": 5e-4, "data_dir": data_dir,
              **TASKS[task]["train"], "val_fraction": 0.0, "test": "final", "seed": seed,
              "spec": spec, "num_threads": 2}
    result = train(config)
    return {"test_acc": result.get("test_acc"), "grad_evals": result["grad_evals"],
            "status": result["status"], "wall_time": result["wall_time"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tasks", default="digits-noisy,mnist-S-noisy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--schedule", default='{"every": 5, "reuse": true}')
    parser.add_argument("--winners", type=Path, default=Path("results/search-benchmark"))
    parser.add_argument("--out", type=Path, default=Path("results/bench-schedule.json"))
    args = parser.parse_args()
    schedule = json.loads(args.schedule)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    lines = ["| task | member | full: test % | scheduled: test % | passes full | passes "
             "scheduled | ratio | p(scheduled < full) |", "|---|---|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        for name, spec in members(task, args.winners).items():
            scheduled = SharpnessSpec.from_dict(spec).replace(schedule=schedule).to_dict()
            runs: dict[str, list[dict[str, Any]]] = {}
            for variant, variant_spec in (("full", spec), ("scheduled", scheduled)):
                for seed in range(args.seeds):
                    key = f"{task}|{name}|{variant}|{seed}|{json.dumps(schedule)}"
                    if key not in results:  # resumable: finished runs are kept
                        start = time.perf_counter()
                        results[key] = run(task, variant_spec, seed, args.data_dir)
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(results, indent=1))
                        print(f"{key}: {results[key]['test_acc']} "
                              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
                    runs.setdefault(variant, []).append(results[key])
            acc = {v: [100 * r["test_acc"] for r in rs if r["test_acc"] is not None]
                   for v, rs in runs.items()}
            evals = {v: sum(r["grad_evals"] for r in rs) / len(rs) for v, rs in runs.items()}
            full, sched = Summary.of(acc["full"]), Summary.of(acc["scheduled"])
            p_below = welch_greater(acc["full"], acc["scheduled"])
            lines.append(f"| {task} | {name} | {full.mean:.2f} ± {full.std:.2f} | "
                         f"{sched.mean:.2f} ± {sched.std:.2f} | {evals['full']:.0f} | "
                         f"{evals['scheduled']:.0f} | "
                         f"{evals['scheduled'] / evals['full']:.2f} | {p_below:.2f} |")
    print(f"schedule: {json.dumps(schedule)}, {args.seeds} seeds\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
