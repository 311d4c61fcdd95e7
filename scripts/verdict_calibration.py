"""Error rates and power of a study's whole decision stage on synthetic objectives.

Race (selection among contenders, SGD and SAM as anchors), the confirmation's sizing from the
race's spread, the confirmation on fresh instances and the Holm-corrected verdict: the
functions a study runs (:func:`metasam.decision.confirmation.simulate_decision`), on candidates with
known means. The noise model is the default study's (digits-noisy): nine candidates, per-run
noise of σ = 0.6 points and a shared instance effect of the same spread on a race fold of 342
validation examples, both shrinking like 1/√examples on the confirmation's smaller folds of the
428 held-back examples. The race is the shipped rule (``--rule``, successive halving by
default).

Two readings of the verdict (docs/search.md §6, "its estimand"): *this pool* (the stated one:
models trained on this training pool; instances independent given the pool) and, as a
contrast, *the population of pools*: each candidate also carries an effect of this pool,
shared by all its race and confirmation runs, of the variance Nadeau and Bengio's correction
assumes (:meth:`~metasam.decision.confirmation.Sizes.between_pools`) — the race selects on it.

Scenarios: the null (all equal), SGD 3σ worse with the rest equal, and one candidate better
than all others by 0.5σ, 1σ, 2σ and 3σ (power). Per scenario: the rate of each "beats X with
confidence", the family-wise rate of a false claim (a claim against a candidate at least as
good as the winner), how often an equal candidate was dropped, how often the planted best was
kept and named, and the confirmation's size. Prints a Markdown table and writes the figures
to ``docs/data/verdict-calibration.json``; the figures in docs/search.md §6 come from it.

    python scripts/verdict_calibration.py --studies 4000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from metasam.decision.confirmation import Sizes, simulate_decision

SIGMA = 0.6
DIGITS = Sizes(pool=1442, holdout=428, race_fold=342)


def options(budget: int, confirm_budget: int, power: float, sizes: Sizes,
            rule: str = "halving") -> dict:
    return dict(noise=SIGMA, sgd="c2", sam="c3", presets=[f"c{i}" for i in range(3, 9)],
                sizes=sizes, detect=1.0, power=power, confirm_budget=confirm_budget,
                first=3, instances=30, budget=budget, rule=rule)


SCENARIOS = {
    "null: all 9 equal": [0.0] * 9,
    "SGD 3σ worse, the rest equal": [0.0, 0.0, -3 * SIGMA] + [0.0] * 6,
    "c0 0.5σ better than all": [0.5 * SIGMA] + [0.0] * 8,
    "c0 1σ better than all": [1.0 * SIGMA] + [0.0] * 8,
    "c0 2σ better than all": [2.0 * SIGMA] + [0.0] * 8,
    "c0 3σ better than all": [3.0 * SIGMA] + [0.0] * 8,
}


def measure(means: list[float], studies: int, opts: dict) -> dict[str, float]:
    beats = {"sgd": 0, "sam": 0, "best_preset": 0}
    wrong = dropped_equal = kept = named = 0
    instances, runs, predicted = [], [], []
    for seed in range(studies):
        d = simulate_decision(means, seed=seed, **opts)
        claims = [k for k, t in d.tests.items() if t.confident]
        for k in claims:
            beats[k] += 1
        true = means[int(d.winner[1:])]
        wrong += any(means[int(d.compared[k][1:])] >= true for k in claims)
        equal = [c for c in d.race.candidates if c not in (opts["sgd"], opts["sam"])
                 and means[int(c[1:])] == 0.0]
        dropped_equal += any(c in d.race.dropped for c in equal)
        kept += "c0" not in d.race.dropped
        named += d.winner == "c0"
        instances.append(d.plan.instances)
        runs.append(d.race.runs + d.plan.instances * (len(d.compared) + 1))
        if not math.isnan(d.plan.predicted):
            predicted.append(d.plan.predicted)
    n = studies
    return {**{f"beats_{k}": v / n for k, v in beats.items()}, "false_claim": wrong / n,
            "equal_dropped": dropped_equal / n, "c0_kept": kept / n, "c0_named": named / n,
            "confirmation_instances": statistics.mean(instances),
            "runs": statistics.mean(runs),
            "predicted_detectable": statistics.mean(predicted) if predicted else math.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--budget", type=int, default=48, help="the race's runs")
    parser.add_argument("--confirm-budget", type=int, default=40)
    parser.add_argument("--rule", default="halving", choices=("halving", "frace", "ttts"),
                        help="the race's rule (default: the shipped one)")
    parser.add_argument("--power", type=float, default=0.95)
    parser.add_argument("--sizes", type=int, nargs=3, metavar=("POOL", "HELD_BACK", "FOLD"),
                        default=[DIGITS.pool, DIGITS.holdout, DIGITS.race_fold],
                        help="examples in the pool, held back, and in a race fold (default: "
                             "digits-noisy's); σ stays 0.6 points on a race fold")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"
                                             / "data" / "verdict-calibration.json"))
    args = parser.parse_args()
    sizes = Sizes(*args.sizes)
    opts = options(args.budget, args.confirm_budget, args.power, sizes, args.rule)
    start = time.time()
    mc = 2 * math.sqrt(0.05 * 0.95 / args.studies)
    print(f"{args.studies} seeded studies per scenario; race budget {args.budget}, "
          f"confirmation budget {args.confirm_budget}; rule {args.rule}; sizes {vars(sizes)}; "
          f"Monte-Carlo "
          f"margin at 5%: ±{mc:.2%}")
    print("| estimand | scenario | beats SGD | beats SAM | beats best preset | "
          "false claim (FWER) | an equal one dropped | c0 kept | c0 named | "
          "confirmation instances | runs | "
          "predicted detectable (points) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results: dict[str, dict] = {}
    for estimand, pools in (("this pool", False), ("population of pools", True)):
        for label, means in SCENARIOS.items():
            r = measure(means, args.studies, {**opts, "pools": pools})
            results.setdefault(estimand, {})[label] = r
            print(f"| {estimand} | {label} | {r['beats_sgd']:.1%} | {r['beats_sam']:.1%} | "
                  f"{r['beats_best_preset']:.1%} | {r['false_claim']:.1%} | "
                  f"{r['equal_dropped']:.1%} | {r['c0_kept']:.1%} | {r['c0_named']:.1%} | "
                  f"{r['confirmation_instances']:.1f} | {r['runs']:.1f} | "
                  f"{r['predicted_detectable']:.2f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "studies": args.studies, "sigma_points": SIGMA, "sizes": vars(sizes),
        "race_budget": args.budget, "confirm_budget": args.confirm_budget, "rule": args.rule,
        "power": args.power, "detect_points": 1.0, "scenarios": results}, indent=2) + "\n")
    print(f"({time.time() - start:.0f} s; written to {args.out})")


if __name__ == "__main__":
    main()
