"""Summary statistics, confidence intervals and Welch's t-test (comparison tables, the
confirmation stage of a study)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


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
