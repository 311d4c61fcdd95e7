"""The quick study's decision: the sequential confirmation's boundaries against an independent
simulation of the scores' joint law, its family-wise error under the null (and what it is
without the spending), futility and early stops, the plan's sizes and bad budgets, the
posterior pick, and the whole decision's error rate by simulation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from metasam.decision.confirmation import Sizes, simulate_quick_decision
from metasam.decision.plan import MIN_POWER, quick_plan, race_minimum
from metasam.decision.prior import posterior_means, shrunk_pick
from metasam.decision.racing import Race
from metasam.decision.sequential import (
    boundaries,
    conditional_power,
    decide,
    looks_of,
    next_look,
    obrien_fleming,
)
from metasam.errors import ConfigError

DIGITS = Sizes(pool=1442, holdout=428, race_fold=342)
LARGE = Sizes(pool=15000, holdout=4500, race_fold=1050)


def test_boundaries_spend_the_obrien_fleming_levels() -> None:
    """Simulated Brownian scores (independent increments, Z_k = S_k/√n_k) cross the boundaries
    by look k with probability α(t_k), within three standard errors."""
    fractions = (1 / 3, 2 / 3, 1.0)
    bounds = boundaries(fractions, 0.05)
    rng = np.random.default_rng(0)
    n = 200_000
    steps = rng.standard_normal((n, 3)) * np.sqrt(np.diff((0.0, *fractions)))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    crossed = np.zeros(n, dtype=bool)
    for k, t in enumerate(fractions):
        crossed |= z[:, k] >= bounds[k]
        target = obrien_fleming(t, 0.05)
        se = math.sqrt(target * (1 - target) / n)
        assert abs(crossed.mean() - target) < 3 * se + 1e-4, (k, crossed.mean(), target)
    assert bounds[0] > bounds[1] > bounds[2] > 1.6449   # strict early, near fixed at the end


def _null_error(spending: str, looks: tuple[int, ...], m: int, runs: int = 3000,
                futility: float = 0.0) -> float:
    wrong = 0
    for seed in range(runs):
        rng = random.Random(seed)
        diffs = {f"c{i}": [rng.gauss(0.0, 1.0) for _ in range(looks[-1])] for i in range(m)}
        states = decide(diffs, looks, overlap=0.0, alpha=0.05, spending=spending,
                        futility=futility)
        wrong += any(s is not None and s.confident for s in states.values())
    return wrong / runs


@pytest.mark.parametrize("m", [1, 3])
def test_family_wise_error_holds_over_the_looks_and_fails_without_spending(m: int) -> None:
    """Under the null (t-distributed paired differences, three looks, no futility stop to help
    it), any false claim over all looks and comparisons: at most 5% (Monte-Carlo margin) with
    the spending; testing every look at the full level, well above it."""
    looks = looks_of(12)
    assert looks == (4, 8, 12)
    spent = _null_error("obrien_fleming", looks, m)
    naive = _null_error("none", looks, m)
    margin = 3 * math.sqrt(0.05 * 0.95 / 3000)
    assert spent <= 0.05 + margin, spent
    assert naive > 0.05 + 2 * margin, naive   # what removing the spending does


def test_a_real_difference_stops_early_and_a_hopeless_one_for_futility() -> None:
    looks = (4, 8, 12)
    strong, futile = 0, 0
    for seed in range(400):
        rng = random.Random(seed)
        good = [rng.gauss(2.0, 1.0) for _ in range(12)]
        bad = [rng.gauss(-0.5, 1.0) for _ in range(12)]
        states = decide({"good": good, "bad": bad}, looks, overlap=0.0, alpha=0.05)
        strong += states["good"].confident and states["good"].look < 3   # before the end
        futile += states["bad"].stopped == "futility" and states["bad"].look < 3
    assert strong / 400 > 0.8 and futile / 400 > 0.6, (strong, futile)
    states = decide({"a": [1.0, 2.0, 3.0]}, looks, overlap=0.0, alpha=0.05)
    assert states["a"] is None and next_look(states, looks) == 4   # before its first look


def test_conditional_power_matches_a_simulation_of_the_rest() -> None:
    """The B-value formula against simulated continuations at the drift seen so far."""
    rng = np.random.default_rng(1)
    t, z, final = 0.5, 1.2, 1.7
    drift = z / math.sqrt(t)
    rest = rng.standard_normal(200_000) * math.sqrt(1 - t) + drift * (1 - t)
    simulated = float(np.mean(z * math.sqrt(t) + rest >= final))
    assert abs(conditional_power(z, t, final) - simulated) < 0.005


def test_looks_are_a_function_of_the_stored_prefix() -> None:
    rng = random.Random(3)
    d = [rng.gauss(0.3, 1.0) for _ in range(12)]
    full = decide({"x": d}, (4, 8, 12), overlap=0.03, alpha=0.05)["x"]
    for n in range(full.instances, 13):   # more stored runs than it needed change nothing
        assert decide({"x": d[:n]}, (4, 8, 12), overlap=0.03, alpha=0.05)["x"] == full


def test_the_quick_plan_divides_the_budget_and_says_what_the_data_can_see() -> None:
    digits = quick_plan(10, 4, DIGITS, detect=0.01, alpha=0.05, power=0.8)
    assert (digits.tuning, digits.race, digits.confirmation) == (0, 10, 0)
    assert digits.hopeless and digits.power < MIN_POWER
    assert "hopeless" in digits.line() and "428 held-back" in digits.line()
    large = quick_plan(30, 4, LARGE, detect=0.01, alpha=0.05, power=0.8)
    assert large.confirmation > 0 and not large.hopeless
    assert large.race + large.confirmation == 30 and large.race >= race_minimum(4)
    assert large.detectable < 0.01 < digits.detectable
    # more held-back examples: a smaller confirmable difference, like 1/√n
    bigger = quick_plan(30, 4, Sizes(60000, 18000, 4200), detect=0.01, alpha=0.05, power=0.8)
    assert bigger.detectable < large.detectable


def test_a_budget_below_the_race_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="budget.*cannot hold the race.*allowed: 10 or more"):
        quick_plan(9, 4, DIGITS, detect=0.01, alpha=0.05, power=0.8)


def _race(values: dict[str, list[float]]) -> Race:
    race = Race(list(values), first=2, instances=10, budget=40)
    for c, v in values.items():
        for i, x in enumerate(v):
            race.record(c, i, x)
    return race


def test_the_posterior_pick_weighs_the_prior_by_the_races_precision() -> None:
    """Normal–normal posterior means, computed by hand: the prior decides where the race is
    noisy, the race where it is precise."""
    noisy = _race({"a": [0.90, 0.92, 0.91], "b": [0.91, 0.92, 0.93]})
    d = [0.01, 0.0, 0.02]
    s2 = float(np.var(d, ddof=1))
    prior, tau = [0.0, -0.005], 0.003
    expected = (prior[1] / tau**2 + np.mean(d) * 3 / s2) / (1 / tau**2 + 3 / s2)
    assert posterior_means(noisy, prior, tau)["b"] == pytest.approx(expected, rel=1e-12)
    assert shrunk_pick(noisy, prior, tau) == "a"
    precise = _race({"a": [0.900, 0.910, 0.920], "b": [0.9101, 0.9199, 0.9301]})
    assert shrunk_pick(precise, prior, tau) == "b"
    assert shrunk_pick(noisy, prior, [0.0, math.inf]) == "b"   # no prior: the race's mean


def test_the_whole_quick_decision_keeps_its_error_rate_under_the_null() -> None:
    """Four equal candidates, a ten-run race, the posterior pick, a sequential confirmation
    against SAM on a large held-back share: a false 'beats SAM with confidence' in at most 5%
    of studies (Monte-Carlo margin)."""
    runs, false = 1500, 0
    for seed in range(runs):
        d = simulate_quick_decision([0.9] * 4, 0.006, seed=seed, prior=[0, -0.0012, -0.0029,
                                                                        -0.0029],
                                    tau=0.003, sizes=LARGE, race_runs=10, confirm_runs=24,
                                    detect=0.01)
        false += any(t.confident for t in d.tests.values())
    assert false / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs), false / runs


def test_the_examples_in_the_decision_modules_run() -> None:
    import doctest

    from metasam.decision import plan, portfolio, prior, sequential

    for module in (plan, portfolio, prior, sequential):
        failed, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)[:2]
        assert tried > 0 and failed == 0, module.__name__


def test_a_hopeless_plans_verdict_says_pick_not_claim() -> None:
    """A quick study whose plan ran no confirmation: its verdict and the report's headline say
    the winner is a pick with no claim, and why — not that a confirmation is pending."""
    from metasam.analysis.report import headline
    from metasam.decision.candidate import Candidate, Pick
    from metasam.decision.confirmation import Plan
    from metasam.decision.stage import Selection, verdict_of
    from metasam.family import presets

    cands = [Candidate("ramp", Pick.POINT, presets.sam().to_dict()),
             Candidate("sam", Pick.PRESET, presets.sam().to_dict())]
    race = Race([c.id for c in cands], first=2, instances=3, budget=6, rule="halving")
    for i, (a, b) in enumerate([(0.80, 0.79), (0.81, 0.80)]):
        race.record(cands[0].id, i, a)
        race.record(cands[1].id, i, b)
    race.next_round()
    for note, words in (("hopeless", "the plan showed it hopeless"),
                        ("budget", "the budget left no confirmation runs")):
        plan = Plan(0, 0, 0.0, math.nan, 0.03, 0.01, 0.8, True, (), note)
        verdict = verdict_of(Selection(cands, race, cands[0], {"sam": cands[1]}, plan), {},
                             "max")
        text = "\n".join(verdict.lines("val_acc"))
        assert words in text
        if note == "hopeless":   # what the held-back data could confirm at best, as planned
            assert "differences of 3.00 points or more" in text
        assert headline(verdict, "val_acc").startswith("Pick ramp, not a claim")
