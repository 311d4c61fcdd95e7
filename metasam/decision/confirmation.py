"""The verdict half of a study's decision: the race's winner confirmed on fresh instances, its
comparisons corrected together.

The race (:mod:`metasam.decision.racing`) *selects*; what it selected is then tested on evidence
that played no part in any selection, so "beats X with confidence" holds at its stated rate:

- **Fresh instances.** Confirmation instance j trains with a seed no tuning trial or race run
  used and validates on fold j of a J-fold stratified split of the *held-back pool*: a share of
  the training pool (``race.holdout``) whose examples no tuning trial and no race run ever
  validated on. The folds are disjoint: no validation example counts twice.
- **Sized before it starts.** J comes from the race's spread of paired differences between the
  winner and what it is compared with, scaled to the confirmation's fold size (a paired
  accuracy difference measured on m examples spreads like 1/√m, from the examples drawn and
  from the seed alike), as the smallest J whose detectable difference reaches ``race.detect``
  at ``race.power``, capped by ``race.confirm_budget`` runs and by folds of at least
  ``MIN_FOLD`` examples. J is fixed before any confirmation run: no optional stopping.
- **Dependence.** The instances' training sets (the pool without one fold) overlap, so each
  difference is tested by the corrected resampled t-test (Nadeau & Bengio 2003): variance
  × (1/J + n_val/n_train) in place of 1/J.
- **Multiplicity.** The comparisons (SGD, SAM at its default, the best other preset) are one
  family: their one-sided p-values are Holm-adjusted together, so the chance of *any* false
  "beats it with confidence" is at most ``alpha``.

:func:`simulate_decision` runs this whole stage — race, sizing, confirmation, verdict — on a
synthetic objective through the same functions a study uses; ``scripts/verdict_calibration.py``
and the test suite measure its error rates with it.

    >>> tests = confirm([0.82, 0.84, 0.80, 0.83], {"sgd": [0.80, 0.81, 0.80, 0.80]})
    >>> round(tests["sgd"].difference.mean, 3), tests["sgd"].confident
    (0.02, True)
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metasam.decision.racing import Race, simulate
from metasam.decision.sequential import Look, decide
from metasam.stats import PairedDifference, Summary, detectable_difference, holm

MIN_FOLD = 20      # validation examples per confirmation instance, at least
LEAST = 4          # confirmation instances, at least (a t-test with 3 degrees of freedom)


@dataclass(frozen=True)
class Sizes:
    """What the data allow: examples in the training ``pool``, of them ``holdout`` held back
    for the verdict, and ``race_fold`` validation examples per race instance."""

    pool: int
    holdout: int
    race_fold: int

    def fold(self, instances: int) -> int:
        """Validation examples of one confirmation instance among ``instances``."""
        return self.holdout // max(1, instances)

    def between_pools(self, noise: float) -> float:
        """The spread of a candidate's mean from one training pool to another, for a per-run
        spread ``noise`` on a race fold: ``noise·√(race_fold / pool)``. A run's validation
        noise shrinks like 1/√n_val, a pool's effect like 1/√n_train; their ratio of variances
        is n_val/n_train, Nadeau and Bengio's correction."""
        return noise * math.sqrt(self.race_fold / max(1, self.pool))

    def overlap(self, instances: int) -> float:
        """n_val / n_train of a confirmation instance (Nadeau & Bengio's correction)."""
        fold = self.fold(instances)
        return fold / max(1, self.pool - fold)


@dataclass(frozen=True)
class Plan:
    """How many confirmation instances, and why."""

    instances: int
    fold: int              # validation examples per instance
    overlap: float         # n_val / n_train
    spread: float          # the race's paired spread it was sized from (nan: none)
    predicted: float       # detectable difference predicted at ``power`` (nan: unknown)
    detect: float          # the detectable difference asked for
    power: float
    capped: bool           # the budget or the fold size stopped it short of ``detect``
    looks: tuple[int, ...] = ()   # instances at each look of a sequential confirmation
    note: str = ""         # why there is no confirmation (a quick study's plan)

    @property
    def sequential(self) -> bool:
        return bool(self.looks)

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.instances, "fold": self.fold, "overlap": self.overlap,
                "spread": self.spread, "predicted_detectable": self.predicted,
                "detect": self.detect, "power": self.power, "capped": self.capped,
                "looks": list(self.looks), "note": self.note}


