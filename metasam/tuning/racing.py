"""Racing candidates over paired instances (F-Race, Birattari et al. 2002; irace's rule).

A race decides among a few candidates whose scores are noisy: every round evaluates the
surviving candidates on the next instance (a training seed and a validation fold: common random
numbers, so every comparison is paired). Once ``first`` instances are in, each round tests:

- with three or more survivors, Friedman's test over the instances (ranks within each
  instance: robust to a diverged run, and its post-hoc comparisons pool the rank variance of
  all candidates, so they have power after a few instances); when it rejects, every candidate
  whose rank sum is worse than the best one's by more than Conover's critical difference drops
  out;
- with two, the one-sided paired t-test of the trailing candidate against the leader.

The race ends when one candidate remains, when the instances run out, or when the next round
would overrun the budget (in runs). The winner is the survivor with the best mean over the
instances the survivors share.

This module is pure bookkeeping: it says what to run next and reads what was run (from the
study's storage, by :mod:`metasam.tuning.decision`); it runs nothing itself, so a race resumes
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

from metasam.stats import PairedDifference, friedman_conover


class RaceEnd(str, Enum):
    """Why a race stopped (or that it goes on)."""

    RUNNING = "running"
    ONE_LEFT = "one candidate left"      # and its advantage over the anchors is settled
    INSTANCES = "all instances used"
    BUDGET = "racing budget spent"


@dataclass
class Race:
    """The state of a race among ``candidates`` (hashable ids), maximizing or minimizing.

    ``first``: instances every candidate runs before the first test; ``instances``: the most
    instances; ``budget``: the most runs in all; ``alpha``: the level of the elimination tests.
    """

    candidates: Sequence[str]
    mode: str = "max"
    first: int = 3
    instances: int = 20
    budget: int = 60
    alpha: float = 0.05
    anchors: frozenset[str] = frozenset()   # never dropped (see the module's docstring)
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
        for c in self.candidates:
            self.scores.setdefault(c, {})

    # --- what happened --------------------------------------------------------------------

    @property
    def alive(self) -> list[str]:
        return [c for c in self.candidates if c not in self.dropped]

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

    def mean(self, candidate: str, upto: int) -> float:
        values = [self.scores[candidate][i] for i in range(upto)]
        return sum(values) / len(values)

    def leader(self, upto: int | None = None) -> str:
        """The survivor with the best mean over the first ``upto`` instances (ties: the
        earlier candidate)."""
        upto = self.done_instances() if upto is None else upto
        alive = self.alive
        if upto == 0:
            return alive[0]
        return max(alive, key=lambda c: (self.sign() * self.mean(c, upto),
                                         -self.candidates.index(c)))

    # --- the decision rule ----------------------------------------------------------------

    def advance(self) -> list[str]:
        """Run every elimination test the recorded runs allow, in order of instance count —
        the test after ``first`` instances, then one after each further instance — each on
        the instances up to that count; returns the candidates dropped. A resumed race
        replays its stored runs through the same sequence of tests, so it decides the same."""
        out: list[str] = []
        while len(self.alive) >= 2:
            m = max(self.first, self.tested + 1)
            if m > self.done_instances():
                break
            out += self._test(m)
            self.tested = m
        return out

    def _test(self, n: int) -> list[str]:
        alive = self.alive
        if len(self.contenders) < 2:
            return []  # decided: only the verdict's runs go on
        if len(alive) == 2:
            best = self.leader(n)
            other = next(c for c in alive if c != best)
            out = [other] if self.p_worse(other, best, n) < self.alpha else []
        else:
            s = self.sign()
            table = [[s * self.scores[c][i] for c in alive] for i in range(n)]
            worse = friedman_conover(table, self.alpha)
            out = [c for c, w in zip(alive, worse, strict=True) if w]
        out = [c for c in out if c not in self.anchors]
        for c in out:
            self.dropped[c] = n
        return out

    @property
    def contenders(self) -> list[str]:
        """The survivors that can still win: the non-anchors, and an anchor that leads."""
        alive = self.alive
        leader = self.leader() if alive else None
        return [c for c in alive if c not in self.anchors or c == leader]

    def settled(self) -> bool:
        """Is the leader significantly better than every anchor it leads (one-sided paired
        t-test over the instances they share)?"""
        n = self.done_instances()
        if n < 2:
            return False
        best = self.leader(n)
        return all(self.p_worse(a, best, n) < self.alpha for a in self.alive
                   if a in self.anchors and a != best)

    def p_worse(self, candidate: str, than: str, upto: int) -> float:
        """One-sided paired p-value that ``candidate`` is worse than ``than`` over the first
        ``upto`` instances."""
        s = self.sign()
        a = [s * self.scores[than][i] for i in range(upto)]
        b = [s * self.scores[candidate][i] for i in range(upto)]
        if any(math.isinf(v) for v in a + b):
            # a diverged run: worse than any finite value, whatever the spread
            finite_a = all(math.isfinite(v) for v in a)
            return 0.0 if finite_a and any(v == -math.inf for v in b) else 1.0
        return PairedDifference.of(a, b).p_greater

    def end(self) -> RaceEnd:
        if len(self.alive) == 1 or (len(self.contenders) == 1
                                    and self.done_instances() >= self.first and self.settled()):
            return RaceEnd.ONE_LEFT
        n = self.done_instances()
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
        upto = self.first if n < self.first else n + 1
        if n < self.first:  # the opening rounds as one batch, if the budget allows them
            affordable = (self.budget - self.runs) // max(1, len(self.alive))
            upto = min(upto, n + max(1, affordable))
        return [(c, i) for i in range(n, min(upto, self.instances)) for c in self.alive
                if i not in self.scores[c]]

    def winner(self) -> str:
        return self.leader()


def simulate(means: Sequence[float], noise: float, *, seed: int, mode: str = "max",
             **race_options: Any) -> Race:
    """Run a race on a synthetic objective: candidate i scores ``means[i]`` plus Gaussian noise
    of standard deviation ``noise`` on each instance, with a shared instance effect (common
    random numbers: each instance is easier or harder for everyone); the candidates are named
    ``c0``, ``c1``, ... (``anchors`` among ``race_options`` names them so). For the tests and
    ``scripts/race_simulation.py``."""
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
            race.record(name, instance, means[names.index(name)] + effect
                        + rng.gauss(0.0, noise))
