"""Transfer into a new study: the zero-shot portfolio of prior studies' specs, evaluated first.

The new task is described (:func:`~metasam.meta.descriptors.describe_task`, kept in its
storage), prior tasks are weighted by descriptor similarity, and K specs are chosen greedily to
minimize the weighted average normalized regret over the prior tasks
(:func:`~metasam.meta.portfolio.greedy_portfolio`). Specs equal to a reference point of the
new study's space (the presets at their defaults) are left to it.
"""

from __future__ import annotations

import json
from typing import Any

from metasam.meta.knowledge import knowledge_base, regret_table, study_descriptor
from metasam.meta.portfolio import greedy_portfolio, similarity_weights


def portfolio_points(config: Any, study: Any, priors: list[Any], k: int) -> list[Any]:
    """The portfolio as points ``meta:LABEL`` of ``config``'s study (``study`` its Optuna
    study, where the new task's descriptor is kept)."""
    from metasam.tuning.space import Point

    records = knowledge_base(priors)
    if not records:
        raise ValueError("--meta: the prior studies have no full-budget trials with an SGD "
                         "reference point; allowed: finished studies whose space lists sgd")
    tasks, keys, table = regret_table(records)
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
