"""The race's rule on synthetic objectives with known means and noise (no training).

Each candidate scores its mean plus Gaussian noise on every instance, with a shared instance
effect (common random numbers). Prints, over ``--races`` seeded races per scenario: how often
the race names the best candidate, how many runs it takes, how it ended, and — for the scenario
modelled on the default study (nine candidates, SGD and SAM as anchors, per-run noise 0.6
points) — how often the verdict says with confidence that the winner beats SGD, at several
budgets. The figures in docs/search.md §6 come from this script.

    python scripts/race_simulation.py
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

from metasam.stats import PairedDifference
from metasam.tuning.racing import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--races", type=int, default=200)
    args = parser.parse_args()
    print("| scenario | budget | best named | runs (mean) | ended |")
    print("|---|---|---|---|---|")
    for label, means in (("gap 3σ, 6 candidates", [3.0] + [0.0] * 5),
                         ("gap 1σ, 9 candidates", [1.0] + [0.0] * 8),
                         ("gap 0.5σ, 9 candidates", [0.5] + [0.0] * 8),
                         ("gap 10σ, 5 candidates", [10.0] + [0.0] * 4)):
        for budget in (36, 200):
            races = [simulate(means, 1.0, seed=s, first=3, instances=30, budget=budget)
                     for s in range(args.races)]
            ends = Counter(r.end().value for r in races)
            print(f"| {label} | {budget} | {sum(r.winner() == 'c0' for r in races)}/"
                  f"{len(races)} | {statistics.mean(r.runs for r in races):.1f} | "
                  + ", ".join(f"{k} {v}" for k, v in ends.most_common()) + " |")
    # the default study, modelled: val accuracy in points, SGD (c2) and SAM (c3) anchors
    means = [79.6, 79.4, 78.7, 78.7, 79.0, 79.3, 78.9, 78.8, 78.5]
    print("\n| default-study model: budget | a top-3 member wins | verdict beats SGD "
          "(p < 0.05) | instances shared with SGD | runs |")
    print("|---|---|---|---|---|")
    for budget in (36, 48, 60, 80):
        races = [simulate(means, 0.6, seed=s, anchors=frozenset({"c2", "c3"}), first=3,
                          instances=30, budget=budget) for s in range(args.races)]
        confident, shared = 0, []
        for r in races:
            w = r.winner()
            both = sorted(set(r.scores[w]) & set(r.scores["c2"]))
            d = PairedDifference.of([r.scores[w][i] for i in both],
                                    [r.scores["c2"][i] for i in both])
            confident += d.p_greater < 0.05
            shared.append(len(both))
        top = sum(r.winner() in ("c0", "c1", "c5") for r in races)
        print(f"| {budget} | {top}/{len(races)} | {confident}/{len(races)} | "
              f"{statistics.mean(shared):.1f} | {statistics.mean(r.runs for r in races):.1f} |")


if __name__ == "__main__":
    main()
