"""Error rate and power of the quick study's whole decision — the ten-run race, the pick by
posterior mean, the sequential confirmation against SAM — by simulation, through the functions
a study runs (:func:`metasam.decision.confirmation.simulate_quick_decision` with
:func:`metasam.decision.plan.quick_plan`'s division of the budget).

Sizes are the benchmark tasks' (the pool, its 30% held back, a race fold of the tuning split's
size); a run's noise on a fold of m examples is √(v/2m) with v the plan's per-example variance
of a paired difference (0.6 points on digits' 342-example folds). Scenarios: the null (the
four candidates equal) and SAM-beaters (the pick 0.5 or 1 point above SAM, the others at SAM).

    python scripts/quick_calibration.py [--studies 2000] [--out docs/data/quick-calibration.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from metasam.decision.confirmation import Sizes, simulate_quick_decision
from metasam.decision.plan import PER_EXAMPLE_VARIANCE, quick_plan
from metasam.decision.portfolio import shipped_portfolio

SIZES = {"digits-noisy": Sizes(1437, 428, 342), "mnist-S-noisy": Sizes(6000, 1800, 900),
         "mnist1d-noisy": Sizes(4000, 1200, 600), "CIFAR-10-S (5,000)": Sizes(5000, 1500, 500),
         "MNIST (60,000)": Sizes(60000, 18000, 6300)}
SCENARIOS = {"null": (0.0, 0.0, 0.0, 0.0), "first +0.5 over SAM": (0.005, 0.0, 0.0, 0.0),
             "first +1 over SAM": (0.01, 0.0, 0.0, 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--out", default="docs/data/quick-calibration.json")
    args = parser.parse_args()
    portfolio = shipped_portfolio()
    rows = []
    for task, sizes in SIZES.items():
        noise = math.sqrt(PER_EXAMPLE_VARIANCE / (2 * sizes.race_fold))
        for budget in (10, 18, 26):
            plan = quick_plan(budget, 4, sizes, detect=0.01, alpha=0.05, power=0.8)
            for scenario, gains in SCENARIOS.items():
                claims, runs = [], []
                for seed in range(args.studies):
                    d = simulate_quick_decision(
                        [0.9 + g for g in gains], noise, seed=seed, prior=portfolio.gains,
                        tau=portfolio.tau, sizes=sizes, race_runs=plan.race,
                        confirm_runs=plan.confirmation, detect=0.01)
                    claims.append(any(t.confident for t in d.tests.values()))
                    runs.append(plan.race + 2 * sum(t.look.instances for t in d.tests.values()))
                row = {"task": task, "budget": budget, "scenario": scenario,
                       "plan": [plan.race, plan.confirmation], "hopeless": plan.hopeless,
                       "claims": statistics.fmean(claims), "mean_runs": statistics.fmean(runs),
                       "studies": args.studies}
                rows.append(row)
                print(f"{task:20s} budget {budget:2d} {scenario:20s} plan race {plan.race:2d} "
                      f"confirm {plan.confirmation:2d}{' hopeless' if plan.hopeless else ''}: "
                      f"claims {row['claims']:.3f}, runs {row['mean_runs']:.1f}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
