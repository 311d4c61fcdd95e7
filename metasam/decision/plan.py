"""A study's plan, fixed before any run: how its budget (in full-run equivalents) divides among
the stages, and the most its decision can claim with the data it holds back.

A **quick** study (``effort: quick``, the default study's) names its candidates in advance —
the shipped portfolio (:mod:`metasam.decision.portfolio`) and any point its search space lists —
and runs no search: its ``budget`` goes to a successive-halving race among them and, where the
data can see a difference, to a sequential confirmation of the winner against SAM at its
default (:mod:`metasam.decision.sequential`). Before any run, the plan predicts the smallest
difference the held-back examples can confirm: a paired accuracy difference measured on m
examples spreads like √(v/m), with v the per-example variance of a paired difference
(``PER_EXAMPLE_VARIANCE``, measured on digits with label noise: about 0.85 points on a
342-example fold, 0.025 in accuracy units²; a cleaner task has less, so the prediction errs on
the side of caution). A confirmation whose power to see ``race.detect`` is below
``MIN_POWER`` is hopeless: it is not run, every run goes to the race, and the plan says what
would make it possible.

A **thorough** study (``effort: thorough``) is the search, the race and the fixed-size
confirmation of its study file, as configured; with a ``budget`` the plan checks they fit.

    >>> race_minimum(4)        # 4 candidates: 2 opening instances each, then 1 more for the last 2
    10
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats

from metasam.decision.confirmation import Sizes
from metasam.decision.sequential import MIN_LOOK, looks_of
from metasam.errors import ConfigError

PER_EXAMPLE_VARIANCE = 0.025   # accuracy units² per example of a paired difference
MIN_POWER = 0.5                # below this power to see race.detect, a confirmation is hopeless
QUICK_COMPARISONS = 1          # the quick verdict: the winner against SAM at its default


def race_minimum(candidates: int) -> int:
    """The fewest runs of a halving race among ``candidates``: two opening instances each, then
    one more for each of the last two."""
    return 2 * candidates + (2 if candidates > 2 else 0)


@dataclass(frozen=True)
class StudyPlan:
    """What a study will spend, stage by stage, and what it can claim (see the module)."""

    effort: str
    budget: float | None          # FRE asked for (None: thorough, as configured)
    tuning: int                   # tuning trials (full runs at most)
    race: int                     # race runs at most
    confirmation: int             # confirmation runs at most (0: none)
    candidates: int               # racing candidates (quick: named in advance)
    held_back: int                # validation examples no selection run scores on
    pool: int                     # examples of the training pool
    detectable: float             # predicted smallest confirmable difference (metric units)
    power: float                  # predicted power to see ``detect``
    detect: float
    alpha: float
    looks: tuple[int, ...] = ()   # confirmation instances at each look (quick)
    hopeless: bool = False        # the data cannot see ``detect``: no confirmation run
    enough: float | None = None   # the budget whose confirmation would reach MIN_POWER

    @property
    def total(self) -> int:
        return self.tuning + self.race + self.confirmation

    def to_dict(self) -> dict[str, Any]:
        return {"effort": self.effort, "budget": self.budget, "tuning": self.tuning,
                "race": self.race, "confirmation": self.confirmation, "total": self.total,
                "candidates": self.candidates, "held_back": self.held_back,
                "detectable": self.detectable, "power": self.power, "detect": self.detect,
                "alpha": self.alpha, "looks": list(self.looks), "hopeless": self.hopeless,
                "enough": self.enough}

    def needed_examples(self, power: float = 0.8, instances: int = 2 * MIN_LOOK) -> int:
        """Held-back examples that would let a confirmation of ``instances`` instances see
        ``detect`` at ``power`` (the pool growing with them)."""
        low, high = 1, 1
        while high < 10**9:
            if _predicted(_sizes(self.pool, high, self.held_back), instances, self.detect,
                          self.alpha, power)[1] >= power:
                break
            low, high = high, high * 2
        while high - low > max(1, high // 200):
            mid = (low + high) // 2
            sizes = _sizes(self.pool, mid, self.held_back)
            if _predicted(sizes, instances, self.detect, self.alpha, power)[1] >= power:
                high = mid
            else:
                low = mid
        return high

    def line(self, metric: str = "val_acc") -> str:
        """The plan as one line, printed before any run."""
        scale, unit = (100.0, " points") if metric.endswith("acc") else (1.0, "")
        head = f"plan: {self.total} full-run equivalents"
        if self.budget is not None:
            head += f" of a budget of {self.budget:g}"
        stages = (f"tuning {self.tuning}, race {self.race}, confirmation {self.confirmation}")
        seen = (f"{self.held_back} held-back examples can confirm differences of "
                f"{self.detectable * scale:.2f}{unit} or more")
        if self.effort == "thorough":
            return (f"{head} at most ({stages}; thorough): {seen} at {self.power:.0%} power "
                    f"(Holm over 3 comparisons, a fixed-size confirmation)")
        if self.hopeless:
            need = self.needed_examples()
            claim = (f"{seen}, power {self.power:.0%} to see {self.detect * scale:.2f}{unit}: "
                     f"hopeless, so no confirmation runs and the study picks without a claim "
                     f"(about {need:,} held-back examples and a budget of "
                     f"{race_minimum(self.candidates) + 4 * MIN_LOOK} would make "
                     f"{self.detect * scale:.2f}{unit} confirmable: more data, a larger "
                     "race.holdout)")
        elif self.confirmation == 0:
            claim = (f"{seen} with a confirmation of {self.power:.0%} power to see "
                     f"{self.detect * scale:.2f}{unit}, but the budget leaves none (a budget of "
                     f"{self.enough:g} would hold it): the study picks without a claim")
        else:
            looks = ", ".join(str(n) for n in self.looks)
            claim = (f"{seen} at {self.power:.0%} power against SAM at its default, looked "
                     f"at after {looks} instances (stopping when it is won or hopeless): "
                     f"the most the study can claim")
        return f"{head} ({stages}; {self.effort}): {claim}"


def _sizes(pool: int, held_back: int, now: int) -> Sizes:
    """The sizes of a pool grown so that ``held_back`` examples are its held-back share (the
    share it has ``now``)."""
    share = now / pool if pool and now else 0.3
    return Sizes(max(pool, round(held_back / share)), held_back, 0)


def _predicted(sizes: Sizes, instances: int, detect: float, alpha: float, power: float,
               comparisons: int = QUICK_COMPARISONS) -> tuple[float, float]:
    """(detectable difference at ``power``, power at ``detect``) of a confirmation of
    ``instances`` instances on ``sizes.holdout`` examples, from the per-example variance."""
    if instances < 2 or sizes.holdout <= 0:
        return math.inf, 0.0
    fold = sizes.fold(instances)
    sd = math.sqrt(PER_EXAMPLE_VARIANCE / max(1, fold))
    se = sd * math.sqrt(1.0 / instances + sizes.overlap(instances))
    df = instances - 1
    crit = stats.t.isf(alpha / comparisons, df)
    detectable = (crit + stats.t.ppf(power, df)) * se
    return float(detectable), float(stats.t.sf(crit - detect / se, df))


def quick_plan(budget: float, candidates: int, sizes: Sizes, *, detect: float, alpha: float,
               power: float, confirm_cap: int | None = None, field: str = "budget"
               ) -> StudyPlan:
    """The quick study's plan: the race gets what the confirmation does not; the confirmation
    gets the fewest instances that reach ``power`` at ``detect`` (at most what the budget and
    ``confirm_cap`` allow), or none when even the most it could have is hopeless."""
    runs = int(math.floor(budget + 1e-9))
    least = race_minimum(candidates)
    if runs < least:
        raise ConfigError(field, f"{budget:g} full-run equivalents cannot hold the race of "
                          f"{candidates} candidates named in advance ({least} runs: 2 opening "
                          "instances each, then 1 more for the last two)",
                          f"{least} or more")
    most = (runs - least) // 2
    if confirm_cap is not None:
        most = min(most, confirm_cap // 2)
    most = min(most, sizes.holdout // 20)          # folds of 20 examples at least
    base = dict(effort="quick", budget=budget, tuning=0, candidates=candidates,
                held_back=sizes.holdout, pool=sizes.pool, detect=detect, alpha=alpha)
    # the fewest instances a confirmation would need to be worth running, whatever the budget
    data_most = min(sizes.holdout // 20, 3 * MIN_LOOK)
    useful = next((j for j in range(MIN_LOOK, data_most + 1)
                   if _predicted(sizes, j, detect, alpha, power)[1] >= MIN_POWER), None)
    enough = None if useful is None else float(least + 2 * useful)
    if most < MIN_LOOK or _predicted(sizes, most, detect, alpha, power)[1] < MIN_POWER:
        # no useful confirmation: hopeless by the data, or short of budget (``enough``)
        shown = max(MIN_LOOK, data_most) if useful is None else useful   # the best it could
        detectable, reach = _predicted(sizes, shown, detect, alpha, power)
        return StudyPlan(race=runs, confirmation=0, detectable=detectable, power=reach,
                         hopeless=useful is None, enough=enough, **base)
    best = most
    for j in range(MIN_LOOK, most + 1):
        if _predicted(sizes, j, detect, alpha, power)[1] >= power:
            best = j
            break
    detectable, reach = _predicted(sizes, best, detect, alpha, power)
    return StudyPlan(race=runs - 2 * best, confirmation=2 * best, detectable=detectable,
                     power=reach, looks=looks_of(best), **base)


def thorough_plan(trials: int, race: int, confirmation: int, sizes: Sizes, *,
                  budget: float | None, detect: float, alpha: float, power: float
                  ) -> StudyPlan:
    """A thorough study's plan: its file's trials, race budget and confirmation budget as
    configured (the confirmation sized later from the race, three comparisons, Holm); with a
    ``budget``, the three must fit in it."""
    if budget is not None and trials + race + confirmation > budget:
        raise ConfigError("budget", f"{budget:g} full-run equivalents cannot hold {trials} "
                          f"trials, a race of {race} runs and a confirmation of "
                          f"{confirmation} runs",
                          f"{trials + race + confirmation} or more, or smaller stages "
                          "(trials, race.budget, race.confirm_budget)")
    instances = confirmation // 4
    detectable, reach = _predicted(sizes, instances, detect, alpha, power, comparisons=3)
    return StudyPlan(effort="thorough", budget=budget, tuning=trials, race=race,
                     confirmation=confirmation, candidates=0, held_back=sizes.holdout,
                     pool=sizes.pool, detectable=detectable, power=reach, detect=detect,
                     alpha=alpha)


def check_confirm_budget(confirm_budget: int, per_instance: int,
                         field: str = "race.confirm_budget") -> None:
    """A confirmation budget must hold its first look (``MIN_LOOK`` instances of
    ``per_instance`` runs) or be 0 (no confirmation)."""
    least = MIN_LOOK * per_instance
    if 0 < confirm_budget < least:
        raise ConfigError(field, f"{confirm_budget} runs cannot hold the confirmation's first "
                          f"look ({MIN_LOOK} instances × {per_instance} runs)",
                          f"0 (no confirmation) or {least} or more")
