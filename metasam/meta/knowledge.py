"""The meta-knowledge base: finished studies (any storage) read into one table of (task
descriptor, spec, budget reached, normalized score), so that tasks compare.

Scores are normalized per study against its own SGD and its best full-budget trial: 1 is the
study's best, 0 SGD, below 0 worse than SGD (``regret`` = 1 − score). A study without an SGD
reference point is skipped: nothing anchors its scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from metasam.meta.descriptors import TaskDescriptor, describe_task

DESCRIPTOR_ATTR = "metasam:descriptor"


@dataclass(frozen=True)
class MetaRecord:
    task: str                    # the study's name
    descriptor: TaskDescriptor | None
    label: str                   # the trial's label, or its tuned-preset / universal name
    spec: dict[str, Any]
    epochs: int | None
    full_budget: bool
    value: float                 # the study's metric
    score: float                 # normalized: 1 the study's best, 0 its SGD

    @property
    def regret(self) -> float:
        return 1.0 - self.score

    @property
    def key(self) -> str:
        """Equal specs share a key across studies (the presets at their defaults do)."""
        return json.dumps(self.spec, sort_keys=True)


def study_descriptor(config: Any, study: Any, compute: bool = True) -> TaskDescriptor | None:
    """The study's task descriptor, computed once (:func:`describe_task`) and kept in its
    storage."""
    text = study.user_attrs.get(DESCRIPTOR_ATTR)
    if text is not None:
        return TaskDescriptor.from_dict(json.loads(text))
    if not compute:
        return None
    descriptor = describe_task(config.train, seed=config.seed)
    study.set_user_attr(DESCRIPTOR_ATTR, json.dumps(descriptor.to_dict()))
    return descriptor


def knowledge_base(configs: list[Any], describe: bool = True) -> list[MetaRecord]:
    """Every full-budget trial of the studies, normalized per study."""
    from optuna.trial import TrialState

    from metasam.tuning.confirm import display_name
    from metasam.tuning.record import TrialRecord

    records: list[MetaRecord] = []
    for config in configs:
        study = config.load_study()
        finished = []  # (trial, its record, its spec) of the full-budget trials with a spec
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            rec = TrialRecord.of(t)
            spec = rec.spec
            if rec.counts and rec.full_budget and t.value is not None and spec is not None:
                finished.append((t, rec, spec))
        sgd = [t.value for t, rec, _ in finished if rec.label == "sgd"]
        if not sgd:
            continue
        sign = 1.0 if config.mode == "max" else -1.0
        best = max(sign * t.value for t, _, _ in finished)
        span = best - sign * sgd[0]
        descriptor = study_descriptor(config, study, compute=describe)
        for t, rec, spec in finished:
            score = (sign * t.value - sign * sgd[0]) / span if span > 0 else 0.0
            records.append(MetaRecord(config.name, descriptor, display_name(t), spec,
                                      rec.epochs, rec.full_budget, float(t.value), score))
    return records


def prior_table(configs: list[Any], option: str
                ) -> tuple[list[MetaRecord], list[str], list[str], list[list[float]]]:
    """The knowledge base of ``configs`` and its regret table (:func:`regret_table`); a base
    with nothing to learn from is a one-line error naming ``option``."""
    records = knowledge_base(configs)
    if not records:
        raise ValueError(f"{option}: no study has full-budget trials with an SGD reference "
                         "point; allowed: finished studies whose space lists sgd")
    return (records, *regret_table(records))


def regret_table(records: list[MetaRecord]) -> tuple[list[str], list[str], list[list[float]]]:
    """(tasks, candidate keys, regret[task][candidate]), NaN where a candidate was not run on a
    task (a searched spec exists only in its own study; the presets in every one)."""
    tasks = sorted({r.task for r in records})
    keys = sorted({r.key for r in records})
    index = {k: i for i, k in enumerate(keys)}
    table = [[float("nan")] * len(keys) for _ in tasks]
    for r in records:
        row = table[tasks.index(r.task)]
        j = index[r.key]
        row[j] = r.regret if row[j] != row[j] else min(row[j], r.regret)  # NaN check
    return tasks, keys, table