def plan_confirmation(spread: float, sizes: Sizes, *, comparisons: int, per_instance: int,
                      budget: int, detect: float, power: float, alpha: float) -> Plan:
    """The smallest number of confirmation instances whose predicted detectable difference
    (one-sided, at Holm's strictest level ``alpha / comparisons``, at ``power``) is at most
    ``detect``; else the most that ``budget`` runs (``per_instance`` a round) and folds of
    ``MIN_FOLD`` examples allow. ``spread`` is the race's standard deviation of paired
    differences per instance on ``sizes.race_fold`` examples (nan: unknown, take the most)."""
    most = min(budget // max(1, per_instance), sizes.holdout // MIN_FOLD)
    level = alpha / max(1, comparisons)

    def predicted(j: int) -> float:
        if math.isnan(spread):
            return math.nan
        sd = spread * math.sqrt(sizes.race_fold / max(1, sizes.fold(j)))
        return detectable_difference(sd, j, level, power, sizes.overlap(j))

    if most < 2:
        j = max(0, most)
        return Plan(j, sizes.fold(j) if j else 0, sizes.overlap(j) if j else 0.0, spread,
                    math.nan, detect, power, True)
    chosen = most
    for j in range(min(LEAST, most), most + 1):
        value = predicted(j)
        if not math.isnan(value) and value <= detect:
            chosen = j
            break
    value = predicted(chosen)
    return Plan(chosen, sizes.fold(chosen), sizes.overlap(chosen), spread, value, detect,
                power, not (value <= detect))


def race_spread(race: Race, winner: str, others: Sequence[str]) -> float:
    """The largest standard deviation of the paired differences between the winner and each of
    ``others`` over the race instances they share (finite runs only; nan when none has two)."""
    out = math.nan
    for other in others:
        shared = sorted(set(race.scores[winner]) & set(race.scores[other]))
        d = [race.scores[winner][i] - race.scores[other][i] for i in shared
             if math.isfinite(race.scores[winner][i]) and math.isfinite(race.scores[other][i])]
        if len(d) >= 2:
            sd = Summary.of(d).std
            out = sd if math.isnan(out) else max(out, sd)
    return out


@dataclass(frozen=True)
class Test:
    """One comparison of the verdict: the winner minus ``other`` on the confirmation instances
    (positive: the winner is better), its raw one-sided p-value in ``difference`` and the
    Holm-adjusted one over the whole family in ``p_adjusted``."""

    other: str
    difference: PairedDifference
    p_adjusted: float
    family: int            # comparisons corrected together
    alpha: float
    look: Look | None = None   # a sequential confirmation's last look (its boundary decides)

    @property
    def confident(self) -> bool:
        if self.look is not None:
            return self.look.confident
        return not math.isnan(self.p_adjusted) and self.p_adjusted < self.alpha


def confirm(winner: Sequence[float], others: Mapping[str, Sequence[float]], *,
            overlap: float = 0.0, alpha: float = 0.05, power: float = 0.8) -> dict[str, Test]:
    """The verdict's tests: the winner's values against each of ``others`` (same instances, in
    the same order; larger is better), the corrected resampled t-test with ``overlap`` =
    n_val/n_train, Holm-adjusted together; each one's detectable difference is at Holm's
    strictest level α/m, as the plan's prediction. Non-finite pairs (a diverged run) are left
    out of that comparison; a comparison with fewer than ``LEAST`` finite pairs left, or with
    differences that are all the same, claims nothing (p = 1)."""
    diffs: dict[str, PairedDifference] = {}
    strictest = alpha / max(1, len(others))  # Holm's first level
    for name, values in others.items():
        pairs = [(a, b) for a, b in zip(winner, values, strict=True)
                 if math.isfinite(a) and math.isfinite(b)]
        diff = PairedDifference.of([a for a, _ in pairs], [b for _, b in pairs],
                                   strictest, power, overlap)
        if len(pairs) < LEAST and not math.isnan(diff.p_greater):  # too few to claim
            diff = dataclasses.replace(diff, p_greater=1.0)
        diffs[name] = diff
    names = list(diffs)
    adjusted = holm([diffs[n].p_greater for n in names])
    family = sum(not math.isnan(diffs[n].p_greater) for n in names)
    return {n: Test(n, diffs[n], p, family, alpha) for n, p in zip(names, adjusted, strict=True)}


def sequential_states(winner: Sequence[float], others: Mapping[str, Sequence[float]], *,
                      looks: Sequence[int], overlap: float, alpha: float,
                      spending: str = "obrien_fleming"
                      ) -> tuple[dict[str, Look | None], dict[str, list[tuple[float, float]]]]:
    """Where each comparison of a sequential confirmation stands (its last look reached, or
    ``None`` before its first), and its finite (winner, other) pairs in instance order.
    ``winner`` and ``others`` as in :func:`confirm`, as many instances as have run (a diverged
    run nan). Non-finite pairs are left out; a comparison they leave short of its last look
    ends once all its planned instances ran (``"final"``, claiming nothing), so a study never
    waits for instances it will not run."""
    pairs = {k: [(a, b) for a, b in zip(winner, v, strict=False)
                 if math.isfinite(a) and math.isfinite(b)] for k, v in others.items()}
    states = decide({k: [a - b for a, b in p] for k, p in pairs.items()}, looks,
                    overlap=overlap, alpha=alpha, spending=spending)
    for key, state in states.items():
        ran_all = min(len(winner), len(others[key])) >= looks[-1]
        if ran_all and (state is None or state.stopped is None):
            states[key] = Look(len(looks), len(pairs[key]), math.nan, math.inf, 0.0, "final")
    return states, pairs


def confirm_sequential(winner: Sequence[float], others: Mapping[str, Sequence[float]], *,
                       looks: Sequence[int], overlap: float = 0.0, alpha: float = 0.05,
                       power: float = 0.8, spending: str = "obrien_fleming"
                       ) -> dict[str, Test]:
    """The verdict's tests of a sequential confirmation: each comparison replayed over its
    looks (:func:`sequential_states`, α/m each), its difference over the instances of its
    last look. A comparison before its first look has no test."""
    m = max(1, len(others))
    states, pairs = sequential_states(winner, others, looks=looks, overlap=overlap,
                                      alpha=alpha, spending=spending)
    out: dict[str, Test] = {}
    for key, state in states.items():
        if state is None:
            continue
        used = pairs[key][: state.instances]
        diff = PairedDifference.of([a for a, _ in used], [b for _, b in used], alpha / m,
                                   power, overlap)
        out[key] = Test(key, diff, diff.p_greater, m, alpha, state)
    return out


def quick_comparison(race: Race, winner: str, sam: str | None, pool: Sequence[str]
                     ) -> dict[str, str]:
    """What a quick study's verdict compares its pick with: SAM at its default, or, when SAM is
    the pick (or absent), the candidate of ``pool`` that lasted longest (:func:`best_other`)."""
    if sam is not None and sam != winner:
        return {"sam": sam}
    other = best_other(race, winner, pool)
    return {"best_preset": other} if other is not None else {}


def best_other(race: Race, winner: str, pool: Sequence[str]) -> str | None:
    """The candidate of ``pool`` (not the winner) that lasted longest in the race, then by its
    mean over its instances: the "best preset" a verdict compares with."""
    rest = [c for c in pool if c != winner and race.scores[c]]
    return max(rest, key=race.standing) if rest else None


# --- the whole stage on a synthetic objective -------------------------------------------------

@dataclass(frozen=True)
class SimulatedDecision:
    """One simulated study's decision: the race, the plan, and the verdict's tests by key."""

    race: Race
    winner: str
    plan: Plan
    tests: dict[str, Test]      # key ("sgd", "sam", "best_preset") -> its test
    compared: dict[str, str]    # key -> the candidate compared with


def simulate_decision(means: Sequence[float], noise: float, *, seed: int, sgd: str, sam: str,
                      presets: Sequence[str], sizes: Sizes, detect: float, power: float = 0.8,
                      confirm_budget: int = 40, alpha: float = 0.05, pools: bool = False,
                      **race_options: Any) -> SimulatedDecision:
    """A study's decision stage on a synthetic objective: candidate ``c{i}`` scores
    ``means[i]`` plus a shared instance effect and its own Gaussian noise, both of spread
    ``noise`` on a race instance and ``noise·√(race_fold / fold)`` on a confirmation instance
    of ``fold`` validation examples. ``means`` is then the verdict's estimand as docs/search.md
    states it: models trained on *this* pool. With ``pools``, ``means`` are instead means over
    the population of training pools, and this study's pool adds to each candidate an effect
    of its own, drawn once, of spread :meth:`Sizes.between_pools`, that every race and
    confirmation run of that candidate shares (they all train on nearly the same examples):
    the dependence Nadeau and Bengio's correction assumes, and the race selects on it too.
    SGD and SAM (``sgd``, ``sam``) are the race's anchors under ``rule="frace"`` (the default
    here), contenders under the other rules; ``presets`` the candidates a "best preset" is
    chosen from. Race, sizing, confirmation and verdict are the functions a study runs."""
    anchors = frozenset({sgd, sam}) if race_options.get("rule", "frace") == "frace" \
        else frozenset()
    rng = random.Random(f"{seed}/pool")
    spread = sizes.between_pools(noise) if pools else 0.0
    truth = [m + rng.gauss(0.0, spread) if spread else m for m in means]   # on this pool
    race = simulate(truth, noise, seed=seed, anchors=anchors, alpha=alpha, **race_options)
    rng = random.Random(f"{seed}/confirmation")
    index = {c: i for i, c in enumerate(race.candidates)}
    winner = race.winner()
    compared = comparisons_of(race, winner, sgd, sam, presets)
    plan = plan_confirmation(race_spread(race, winner, list(compared.values())), sizes,
                             comparisons=len(compared), per_instance=len(compared) + 1,
                             budget=confirm_budget, detect=detect, power=power, alpha=alpha)
    scale = noise * math.sqrt(sizes.race_fold / max(1, plan.fold))
    runs: dict[str, list[float]] = {c: [] for c in (winner, *compared.values())}
    for _ in range(plan.instances):
        effect = rng.gauss(0.0, scale)
        for c in runs:
            runs[c].append(race.sign() * (truth[index[c]] + effect + rng.gauss(0.0, scale)))
    tests = confirm(runs[winner], {k: runs[c] for k, c in compared.items()},
                    overlap=plan.overlap, alpha=alpha, power=power) if plan.instances else {}
    return SimulatedDecision(race, winner, plan, tests, compared)


def simulate_quick_decision(means: Sequence[float], noise: float, *, seed: int,
                            prior: Sequence[float], tau: float | Sequence[float], sizes: Sizes,
                            race_runs: int, confirm_runs: int, detect: float,
                            power: float = 0.8, alpha: float = 0.05,
                            spending: str = "obrien_fleming") -> SimulatedDecision:
    """A quick study's decision on a synthetic objective (``means`` in the portfolio's order;
    candidate ``c{i}``; ``c2`` plays SAM at its default, as in the shipped portfolio): the
    halving race of ``race_runs`` runs, the pick by posterior mean, and the sequential
    confirmation against SAM (the best other when SAM is the pick) of at most
    ``confirm_runs`` runs, looks replayed as a study replays them. Runs as in
    :func:`simulate_decision`, on *this* pool."""
    from metasam.decision.prior import shrunk_pick
    from metasam.decision.sequential import looks_of, next_look

    race = simulate(list(means), noise, seed=seed, first=2, instances=30, budget=race_runs,
                    rule="halving")
    winner = shrunk_pick(race, prior, tau)
    compared = quick_comparison(race, winner, "c2" if len(means) > 2 else None,
                                list(race.candidates))
    plan = plan_confirmation(race_spread(race, winner, list(compared.values())), sizes,
                             comparisons=1, per_instance=2, budget=confirm_runs,
                             detect=detect, power=power, alpha=alpha)
    tests: dict[str, Test] = {}
    if plan.instances >= 2 and compared:
        plan = dataclasses.replace(plan, looks=looks_of(plan.instances))
        rng = random.Random(f"{seed}/confirmation")
        index = {c: i for i, c in enumerate(race.candidates)}
        scale = noise * math.sqrt(sizes.race_fold / max(1, plan.fold))
        (key, other), = compared.items()
        runs: dict[str, list[float]] = {winner: [], other: []}
        while True:
            states, _ = sequential_states(runs[winner], {key: runs[other]}, looks=plan.looks,
                                          overlap=plan.overlap, alpha=alpha,
                                          spending=spending)
            upto = next_look(states, plan.looks)
            if upto is None:
                break
            while len(runs[winner]) < upto:
                effect = rng.gauss(0.0, scale)
                for c in runs:
                    runs[c].append(race.sign() * (means[index[c]] + effect
                                                  + rng.gauss(0.0, scale)))
        tests = confirm_sequential(runs[winner], {key: runs[other]}, looks=plan.looks,
                                   overlap=plan.overlap, alpha=alpha, power=power,
                                   spending=spending)
    return SimulatedDecision(race, winner, plan, tests, compared)


def comparisons_of(race: Race, winner: str, sgd: str | None, sam: str | None,
                   presets: Sequence[str]) -> dict[str, str]:
    """What the verdict compares the winner with: SGD, SAM at its default and the best other
    preset (:func:`best_other` over ``presets``, SGD and SAM excluded), each once and never
    the winner itself."""
    out: dict[str, str] = {}
    for key, c in (("sgd", sgd), ("sam", sam)):
        if c is not None and c != winner and c not in out.values():
            out[key] = c
    best = best_other(race, winner, [p for p in presets if p not in (sgd, sam)])
    if best is not None:
        out["best_preset"] = best
    return out
