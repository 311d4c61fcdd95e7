"""Selection with what earlier tasks taught: a race's pick by posterior mean.

A ten-run race cannot tell apart candidates a few tenths of a point apart: on a validation fold
of a few hundred examples one run moves by more than that. What the benchmark tasks measured —
which of the candidates named in advance tends to be better, and by how much — is evidence too.
:func:`shrunk_pick` combines the two by the normal–normal model: the difference δ_c between
candidate c and the portfolio's first candidate has a prior N(m_c, τ²) (m_c the mean difference
over earlier tasks, τ its spread from task to task), the race measures it by the paired mean
d̄_c over the k_c instances c shares with the first, with standard error s/√k_c (s the race's
pooled spread of paired differences), and the pick is the candidate with the largest posterior
mean

    (m_c/τ² + d̄_c·k_c/s²) / (1/τ² + k_c/s²)          (0 for the first candidate).

Where the race's evidence is precise (a large validation set: small s) it decides; where it is
not, the prior does. ``scripts/quick_simulation.py`` compares this rule with the race's plain
pick on the benchmark tasks' truths and on tasks where the prior is wrong (docs/search.md §9).

    >>> from metasam.decision.racing import Race
    >>> race = Race(["a", "b"], first=2, instances=4, budget=8)
    >>> for i, (x, y) in enumerate([(0.90, 0.91), (0.92, 0.92), (0.91, 0.93)]):
    ...     race.record("a", i, x); race.record("b", i, y)
    >>> shrunk_pick(race, [0.0, -0.005], 0.003)     # b leads by 0.01 on three noisy instances
    'a'
    >>> shrunk_pick(race, [0.0, -0.005], 0.05)      # a vague prior: the race decides
    'b'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from metasam.decision.racing import Race


def paired(race: Race, a: str, b: str) -> list[float]:
    """``b − a`` on the instances both ran (finite runs; larger is better in either mode)."""
    shared = sorted(set(race.scores[a]) & set(race.scores[b]))
    return [race.sign() * (race.scores[b][i] - race.scores[a][i]) for i in shared
            if math.isfinite(race.scores[a][i]) and math.isfinite(race.scores[b][i])]


def pooled_spread(race: Race) -> float:
    """The pooled standard deviation of the paired differences to the first candidate (nan
    when no candidate shares two finite instances with it)."""
    first = race.candidates[0]
    num = den = 0.0
    for c in race.candidates[1:]:
        d = paired(race, first, c)
        if len(d) >= 2:
            num += (len(d) - 1) * statistics.variance(d)
            den += len(d) - 1
    return math.sqrt(num / den) if den else math.nan


def posterior_means(race: Race, prior: Sequence[float], tau: float | Sequence[float]
                    ) -> dict[str, float]:
    """Each candidate's posterior mean difference to the first (see the module's docstring);
    ``prior[i]`` is candidate i's prior mean difference (``prior[0]`` is 0) and ``tau`` the
    prior's spread, one for all or one per candidate (``math.inf``: no prior, the race's mean
    decides; with no shared instance either, the prior mean stands)."""
    taus = [float(tau)] * len(prior) if isinstance(tau, (int, float)) else list(tau)
    if not len(prior) == len(taus) == len(race.candidates):
        raise ValueError(f"prior: {len(prior)} means and {len(taus)} spreads for "
                         f"{len(race.candidates)} candidates")
    first = race.candidates[0]
    s = pooled_spread(race)
    out = {first: 0.0}
    for c, m, t in zip(race.candidates[1:], prior[1:], taus[1:], strict=True):
        d = paired(race, first, c)
        if not d:
            out[c] = float(m)
        elif math.isinf(t) or not (s > 0):
            out[c] = statistics.fmean(d)
        else:
            precision = len(d) / s**2
            out[c] = (m / t**2 + statistics.fmean(d) * precision) / (1 / t**2 + precision)
    return out


def shrunk_pick(race: Race, prior: Sequence[float], tau: float | Sequence[float]) -> str:
    """The candidate with the largest posterior mean difference to the first (ties: the
    earlier candidate)."""
    means = posterior_means(race, prior, tau)
    return max(race.candidates, key=lambda c: (means[c], -race.candidates.index(c)))
