"""How should a ten-run study spend its runs? Selection rules for the default (quick) study,
compared by simulation on truths taken from the benchmark tasks (docs/search.md §9).

Candidates named in advance, in the portfolio's order: SAM ρ 0→0.2, SSAM-F, SAM, ASAM (at their
defaults). A run's validation value is its truth plus an instance effect shared by every
candidate on that instance plus its own noise, both of spread ``σ`` (the race's simulator,
:func:`metasam.decision.racing.simulate`). Rules:

- ``first``: no selection runs, the portfolio's first candidate;
- ``halving-4``: the halving race over the four, 10 runs (2 + 2 + 2 + 2, then 1 + 1);
- ``halving-2``: the halving race over the portfolio's first two, 10 runs (5 instances each);
- ``shrunk-4``: the halving race over the four, then the pick by posterior mean: each
  candidate's paired difference to the first, shrunk towards its prior difference (the mean
  over the *other* benchmark tasks: leave one task out) by the race's own spread
  (:func:`metasam.decision.prior.shrunk_pick`).

Regret: the best truth minus the pick's, in points of test accuracy; 4,000 races per cell.

    python scripts/quick_simulation.py [--races 4000] [--out docs/data/quick-simulation.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from metasam.decision.prior import shrunk_pick
from metasam.decision.racing import simulate

NAMES = ("ramp", "ssam", "sam", "asam")
# test accuracy (%) at 10 paired seeds, docs/results.md (schedule benchmark)
BENCHMARK = {
    "digits-noisy": (98.59, 98.59, 98.37, 98.37),
    "mnist1d-noisy": (95.41, 95.31, 94.96, 95.25),
    "mnist-S-noisy": (92.84, 92.58, 92.65, 92.34),
}
# tasks the prior never saw: the held-out image task of issue 41 (ASAM taken as SAM), and
# three where the portfolio's order is wrong
OTHER = {
    "held-out image (noisy)": (0.78, 0.42, 0.0, 0.0),
    "all equal": (0.0, 0.0, 0.0, 0.0),
    "first 0.3 worse": (-0.3, 0.0, 0.0, 0.0),
    "SAM 0.3 better": (0.0, 0.0, 0.3, 0.0),
    "ASAM 0.6 better": (0.0, 0.0, 0.0, 0.6),
}
TAU = 0.3   # the prior's spread of a difference from task to task (points)


def prior_of(exclude: str | None) -> list[float]:
    """Each candidate's mean difference to the first over the benchmark tasks but one."""
    tasks = [t for name, t in BENCHMARK.items() if name != exclude]
    return [statistics.fmean(t[i] - t[0] for t in tasks) for i in range(len(NAMES))]


def pick(rule: str, truth: tuple[float, ...], sigma: float, seed: int, prior: list[float]
         ) -> int:
    if rule == "first":
        return 0
    means = list(truth[:2] if rule == "halving-2" else truth)
    race = simulate(means, sigma, seed=seed, first=2, instances=30, budget=10, rule="halving")
    if rule == "shrunk-4":
        return int(shrunk_pick(race, prior[: len(means)], TAU)[1:])
    return int(race.winner()[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--races", type=int, default=4000)
    parser.add_argument("--out", default="docs/data/quick-simulation.json")
    args = parser.parse_args()
    rules = ("first", "halving-4", "halving-2", "shrunk-4")
    rows = []
    tasks = {**BENCHMARK, **OTHER}
    for sigma in (0.3, 0.6, 1.0):
        for task, truth in tasks.items():
            prior = prior_of(task if task in BENCHMARK else None)
            best = max(truth)
            row = {"task": task, "sigma": sigma}
            for rule in rules:
                regrets = [best - truth[pick(rule, truth, sigma, seed, prior)]
                           for seed in range(args.races)]
                mean = statistics.fmean(regrets)
                se = statistics.stdev(regrets) / math.sqrt(len(regrets))
                row[rule] = [round(mean, 4), round(se, 4)]
            rows.append(row)
            print(f"σ={sigma:.1f} {task:24s} " + "  ".join(
                f"{r}: {row[r][0]:.3f}±{row[r][1]:.3f}" for r in rules), flush=True)
    for sigma in (0.3, 0.6, 1.0):
        cells = [r for r in rows if r["sigma"] == sigma]
        print(f"σ={sigma:.1f} mean regret over the {len(cells)} tasks: " + "  ".join(
            f"{rule}: {statistics.fmean(r[rule][0] for r in cells):.3f}" for rule in rules))
    Path(args.out).write_text(json.dumps({"rules": rules, "tau": TAU, "rows": rows,
                                          "races": args.races}, indent=1))


if __name__ == "__main__":
    main()
