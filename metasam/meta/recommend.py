"""A zero-shot answer: the portfolio ranked for a new task from its descriptor and the
knowledge base, for the price of the descriptor (two epochs of plain SGD and a few Hessian
probes: at most 0.2 full-run equivalents of a ten-epoch run).

Candidates are ranked by their weighted mean *normalized* score (per task, 0 the worst
candidate's mean test accuracy, 1 the best's), so that a task with large, noisy differences
does not outweigh the rest; each line shows the weighted mean gain over SAM in points beside
it.

The base's tasks are compared with the new one on the descriptor's features, standardized over
the base (:class:`~metasam.meta.descriptors.TaskDescriptor`). A base task is weighted by the
Gaussian kernel exp(−½(d/h)²) of its distance d, h the median distance between a base task
and its nearest neighbour in the base (how far apart tasks that count as alike are). The pick
is the best-ranked candidate, ties to the portfolio's order. When the nearest base task is
more than ``FAR`` × h away, no task is similar: the ranking falls back to the unweighted mean
over all tasks (the presets' global ranking) and says so.

    >>> from metasam.meta.base import shipped_base
    >>> base = shipped_base()
    >>> rec = recommend(base, base.tasks[0].descriptor)
    >>> rec.pick in base.candidates and rec.nearest[0][0] == base.tasks[0].name
    True
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from metasam.meta.base import KnowledgeBase, TaskEntry
from metasam.meta.descriptors import TaskDescriptor

FAR = 2.0          # nearest task beyond FAR bandwidths: no similar prior
REFERENCE = "sam"  # gains are measured against SAM at its default


@dataclass(frozen=True)
class Recommendation:
    """The pick, the ranking behind it and the evidence (nearest tasks first)."""

    pick: str
    spec: dict[str, Any]
    ranking: list[tuple[str, float, float]]           # (candidate, weighted gain, spread)
    nearest: list[tuple[str, float, float, float]]    # (task, distance/h, weight, pick's gain)
    similar: bool                                     # False: the global ranking

    def lines(self, shown: int = 3) -> list[str]:
        out = []
        head = ("from the tasks most like this one" if self.similar else
                "no task of the knowledge base is like this one (nearest "
                f"{self.nearest[0][1]:.1f} bandwidths away, beyond {FAR:g}): the global "
                "ranking over all its tasks")
        out.append(f"recommend: {self.pick} — {head}")
        for name, gain, spread in self.ranking:
            mark = "  <- pick" if name == self.pick else ""
            out.append(f"  {name:<24} {100 * gain:+.2f} points over SAM at its default "
                       f"(spread across tasks {100 * spread:.2f}){mark}")
        out.append("nearest tasks (distance in bandwidths, weight, the pick's gain over SAM "
                   "on its seeds):")
        for task, distance, weight, gain in self.nearest[:shown]:
            out.append(f"  {task:<24} {distance:5.2f}  {weight:5.2f}  {100 * gain:+.2f} points")
        return out


def _standardized(vectors: list[list[float]], target: list[float]
                  ) -> tuple[list[list[float]], list[float]]:
    dims = len(target)
    means = [statistics.fmean(v[j] for v in vectors) for j in range(dims)]
    sds = [statistics.pstdev([v[j] for v in vectors]) or 1.0 for j in range(dims)]
    return ([[(v[j] - means[j]) / sds[j] for j in range(dims)] for v in vectors],
            [(target[j] - means[j]) / sds[j] for j in range(dims)])


def normalized_scores(task: TaskEntry) -> dict[str, float]:
    """Each candidate's mean test accuracy on ``task`` scaled to [0, 1] between the task's worst
    and best candidate (auto-sklearn's normalized score): a task whose candidates differ by ten
    points weighs no more in the ranking than one where they differ by a tenth."""
    means = {c: statistics.fmean(v) for c, v in task.test.items()}
    low, high = min(means.values()), max(means.values())
    return {c: (m - low) / (high - low) if high > low else 1.0 for c, m in means.items()}


def recommend(base: KnowledgeBase, descriptor: TaskDescriptor) -> Recommendation:
    """Rank the base's candidates for a task with ``descriptor`` (see the module)."""
    tasks = base.tasks
    z, target = _standardized([t.descriptor.vector() for t in tasks], descriptor.vector())
    dist = [math.dist(target, v) for v in z]
    if len(z) > 1:
        neighbours = [min(math.dist(a, b) for j, b in enumerate(z) if j != i)
                      for i, a in enumerate(z)]
        h = statistics.median(neighbours) or 1.0
    else:
        h = 1.0
    similar = min(dist) <= FAR * h
    kernel = [math.exp(-0.5 * (d / h) ** 2) for d in dist] if similar else [1.0] * len(tasks)
    total = sum(kernel) or 1.0
    weights = [k / total for k in kernel]
    scores = [normalized_scores(t) for t in tasks]
    ranking, rank_score = [], {}
    for c in base.candidates:
        gains = [t.gain(c, REFERENCE) for t in tasks]
        mean = sum(w * g for w, g in zip(weights, gains, strict=True))
        spread = math.sqrt(sum(w * (g - mean) ** 2 for w, g in zip(weights, gains, strict=True)))
        ranking.append((c, mean, spread))
        rank_score[c] = sum(w * sc[c] for w, sc in zip(weights, scores, strict=True))
    order = {c: i for i, c in enumerate(base.candidates)}
    ranking.sort(key=lambda r: (-round(rank_score[r[0]], 12), order[r[0]]))
    pick = ranking[0][0]
    nearest = sorted(((t.name, d / h, w, t.gain(pick, REFERENCE))
                      for t, d, w in zip(tasks, dist, weights, strict=True)),
                     key=lambda r: r[1])
    return Recommendation(pick, base.specs[pick], ranking, nearest, similar)


def recommended_export(config: Any, rec: Any, descriptor: Any) -> dict[str, Any]:
    """The pick as the export ``metasam best`` writes (no study ran: no trial, no verdict)."""
    from metasam.optim.loading import FORMAT
    from metasam.training.trainer import base_of

    train = config.train
    return {"format": FORMAT, "name": rec.pick, "spec": rec.spec,
            "base_optimizer": base_of(train),
            "schedule": {"name": train.schedule, "epochs": train.epochs,
                         "milestones": train.resolved_milestones(), "gamma": train.gamma},
            "batch_size": train.batch_size, "study": config.name, "trial": None,
            "label": rec.pick, "metric": config.metric, "mode": config.mode, "value": None,
            "epochs": train.epochs, "dataset": train.dataset, "model": train.model,
            "verdict": None, "recommended": {
                "similar": rec.similar, "descriptor": descriptor.to_dict(),
                "ranking": [{"name": n, "gain": g, "spread": s} for n, g, s in rec.ranking],
                "nearest": [{"task": t, "distance": d, "weight": w, "gain": g}
                            for t, d, w, g in rec.nearest]}}
