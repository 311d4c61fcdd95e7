"""Transfer into a new study: the zero-shot portfolio of prior studies' specs, evaluated first,
and the boxes of the ranges that held the winners of similar prior tasks.

The new task is described (:func:`~metasam.meta.descriptors.describe_task`, kept in its
storage) and each prior task gets a similarity (:func:`~metasam.meta.portfolio.task_kernel`,
the median heuristic). The portfolio: K specs chosen greedily to minimize the
similarity-weighted average normalized regret over all prior tasks
(:func:`~metasam.meta.portfolio.greedy_portfolio`); specs equal to a reference point of the new
study's space (the presets at their defaults) are left to it. The boxes: per preset region,
the log-space bounding box of the winners of the *similar* prior tasks only (the nearer half):
a dissimilar task's winners would narrow the search towards what won elsewhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import optuna

from metasam.meta.knowledge import MetaRecord, regret_table, study_descriptor
from metasam.meta.portfolio import (
    SIMILAR,
    bounding_box,
    greedy_portfolio,
    normalized,
    task_kernel,
)
from metasam.tuning.regions import REGIONS
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.trials import Label, Point, Role


@dataclass(frozen=True)
class Transfer:
    """What a meta-started study takes from its priors."""

    points: list[Point]                                 # the portfolio, as META points
    boxes: dict[str, dict[str, tuple[float, float]]]    # preset region → field → (low, high)
    similarity: dict[str, float] = field(default_factory=dict)  # prior task → kernel value

    @property
    def similar(self) -> list[str]:
        return similar_tasks(self.similarity)


def similar_tasks(similarity: dict[str, float]) -> list[str]:
    """The prior tasks within one bandwidth of the new one (the nearer half), sorted."""
    return sorted(t for t, s in similarity.items() if s >= SIMILAR - 1e-12)


def plan_transfer(config: StudyConfig, study: optuna.Study, records: list[MetaRecord], k: int
                  ) -> Transfer:
    """The portfolio and boxes for ``config``'s study (``study`` its Optuna study, where the
    new task's descriptor is kept) from the knowledge base ``records``."""
    tasks, keys, table = regret_table(records)
    by_task = {r.task: r.descriptor for r in records}
    target = study_descriptor(config, study)
    if target is not None and all(by_task[t] is not None for t in tasks):
        kernel = task_kernel(target.vector(), [by_task[t].vector() for t in tasks])
    else:  # nothing to compare: every prior task counts alike
        kernel = [1.0] * len(tasks)
    weights = normalized(kernel) if kernel else None
    existing = {json.dumps(p.spec, sort_keys=True) for p in config.space.points}
    labels = {}  # a spec is named after the prior task where it scored best
    for r in sorted(records, key=lambda r: r.score):
        labels[r.key] = (r.task, r.label)
    points = []
    for index in greedy_portfolio(table, k + len(existing), weights):
        key = keys[index]
        if key in existing:
            continue
        task, label = labels[key]
        spec = json.loads(key)
        points.append(Point(Label(Role.META, f"{task}:{label}", preset=spec.get("name")), spec))
        if len(points) == k:
            break
    similarity = dict(zip(tasks, kernel, strict=True))
    return Transfer(points, region_boxes(records, set(similar_tasks(similarity))), similarity)


def region_boxes(records: list[MetaRecord], tasks: set[str] | None = None,
                 margin: float = 0.5, top: float = 0.9, min_span: float | None = None
                 ) -> dict[str, dict[str, tuple[float, float]]]:
    """Per preset region, the log-space bounding box (widened by ``margin`` of its width on each
    side, and to at least a factor ``min_span`` from low to high, default 2.25) of the fields of
    the winners of ``tasks`` (default: all): full-budget trials of that region whose normalized
    score is at least ``top`` of their study's best."""
    winners: dict[str, list[dict[str, float]]] = {}
    for r in records:
        name = r.spec.get("name")
        if name not in REGIONS or r.score < top or (tasks is not None and r.task not in tasks):
            continue
        fields = {"rho": r.spec["rho"]}
        if REGIONS[name].lam:
            fields["lam"] = r.spec["lam"]
        winners.setdefault(name, []).append(fields)
    boxes = {}
    for name, points in winners.items():
        box = bounding_box(points, log_keys=("rho", "lam"), margin=margin)
        for key, (low, high) in box.items():  # at least ×/÷ 1.5 around a single winner
            span = MIN_SPAN if min_span is None else min_span
            grow = math.sqrt(max(1.0, span / (high / low)))
            box[key] = (low / grow, high * grow)
        boxes[name] = box
    return boxes


MIN_SPAN = 1.5 ** 2  # the narrowest box: a factor 2.25 from low to high
