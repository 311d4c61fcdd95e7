"""Accuracy and cost together: the cost-aware score a study can rank by, and the Pareto front
of accuracy against gradient evaluations that ``best`` and ``report`` show.

Cost is counted in forward/backward passes (``grad_evals``, as made: a scheduled member's plain
steps cost one). The score of ``cost: {weight: w}`` is ``metric − w·p`` for a maximized metric
(``metric + w·p`` for a minimized one), with p the run's passes per step so far — 1 for SGD,
2 for SAM, 1 + n for a member, less with a schedule — so that w is the metric a study gives up
for one more pass per step, and trials at the same epoch compare fairly (ASHA's rungs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from metasam.errors import ConfigError
from metasam.tuning.record import TrialRecord


def cost_score(metrics: dict[str, Any], metric: str, mode: str, weight: float) -> float:
    """The cost-aware score of one report (``grad_evals`` and ``steps`` so far)."""
    passes = metrics["grad_evals"] / max(1, metrics["steps"])
    value = float(metrics[metric])
    return value - weight * passes if mode == "max" else value + weight * passes


@dataclass(frozen=True)
class FrontPoint:
    number: int
    value: float        # the study's metric (not the cost-aware score)
    grad_evals: int     # forward/backward passes of the whole run
    label: str


def pareto_front(study: optuna.Study, metric: str, mode: str) -> list[FrontPoint]:
    """The full-budget trials no other full-budget trial beats on both the metric and the
    gradient evaluations, cheapest first."""

    points = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.of(trial)
        value, evals = rec.result(metric), rec.result("grad_evals")
        if rec.counts and rec.full_budget and value is not None and evals is not None:
            points.append(FrontPoint(trial.number, float(value), int(evals),
                                     TrialRecord.of(trial).name))
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    front = []
    for p in sorted(points, key=lambda p: (p.grad_evals, -p.value if mode == "max" else p.value,
                                           p.number)):
        if not front or better(p.value, front[-1].value):
            front.append(p)
    return front


def pick(front: list[FrontPoint], max_cost: float) -> FrontPoint:
    """The best point of the front within ``max_cost`` gradient evaluations."""
    affordable = [p for p in front if p.grad_evals <= max_cost]
    if not affordable:
        cheapest = front[0].grad_evals if front else None
        if not front:
            raise ConfigError("--max-cost", "the study has no full-budget trial")
        raise ConfigError("--max-cost", f"no full-budget trial costs at most {max_cost:g} "
                          "gradient evaluations", f"≥ {cheapest} (the cheapest on the front)")
    return affordable[-1]  # the front improves with cost
