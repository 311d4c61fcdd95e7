"""Racing candidates over paired instances: the selection half of a study's decision (F-Race,
Birattari et al. 2002; irace's rule), with error rates that hold over the whole race.

A race decides among a few candidates whose scores are noisy: every round evaluates the
surviving candidates on the next instance (a training seed and a validation fold: common random
numbers, so every comparison is paired). *Anchors* (SGD and SAM at their defaults in a study)
run on every instance — the decision's sizing and the verdict need them — but take no part in
the elimination tests: a clearly worse anchor must not open the omnibus gate through which
equal candidates would then be dropped. Among the other survivors (the *contenders*), once
``first`` instances are in, each round tests:

- with three or more contenders, Friedman's test over the instances (ranks within each
  instance: robust to a diverged run); when it rejects, every contender whose rank sum is
  worse than the best one's by more than Tukey's studentized-range critical difference drops
  out (:func:`metasam.stats.friedman_drop`: the comparisons with the data-chosen best are
  corrected together);
- with two, the two-sided paired t-test (irace's rule); the worse one drops when it rejects.

Each look n (after n instances) tests at the level that the spending function
:func:`metasam.stats.spent_alpha` assigns to it over the most instances the race can reach
(its *horizon*), so the chance that a race drops *any* candidate no worse than the others,
over all its looks, stays at ``alpha`` — a race that tests after every instance would otherwise
spend ``alpha`` at every look.

The race ends when at most one contender remains (after the opening instances), when the
instances run out, or when the next round would overrun the budget (in runs). It does *not*
stop because the leader looks significantly better than something: the race selects, and the
verdict is decided afterwards on instances that played no part in the selection
(:mod:`metasam.decision.confirmation`). The winner is the survivor, anchors included, with the best
mean over the instances the survivors share.

This module is pure bookkeeping: it says what to run next and reads what was run (from the
study's storage, by :mod:`metasam.decision.stage`); it runs nothing itself, so a race resumes
by replaying its stored results.

    >>> race = Race(["a", "b", "c"], mode="max", first=2, instances=10, budget=30)
    >>> race.next_round()          # instance 0 and 1 for everyone first
    [('a', 0), ('b', 0), ('c', 0), ('a', 1), ('b', 1), ('c', 1)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from metasam.stats import friedman_drop, paired_two_sided, spent_alpha


class RaceEnd(str, Enum):
    """Why a race stopped (or that it goes on)."""

    RUNNING = "running"
    ONE_LEFT = "one contender left"
    INSTANCES = "all instances used"
    BUDGET = "racing budget spent"
    ROUNDS = "every halving round run"


RULES = ("halving", "ttts", "frace")


@dataclass
class Race:
    """The state of a race among ``candidates`` (hashable ids), maximizing or minimizing.

    ``first``: instances every candidate runs before the first test; ``instances``: the most
    instances; ``budget``: the most runs in all; ``alpha``: the chance, over the whole race,
    of dropping any contender that is no worse than the rest; ``anchors``: candidates that run
    every instance and are never tested or dropped.
    """

    candidates: Sequence[str]
    mode: str = "max"
    first: int = 3
    instances: int = 20
    budget: int = 60
    alpha: float = 0.05
    anchors: frozenset[str] = frozenset()
    rule: str = "frace"
    scores: dict[str, dict[int, float]] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)   # candidate -> instances it had
    tested: int = 0      # instances after which the last elimination test ran

    def __post_init__(self) -> None:
        if len(set(self.candidates)) != len(self.candidates) or not self.candidates:
            raise ValueError("a race needs distinct candidates")
        if self.first < 2:
            raise ValueError("first: a paired test needs at least 2 instances")
        if not set(self.anchors) <= set(self.candidates):
            raise ValueError("anchors must be candidates")
        if self.rule not in RULES:
            raise ValueError(f"rule: {self.rule!r}; allowed: {', '.join(RULES)}")
        if self.rule != "frace" and self.anchors:
            raise ValueError(f"a {self.rule} race has no anchors: every candidate contends")
        for c in self.candidates:
            self.scores.setdefault(c, {})
        self.schedule = halving_schedule(len(self.candidates), self.first, self.instances,
                                         self.budget) if self.rule != "frace" else []

    # --- what happened --------------------------------------------------------------------

    @property
    def alive(self) -> list[str]:
        return [c for c in self.candidates if c not in self.dropped]

    @property
    def contenders(self) -> list[str]:
        """The survivors the elimination tests compare: every one but the anchors."""
        return [c for c in self.alive if c not in self.anchors]

    @property
    def runs(self) -> int:
        return sum(len(s) for s in self.scores.values())

    def done_instances(self) -> int:
        """Instances every surviving candidate has a score on (0, 1, ...: a prefix)."""
        n = 0
        while all(n in self.scores[c] for c in self.alive):
            n += 1
        return n

    def record(self, candidate: str, instance: int, value: float) -> None:
        """A run's result (a diverged or failed run is recorded as the worst value: its
        candidate does not get to skip an instance)."""
        if not math.isfinite(value):
            value = -math.inf if self.mode == "max" else math.inf
        self.scores[candidate][instance] = value

    def sign(self) -> float:
        return 1.0 if self.mode == "max" else -1.0

    def value(self, candidate: str, instance: int) -> float:
        """The run's value for comparisons: a diverged or failed run counts as the worst
        finite value any candidate reached on that instance (the instance's worst rank), not
        as −∞ — one diverged run must not outweigh a candidate's other instances."""
        v = self.scores[candidate][instance]
        if math.isfinite(v):
            return v
        finite = [s[instance] for s in self.scores.values()
                  if instance in s and math.isfinite(s[instance])]
        if not finite:
            return 0.0
        return min(finite) if self.mode == "max" else max(finite)

    def mean(self, candidate: str, upto: int) -> float:
        values = [self.value(candidate, i) for i in range(upto)]
        return sum(values) / len(values)

    def standing(self, candidate: str) -> tuple[float, float]:
        """How ``candidate`` stands after the race, larger is better: how many instances it
        lasted (inf: it survived), then its mean over its instances in the metric's
        direction (a diverged run at its instance's worst value)."""
        values = [self.value(candidate, i) for i in self.scores[candidate]]
        lasted = math.inf if candidate not in self.dropped else self.dropped[candidate]
        return (lasted, self.sign() * sum(values) / len(values))

    def leader(self, upto: int | None = None) -> str:
        """The survivor (anchors included) with the best mean over the first ``upto``
        instances (ties: the earlier candidate); under ``ttts``, the best fitted effect."""
        if self.rule == "ttts" and upto is None:
            effect, _, _ = self.estimates()
            return max(self.candidates, key=lambda c: (effect[c], -self.candidates.index(c)))
        upto = self.done_instances() if upto is None else upto
        alive = self.alive
        if upto == 0:
            return alive[0]
        return max(alive, key=lambda c: (self.sign() * self.mean(c, upto),
                                         -self.candidates.index(c)))

    # --- the decision rule ----------------------------------------------------------------

    @property
    def horizon(self) -> int:
        """The most instances this race can reach: every round after the opening ones runs
        the anchors and at least two contenders (with fewer the race has ended)."""
        k, a = len(self.candidates), len(self.anchors)
        after = max(0, self.budget - self.first * k) // (a + 2)
        return max(self.first, min(self.instances, self.first + after))

    def level(self, n: int) -> float:
        """The level of the elimination test after ``n`` instances: what the spending
        function assigns to the look at n over the horizon (the looks' levels add up to at most
        ``alpha``)."""
        h = self.horizon
        if n > h:
            return 0.0
        spent = spent_alpha(self.alpha, n / h)
        return spent if n <= self.first else spent - spent_alpha(self.alpha, (n - 1) / h)

    def advance(self) -> list[str]:
        """Apply every elimination the recorded runs allow (see :meth:`_advance_frace` and
        :meth:`_advance_halving`); returns the candidates dropped."""
        if self.rule == "ttts":
            return []
        return self._advance_halving() if self.rule == "halving" else self._advance_frace()

    def estimates(self) -> tuple[dict[str, float], dict[str, int], float]:
        """The additive model value = candidate effect + instance effect, fitted by
        alternating means over every recorded run (diverged runs at their instance's worst
        value): each candidate's effect in the metric's direction, its run count, and the
        residual spread."""
        s = self.sign()
        cells = [(c, i, s * self.value(c, i)) for c in self.candidates for i in self.scores[c]]
        effect = {c: 0.0 for c in self.candidates}
        inst: dict[int, float] = {}
        for _ in range(20):
            by_i: dict[int, list[float]] = {}
            for c, i, v in cells:
                by_i.setdefault(i, []).append(v - effect[c])
            inst = {i: sum(v) / len(v) for i, v in by_i.items()}
            by_c: dict[str, list[float]] = {c: [] for c in self.candidates}
            for c, i, v in cells:
                by_c[c].append(v - inst[i])
            effect = {c: (sum(v) / len(v) if v else -math.inf) for c, v in by_c.items()}
        resid = [v - effect[c] - inst[i] for c, i, v in cells]
        dof = len(cells) - len(self.candidates) - len(inst) + 1
        spread = math.sqrt(sum(r * r for r in resid) / dof) if dof > 0 else 1.0
        counts = {c: len(self.scores[c]) for c in self.candidates}
        return effect, counts, max(spread, 1e-12)

    def _ttts_pair(self) -> tuple[str, str]:
        """Top-two Thompson sampling: a draw of every candidate's effect from its posterior
        (normal, the residual spread over √runs) names a leader; further draws until another
        candidate leads name the challenger (seeded by the runs so far: deterministic)."""
        import random

        effect, counts, spread = self.estimates()
        rng = random.Random(f"ttts/{self.runs}/{len(self.candidates)}")
        names = list(self.candidates)

        def draw() -> str:
            return max(names, key=lambda c: rng.gauss(effect[c],
                                                       spread / math.sqrt(max(1, counts[c]))))
        leader = draw()
        for _ in range(100):
            other = draw()
            if other != leader:
                return leader, other
        ranked = sorted(names, key=lambda c: -effect[c])
        return leader, ranked[0] if ranked[0] != leader else ranked[1]

    def _advance_halving(self) -> list[str]:
        """Successive halving: when every survivor has the instances of the current round,
        keep the better half (rounded up) by paired mean over those instances (ties: the
        earlier candidate); the last round keeps its two to the end."""
        out: list[str] = []
        s = self.sign()
        while True:
            r = self._round()
            if r + 1 >= len(self.schedule):
                return out
            target, keep = self.schedule[r][0], self.schedule[r + 1][1]
            if self.done_instances() < target:
                return out
            alive = self.alive
            ranked = sorted(alive, key=lambda c: (-s * self.mean(c, target),
                                                  self.candidates.index(c)))
            for c in ranked[keep:]:
                self.dropped[c] = target
                out.append(c)
            self.tested = target

    def _round(self) -> int:
        """The halving round under way: the one whose survivor count the race has reached."""
        alive = len(self.alive)
        return max((r for r, (_, k) in enumerate(self.schedule) if k >= alive), default=0)

    def _advance_frace(self) -> list[str]:
        """Run every elimination test the recorded runs allow, in order of instance count —
        the test after ``first`` instances, then one after each further instance — each on
        the instances up to that count; returns the candidates dropped. A resumed race
        replays its stored runs through the same sequence of tests, so it decides the same."""
        out: list[str] = []
        while len(self.contenders) >= 2:
            m = max(self.first, self.tested + 1)
            if m > self.done_instances():
                break
            out += self._test(m)
            self.tested = m
        return out

    def _test(self, n: int) -> list[str]:
        contenders = self.contenders
        level = self.level(n)
        if level <= 0.0:
            return []
        s = self.sign()
        if len(contenders) == 2:
            a, b = contenders
            out = self._two_left(a, b, n, level)
        else:
            table = [[s * self.scores[c][i] for c in contenders] for i in range(n)]
            worse = friedman_drop(table, level)
            out = [c for c, w in zip(contenders, worse, strict=True) if w]
        for c in out:
            self.dropped[c] = n
        return out

    def _two_left(self, a: str, b: str, n: int, level: float) -> list[str]:
        """The two-sided paired t-test of two contenders over the first ``n`` instances: the
        worse one, if it rejects at ``level`` (a diverged run only on one side decides)."""
        s = self.sign()
        xa = [s * self.scores[a][i] for i in range(n)]
        xb = [s * self.scores[b][i] for i in range(n)]
        bad_a, bad_b = any(math.isinf(v) for v in xa), any(math.isinf(v) for v in xb)
        if bad_a or bad_b:
            return [a] if bad_a and not bad_b else [b] if bad_b and not bad_a else []
        if not paired_two_sided(xa, xb) < level:
            return []
        return [b] if sum(xa) > sum(xb) else [a]

    def end(self) -> RaceEnd:
        n = self.done_instances()
        if self.rule == "ttts":
            if n < self.schedule[0][0]:
                return RaceEnd.RUNNING
            top = max(i for s in self.scores.values() for i in s) + 1
            if top >= self.instances:
                return RaceEnd.INSTANCES
            return RaceEnd.BUDGET if self.runs + 2 > self.budget else RaceEnd.RUNNING
        if self.rule == "halving":
            r = self._round()
            if len(self.alive) <= 1:
                return RaceEnd.ONE_LEFT
            if r == len(self.schedule) - 1 and n >= self.schedule[r][0]:
                return RaceEnd.ROUNDS if n < self.instances else RaceEnd.INSTANCES
            return RaceEnd.RUNNING
        if len(self.contenders) <= 1 and n >= min(self.first, self.instances):
            return RaceEnd.ONE_LEFT
        if n >= self.instances:
            return RaceEnd.INSTANCES
        if self.runs + len(self.alive) > self.budget:
            return RaceEnd.BUDGET
        return RaceEnd.RUNNING

    def next_round(self) -> list[tuple[str, int]]:
        """The runs of the next round, (candidate, instance): the ``first`` instances for every
        candidate at the start, then one instance for the survivors — nothing once the race
        ended. Runs already recorded are not asked for again."""
        self.advance()
        if self.end() is not RaceEnd.RUNNING:
            return []
        n = self.done_instances()
        if self.rule == "ttts":
            if n < self.schedule[0][0]:
                return [(c, i) for i in range(n, self.schedule[0][0]) for c in self.alive
                        if i not in self.scores[c]]
            top = max(i for s in self.scores.values() for i in s) + 1
            return [(c, top) for c in self._ttts_pair()]
        if self.rule == "halving":
            upto = self.schedule[self._round()][0]
            return [(c, i) for i in range(n, upto) for c in self.alive
                    if i not in self.scores[c]]
        upto = self.first if n < self.first else n + 1
        if n < self.first:  # the opening rounds as one batch, if the budget allows them
            affordable = (self.budget - self.runs) // max(1, len(self.alive))
            upto = min(upto, n + max(1, affordable))
        return [(c, i) for i in range(n, min(upto, self.instances)) for c in self.alive
                if i not in self.scores[c]]

    def winner(self) -> str:
        return self.leader()


def halving_schedule(candidates: int, first: int, instances: int, budget: int
                     ) -> list[tuple[int, int]]:
    """Successive halving's rounds for a race: ``(instances every survivor has at the round's
    end, survivors in the round)``. Survivors halve (rounded up) down to two: 9 → 5 → 3 → 2.
    The first round gives everyone ``first`` instances (fewer, down to 2, where the budget
    would leave a later round none); each later round spends an equal share of what the budget
    has left on its survivors (at least one more instance each), and a round that cannot get
    one is not planned. A function of the race's settings only, so a resumed race plans the
    same rounds.

        >>> halving_schedule(9, 3, 30, 48)
        [(3, 9), (4, 5), (6, 3), (11, 2)]
        >>> halving_schedule(9, 3, 30, 36)     # the opening shortened to 2 instances
        [(2, 9), (3, 5), (5, 3), (8, 2)]
    """
    sizes = [candidates]
    while sizes[-1] > 2:
        sizes.append(math.ceil(sizes[-1] / 2))
    reach = min(first, instances)
    while reach > 2 and reach * candidates + sum(sizes[1:]) > budget:
        reach -= 1    # an opening that leaves every later round at least one instance
    rounds = [(reach, candidates)]
    used = reach * candidates
    for r in range(1, len(sizes)):
        left = budget - used
        share = left // ((len(sizes) - r) * sizes[r])
        target = min(instances, rounds[-1][0] + share)
        if share < 1 or target == rounds[-1][0]:
            break
        used += sizes[r] * (target - rounds[-1][0])
        rounds.append((target, sizes[r]))
    return rounds


def simulate(means: Sequence[float], noise: float, *, seed: int, mode: str = "max",
             diverge: float = 0.0, **race_options: Any) -> Race:
    """Run a race on a synthetic objective: candidate i scores ``means[i]`` plus Gaussian noise
    of standard deviation ``noise`` on each instance, with a shared instance effect of the same
    spread (common random numbers: each instance is easier or harder for everyone); the
    candidates are named ``c0``, ``c1``, ... (``anchors`` among ``race_options`` names them
    so); each run diverges (nan) with probability ``diverge``. For the tests; the whole
    decision stage is simulated by
    :func:`metasam.decision.confirmation.simulate_decision`."""
    import random

    rng = random.Random(seed)
    names = [f"c{i}" for i in range(len(means))]
    race = Race(names, mode=mode, **race_options)
    effects: dict[int, float] = {}
    while True:
        batch = race.next_round()
        if not batch:
            return race
        for name, instance in batch:
            effect = effects.setdefault(instance, rng.gauss(0.0, noise))
            value = means[names.index(name)] + effect + rng.gauss(0.0, noise)
            if diverge and rng.random() < diverge:
                value = math.nan
            race.record(name, instance, value)
