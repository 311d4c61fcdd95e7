"""What transfers from prior tasks: a zero-shot portfolio of specs, and bounding boxes of the
ranges that held the winners.

The portfolio minimizes the (similarity-weighted) average over prior tasks of the best
normalized regret among its members — greedily, adding the member that lowers it most (the
classic approximation for this submodular objective: within 1 − 1/e of the optimum).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def task_kernel(target: Sequence[float], priors: Sequence[Sequence[float]],
                bandwidth: float | None = None) -> list[float]:
    """Gaussian-kernel similarity exp(−½ (d / h)²) of each prior task to the target, d the
    distance between descriptors with every feature standardized over the priors and the
    target; ``h`` by default the median of those distances (the median heuristic: scale-free
    in the number of features and tasks, so the nearer half of the priors score ≥ e^−½)."""
    rows = [list(target), *[list(p) for p in priors]]
    dims = len(rows[0])
    means = [sum(r[j] for r in rows) / len(rows) for j in range(dims)]
    stds = [math.sqrt(sum((r[j] - means[j]) ** 2 for r in rows) / len(rows)) or 1.0
            for j in range(dims)]
    z = [[(r[j] - means[j]) / stds[j] for j in range(dims)] for r in rows]
    distances = [math.sqrt(sum((a - b) ** 2 for a, b in zip(z[0], p, strict=True)))
                 for p in z[1:]]
    if bandwidth is None:
        ordered = sorted(distances)
        middle = len(ordered) // 2
        bandwidth = (ordered[middle] if len(ordered) % 2 else
                     0.5 * (ordered[middle - 1] + ordered[middle])) if ordered else 1.0
    bandwidth = bandwidth or 1.0  # every prior at the target's descriptor
    return [math.exp(-0.5 * (d / bandwidth) ** 2) for d in distances]


# A prior task at least this similar (:func:`task_kernel`: within one bandwidth) is "similar".
SIMILAR = math.exp(-0.5)


def similarity_weights(target: Sequence[float], priors: Sequence[Sequence[float]],
                       bandwidth: float | None = None) -> list[float]:
    """:func:`task_kernel`'s similarities normalized to sum to 1."""
    return normalized(task_kernel(target, priors, bandwidth))


def normalized(kernel: Sequence[float]) -> list[float]:
    """Similarities as weights that sum to 1 (equal weights if every similarity is 0)."""
    total = sum(kernel)
    return [k / total for k in kernel] if total > 0 else [1 / len(kernel)] * len(kernel)


def greedy_portfolio(regret: Sequence[Sequence[float]], k: int,
                     weights: Sequence[float] | None = None) -> list[int]:
    """``k`` candidate indices chosen greedily to minimize Σ_t w_t · min_{c ∈ P} regret[t][c]
    (``regret[t][c]``: task t, candidate c; NaN = not evaluated there, counted as 1)."""
    tasks = len(regret)
    if tasks == 0:
        return []
    candidates = len(regret[0])
    w = list(weights) if weights is not None else [1 / tasks] * tasks

    def value(t: int, c: int) -> float:
        r = regret[t][c]
        return 1.0 if r is None or math.isnan(r) else r

    chosen: list[int] = []
    best = [math.inf] * tasks
    def loss(c: int, best: list[float]) -> float:
        return sum(w[t] * min(best[t], value(t, c)) for t in range(tasks))

    for _ in range(min(k, candidates)):
        pick = min((c for c in range(candidates) if c not in chosen),
                   key=lambda c: (loss(c, best), c))
        chosen.append(pick)
        best = [min(best[t], value(t, pick)) for t in range(tasks)]
    return chosen


def bounding_box(points: Sequence[dict[str, float]], log_keys: Sequence[str] = (),
                 margin: float = 0.0) -> dict[str, tuple[float, float]]:
    """Per parameter, the smallest range holding every point (a prior winner), widened by
    ``margin`` of its width on each side (in log space for ``log_keys``, as the search
    samples them)."""
    box: dict[str, tuple[float, float]] = {}
    for key in sorted({k for p in points for k in p}):
        values = [p[key] for p in points if key in p]
        if key in log_keys:  # widened by a factor: the bounds themselves stay exact
            low, high = min(values), max(values)
            factor = math.exp(margin * (math.log(high) - math.log(low)))
            box[key] = (low / factor, high * factor)
        else:
            low, high = min(values), max(values)
            pad = margin * (high - low)
            box[key] = (low - pad, high + pad)
    return box
