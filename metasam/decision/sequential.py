"""A group-sequential confirmation: looks at planned instance counts, a boundary per look from an
alpha-spending function, and a futility stop on conditional power.

A fixed-size confirmation spends all its runs even when the first half already shows it cannot
reach significance, or already has. Here the J planned instances are looked at K times (after
n_1 < … < n_K = J instances of every comparison still open). Look k rejects "the winner is no
better" when the comparison's statistic, turned into a standard-normal score z_k (the
corrected resampled t-test's one-sided p-value over the first n_k instances, p ↦ Φ⁻¹(1 − p)),
crosses the boundary c_k. The boundaries spend the level α by the Lan–DeMets O'Brien–Fleming
function

    α(t) = 2 − 2·Φ(z_{1−α/2} / √t),        t = n_k / J (the information fraction),

so that, under the null, P(cross at some look) = α: c_1 = Φ⁻¹(1 − α(t_1)) and c_k solves
P(Z_1 < c_1, …, Z_{k−1} < c_{k−1}, Z_k ≥ c_k) = α(t_k) − α(t_{k−1}) for the canonical joint
law of the scores, Corr(Z_i, Z_j) = √(t_i/t_j) (:func:`boundaries`). Early looks get very
strict boundaries, the last one nearly the fixed design's (for a one-sided α = 0.05 and two
looks at halves: 2.54 then 1.66, against 1.645 fixed): the price of stopping early is small.

A comparison also stops, for futility, when its conditional power — the chance of crossing
c_K at the last look if the trend seen so far (the drift θ̂ = z_k/√t_k) continued — is below
``FUTILITY`` (B-value form: 1 − Φ((c_K − z_k√t_k − θ̂(1 − t_k)) / √(1 − t_k))). Futility
stops are non-binding: the boundaries are computed as if they never happened, so stopping
only lowers the error rate. With several comparisons, each gets α/m (Bonferroni): the chance
that *any* claim of the family is false, over every look, is at most α (shown by simulation
in the tests, which fail when the spending is removed and each look tests at α).

The confirmation ends when every comparison has stopped (crossed, futile) or the last look is
in. It is a function of the stored runs: a resumed confirmation replays its looks and
decides the same (:func:`decide`).

    >>> [round(c, 2) for c in boundaries((0.5, 1.0), 0.05)]
    [2.54, 1.66]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from scipy import stats
from scipy.optimize import brentq

FUTILITY = 0.10     # conditional power below which a comparison stops for futility
MIN_LOOK = 4        # instances at the first look, at least (a t-test with 3 degrees of freedom)


def obrien_fleming(t: float, alpha: float) -> float:
    """The Lan–DeMets O'Brien–Fleming spending function: the level spent by information ``t``."""
    if t <= 0:
        return 0.0
    return float(2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))


def no_spending(t: float, alpha: float) -> float:
    """Every look at the full level: what repeated testing without spending does (for the
    simulations that show why the spending is needed; never used by a study)."""
    return alpha


SPENDING = {"obrien_fleming": obrien_fleming, "none": no_spending}


@lru_cache(maxsize=256)
def boundaries(fractions: tuple[float, ...], alpha: float,
               spending: str = "obrien_fleming") -> tuple[float, ...]:
    """The z boundary of each look at information ``fractions`` (increasing, the last 1) that
    spends ``alpha`` by ``spending`` (see the module's docstring). ``"none"``: each look at
    Φ⁻¹(1 − α), the naive repeated test."""
    if spending == "none":
        return tuple(float(stats.norm.isf(alpha)) for _ in fractions)
    spend = SPENDING[spending]
    out: list[float] = []
    for k, t in enumerate(fractions):
        target = spend(t, alpha)          # P(cross by look k) under the null
        if k == 0:
            out.append(float(stats.norm.isf(target)))
            continue
        cov = [[math.sqrt(min(a, b) / max(a, b)) for b in fractions[: k + 1]]
               for a in fractions[: k + 1]]
        law = stats.multivariate_normal(mean=[0.0] * (k + 1), cov=cov, seed=0,
                                         abseps=1e-7, releps=1e-7)

        def excess(c: float, law=law, target=target) -> float:
            return 1.0 - float(law.cdf([*out, c])) - target   # P(cross by look k) − spent

        out.append(float(brentq(excess, -1.0, 12.0, xtol=1e-6)))
    return tuple(out)


