"""Summary statistics, confidence intervals, Welch's t-test (comparison tables) and paired
comparisons over shared instances with their power (the race of a study and its verdicts)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from scipy import stats


@lru_cache(maxsize=4096)
def _range_quantile(level: float, k: int, df: int) -> float:
    return float(stats.studentized_range.ppf(level, k, df))


@lru_cache(maxsize=4096)
def _t_quantile(level: float, df: float) -> float:
    return float(stats.t.ppf(level, df))


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n − 1)
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        n = len(values)
        mean = sum(values) / n if n else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n)

    def ci_halfwidth(self, level: float = 0.95) -> float:
        """Half-width of the two-sided Student-t confidence interval of the mean (nan for
        fewer than two values)."""
        if self.n < 2:
            return math.nan
        return float(stats.t.ppf(0.5 + level / 2, self.n - 1)) * self.std / math.sqrt(self.n)


def welch_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided p-value of Welch's t-test for mean(a) > mean(b) (unequal variances).

    Two samples with zero variance and equal means give p = 1; a degenerate comparison with
    fewer than two values per side gives p = nan.
    """
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if max(a) == min(a) and max(b) == min(b):
        return 0.0 if a[0] > b[0] else 1.0
    with warnings.catch_warnings():
        # scipy warns when one side's values are all equal (e.g. the same test accuracy for
        # every seed): Welch's statistic is still defined there, the other side's variance
        # carries the standard error.
        warnings.filterwarnings("ignore", message="Precision loss occurred",
                                category=RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(result.pvalue)


# --- paired comparisons over shared instances (the race and its verdicts) ---------------------

@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` over the instances both were evaluated on (common random numbers).

    ``mean`` and ``ci95`` (half-width of the two-sided Student-t interval) are in the metric's
    units; ``p_greater`` is the one-sided p-value for mean(a − b) > 0; ``p_improvement`` the
    share of instances where a beats b (ties count half: Bouthillier et al. 2021's probability
    of outperforming); ``detectable`` the smallest true difference the one-sided test at
    ``alpha`` detects with probability ``power`` at this ``n`` and this spread of the
    differences (``nan`` for fewer than two instances). Differences that are all the same (a
    zero spread, or one at rounding level) are no evidence of anything: ``p_greater`` is 1.

    With ``overlap`` = n_val/n_train > 0 the test is the corrected resampled t-test (Nadeau &
    Bengio 2003) for instances whose training sets overlap: the variance of the mean is
    sd²·(1/n + overlap) instead of sd²/n (overlapping training sets correlate the instances'
    differences); with 0 it is the paired t-test.
    """

    mean: float
    ci95: float
    sd: float
    n: int
    p_greater: float
    p_improvement: float
    detectable: float
    overlap: float = 0.0

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float], alpha: float = 0.05,
           power: float = 0.8, overlap: float = 0.0) -> PairedDifference:
        if len(a) != len(b):
            raise ValueError(f"paired samples of different lengths: {len(a)} and {len(b)}")
        d = [x - y for x, y in zip(a, b, strict=True)]
        s = Summary.of(d)
        n = len(d)
        wins = sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in d)
        p_imp = wins / n if n else math.nan
        if n < 2:
            return cls(s.mean, math.nan, s.std, n, math.nan, p_imp, math.nan, overlap)
        se = s.std * math.sqrt(1.0 / n + overlap)
        if degenerate(s.std, s.mean):  # every difference the same: no evidence of a spread
            p = 1.0
        else:
            p = float(stats.t.sf(s.mean / se, n - 1))
        return cls(s.mean, _t_quantile(0.975, n - 1) * se, s.std, n, p, p_imp,
                   detectable_difference(s.std, n, alpha, power, overlap), overlap)


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8,
                          overlap: float = 0.0) -> float:
    """The smallest true mean difference a one-sided paired t-test at level ``alpha`` detects
    with probability ``power`` over ``n`` pairs whose differences spread with standard deviation
    ``sd``: (t_{1−α, n−1} + t_{power, n−1})·sd·√(1/n + overlap) (the noncentral-t power
    approximated by the central t, as in the usual sample-size formula; ``overlap`` as in
    :class:`PairedDifference`)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    df = n - 1
    return (_t_quantile(1 - alpha, df) + _t_quantile(power, df)) * sd * math.sqrt(
        1.0 / n + overlap)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; ``nan`` stays ``nan`` and does
    not count towards the number of tests)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def ranks_within(table: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per row (an instance), the ranks of its values, 1 for the largest (ties: the mean of the
    ranks they span)."""
    out = []
    for row in table:
        order = sorted(range(len(row)), key=lambda j: -row[j])
        ranks = [0.0] * len(row)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and row[order[j + 1]] == row[order[i]]:
                j += 1
            for m in range(i, j + 1):
                ranks[order[m]] = (i + j) / 2 + 1
            i = j + 1
        out.append(ranks)
    return out


def friedman(table: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Friedman's statistic (corrected for ties) and its χ² p-value for ``table`` — one row per
    instance (block), one column per candidate; larger values are better."""
    ranks = ranks_within(table)
    n, k = len(ranks), len(ranks[0])
    sums = [sum(r[j] for r in ranks) for j in range(k)]
    a = sum(v * v for r in ranks for v in r)
    c = n * k * (k + 1) ** 2 / 4
    if a == c:  # every row all tied
        return 0.0, 1.0
    t = (k - 1) * (sum(s * s for s in sums) - n * c) / (a - c)
    return float(t), float(stats.chi2.sf(t, k - 1))


# --- selection and verdicts that hold their stated error rates --------------------------------

def spent_alpha(alpha: float, fraction: float) -> float:
    """The level spent by information ``fraction`` (0 to 1) of a sequence of looks, by the
    Pocock-type spending function α·ln(1 + (e − 1)·t) (Lan & DeMets 1983). Testing look l at
    level spent(t_l) − spent(t_{l−1}) keeps the chance of *any* false rejection over all looks
    at or below ``alpha`` by the union bound, however the looks fall."""
    t = min(1.0, max(0.0, fraction))
    return alpha * math.log1p((math.e - 1.0) * t)


def friedman_drop(table: Sequence[Sequence[float]], alpha: float) -> list[bool]:
    """Which candidates (columns) are significantly worse than the best one, with the
    family-wise error of the whole test at ``alpha``: Friedman's omnibus test at ``alpha``,
    then rank-sum differences against the best candidate judged by Tukey's studentized range
    (k candidates, (n−1)(k−1) degrees of freedom) over Conover's rank variance — the range
    covers every pair at once, so comparing with the data-chosen best is corrected for
    (Conover's Student-t quantile of the pairwise test is not). Larger values are
    better."""
    n, k = len(table), len(table[0])
    if n < 2 or k < 2:
        return [False] * k
    _, p = friedman(table)
    if not p < alpha:
        return [False] * k
    ranks = ranks_within(table)
    sums = [sum(r[j] for r in ranks) for j in range(k)]
    a = sum(v * v for r in ranks for v in r)
    best = min(sums)
    df = (n - 1) * (k - 1)
    spread = (n * a - sum(s * s for s in sums)) / df
    if spread <= 0:  # the same order on every instance
        return [s > best for s in sums]
    critical = _range_quantile(1.0 - alpha, k, df) * math.sqrt(spread)
    return [s - best > critical for s in sums]


def paired_two_sided(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of mean(a − b) = 0 (``nan`` below two pairs;
    differences that are all the same, to rounding, give 1: no spread, no evidence)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return math.nan
    s = Summary.of(d)
    if degenerate(s.std, s.mean):
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def degenerate(sd: float, mean: float) -> bool:
    """A spread of differences that is zero or at rounding level relative to their mean (a
    t-statistic from it would be astronomically large and mean nothing)."""
    return not sd > 1e-9 * max(abs(mean), 1e-12)
