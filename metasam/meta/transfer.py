"""Transfer into a new study: the zero-shot portfolio of prior studies' specs, evaluated first.

The new task is described (:func:`~metasam.meta.descriptors.describe_task`, kept in its
storage), prior tasks are weighted by descriptor similarity, and K specs are chosen greedily to
minimize the weighted average normalized regret over the prior tasks
(:func:`~metasam.meta.portfolio.greedy_portfolio`). Specs equal to a reference point of the
new study's space (the presets at their defaults) are left to it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from metasam.meta.knowledge import knowledge_base, prior_table, study_descriptor
from metasam.meta.portfolio import greedy_portfolio, similarity_weights


def portfolio_points(config: Any, study: Any, priors: list[Any], k: int) -> list[Any]:
    """The portfolio as points ``meta:LABEL`` of ``config``'s study (``study`` its Optuna
    study, where the new task's descriptor is kept)."""
    from metasam.tuning.space import Point

    records, tasks, keys, table = prior_table(priors, "--meta")
    by_task = {r.task: r.descriptor for r in records}
    target = study_descriptor(config, study)
    weights = None
    if target is not None and all(by_task[t] is not None for t in tasks):
        weights = similarity_weights(target.vector(), [by_task[t].vector() for t in tasks])
    existing = {json.dumps(p.spec, sort_keys=True) for p in config.space.points}
    labels = {r.key: (r.task, r.label) for r in records}
    points = []
    for index in greedy_portfolio(table, k + len(existing), weights):
        key = keys[index]
        if key in existing:
            continue
        task, label = labels[key]
        points.append(Point(f"meta:{task}:{label}", json.loads(key)))
        if len(points) == k:
            break
    return points


def region_boxes(priors: list[Any], weights_for: Any = None, margin: float = 0.5,
                 top: float = 0.9) -> dict[str, dict[str, tuple[float, float]]]:
    """Per preset region, the log-space bounding box (widened by ``margin`` of its width on each
    side) of the fields of the prior studies' winners: full-budget trials of that region whose
    normalized score is at least ``top`` of their study's best."""
    from metasam.meta.portfolio import bounding_box
    from metasam.tuning.regions import REGIONS

    winners: dict[str, list[dict[str, float]]] = {}
    for r in knowledge_base(priors, describe=False):
        name = r.spec.get("name")
        if name not in REGIONS or r.score < top:
            continue
        fields = {"rho": r.spec["rho"]}
        if REGIONS[name].lam:
            fields["lam"] = r.spec["lam"]
        winners.setdefault(name, []).append(fields)
    boxes = {}
    for name, points in winners.items():
        box = bounding_box(points, log_keys=("rho", "lam"), margin=margin)
        for key, (low, high) in box.items():  # at least ×/÷ 1.5 around a single winner
            grow = math.sqrt(max(1.0, MIN_SPAN / (high / low)))
            box[key] = (low / grow, high * grow)
        boxes[name] = box
    return boxes


MIN_SPAN = 1.5 ** 2  # the narrowest box: a factor 2.25 from low to high