def looks_of(instances: int) -> tuple[int, ...]:
    """The instance counts of the looks of a J-instance confirmation: one look per
    ``MIN_LOOK`` instances, at most three, evenly spread, the last at J."""
    if instances < 2 * MIN_LOOK:
        return (instances,)
    k = min(3, instances // MIN_LOOK)
    return tuple(round(instances * (i + 1) / k) for i in range(k))


@dataclass(frozen=True)
class Look:
    """Where one comparison stands after a look: its score, the boundary, its conditional
    power, and why it stopped (``None``: it goes on)."""

    look: int            # 1-based
    instances: int
    z: float
    boundary: float
    conditional_power: float
    stopped: str | None  # "efficacy", "futility", "final" or None

    @property
    def confident(self) -> bool:
        return self.stopped == "efficacy"


def score(differences: Sequence[float], overlap: float) -> float:
    """The standard-normal score of the corrected resampled t-test of mean(d) > 0 (nan with
    fewer than two differences; 0 when they are all the same: no evidence)."""
    n = len(differences)
    if n < 2:
        return math.nan
    mean = math.fsum(differences) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in differences) / (n - 1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return 0.0
    t = mean / (sd * math.sqrt(1.0 / n + overlap))
    p = float(stats.t.sf(t, n - 1))
    return float(stats.norm.isf(min(max(p, 1e-300), 1.0 - 1e-16)))


def conditional_power(z: float, t: float, final: float) -> float:
    """The chance of crossing ``final`` at the last look if the drift seen at information
    ``t`` (z/√t) continued (B-value form); 0 or 1 at t = 1."""
    if t >= 1.0 or math.isnan(z):
        return float(z >= final) if not math.isnan(z) else 0.0
    b = z * math.sqrt(t)
    drift = z / math.sqrt(t)
    return float(stats.norm.sf((final - b - drift * (1.0 - t)) / math.sqrt(1.0 - t)))


def decide(differences: Mapping[str, Sequence[float]], looks: Sequence[int], *,
           overlap: float, alpha: float, spending: str = "obrien_fleming",
           futility: float = FUTILITY) -> dict[str, Look | None]:
    """Replay the looks over each comparison's differences (winner − other, larger is better,
    in instance order; as many as have run): each comparison's last look reached, with why it
    stopped, or ``None`` before its first look. Every comparison gets ``alpha / m``."""
    m = max(1, len(differences))
    total = looks[-1]
    fractions = tuple(n / total for n in looks)
    bounds = boundaries(fractions, alpha / m, spending)
    out: dict[str, Look | None] = {}
    for key, d in differences.items():
        state: Look | None = None
        for k, n in enumerate(looks):
            if len(d) < n:
                break
            z = score(list(d[:n]), overlap)
            last = k == len(looks) - 1
            cp = conditional_power(z, fractions[k], bounds[-1])
            if not math.isnan(z) and z >= bounds[k]:
                stopped: str | None = "efficacy"
            elif last:
                stopped = "final"
            elif cp < futility:
                stopped = "futility"
            else:
                stopped = None
            state = Look(k + 1, n, z, bounds[k], cp, stopped)
            if stopped is not None:
                break
        out[key] = state
    return out


def open_comparisons(states: Mapping[str, Look | None]) -> list[str]:
    """The comparisons that still need runs."""
    return [k for k, s in states.items() if s is None or s.stopped is None]


def next_look(states: Mapping[str, Look | None], looks: Sequence[int]) -> int | None:
    """The instance count the open comparisons need next (``None``: the confirmation has
    ended)."""
    pending = open_comparisons(states)
    if not pending:
        return None
    reached = [states[k].look if states[k] is not None else 0 for k in pending]  # type: ignore[union-attr]
    return looks[min(reached)]
