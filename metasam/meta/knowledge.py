"""The meta-knowledge base: finished studies (any storage) read into one table of (task
descriptor, spec, budget reached, normalized score), so that tasks compare.

Scores are normalized per study against its own SGD and its best full-budget trial: 1 is the
study's best, 0 SGD, below 0 worse than SGD (``regret`` = 1 − score). A study without an SGD
reference point is skipped: nothing anchors its scale.

A base can be kept in a *knowledge file* (JSON, :func:`write_knowledge`, ``metasam meta ...
--save FILE.json``) and read back in place of the studies (:func:`load_priors`): a team shares
what its finished studies taught without sharing their storages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from metasam.errors import ConfigError
from metasam.meta.descriptors import TaskDescriptor, describe_task
from metasam.tuning import record
from metasam.tuning.record import TrialRecord
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.trials import RESULT_KEYS

KNOWLEDGE_FORMAT = "metasam-knowledge/1"


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


def write_knowledge(records: list[MetaRecord], path: str | os.PathLike[str]) -> None:
    """Keep a knowledge base in a JSON file that :func:`read_knowledge` reads back."""
    rows = []
    for r in records:
        row = asdict(r)
        row["descriptor"] = r.descriptor.to_dict() if r.descriptor is not None else None
        rows.append(row)
    Path(path).write_text(json.dumps({"format": KNOWLEDGE_FORMAT, "records": rows}, indent=1))


def read_knowledge(path: str | os.PathLike[str]) -> list[MetaRecord]:
    """The records of a knowledge file; anything else is a one-line error naming the file."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("file", "not found", source=source) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError("file", f"not a knowledge file ({type(err).__name__})",
                          "JSON written by `metasam meta ... --save`", source) from None
    if not isinstance(data, dict) or data.get("format") != KNOWLEDGE_FORMAT:
        raise ConfigError("format", "missing or unknown", KNOWLEDGE_FORMAT, source)
    names = set(MetaRecord.__dataclass_fields__)
    out = []
    for i, row in enumerate(data.get("records") or []):
        try:
            if not isinstance(row, dict) or set(row) != names:
                raise TypeError("fields")
            descriptor = row["descriptor"]
            out.append(MetaRecord(**{**row, "descriptor": None if descriptor is None
                                     else TaskDescriptor.from_dict(descriptor)}))
        except (TypeError, ValueError):
            raise ConfigError(f"records[{i}]", "not a knowledge record",
                              ", ".join(sorted(names)), source) from None
    return out


def load_priors(sources: list[Any], option: str,
                progress: Callable[[int, str], None] | None = None) -> list[MetaRecord]:
    """The knowledge base of ``sources``: study files or their configs, and knowledge files
    (``.json``), in one table (``progress``: see :func:`knowledge_base`)."""
    configs, records = [], []
    for source in sources:
        if isinstance(source, StudyConfig):
            configs.append(source)
        elif str(source).endswith(".json"):
            records.extend(read_knowledge(source))
        else:
            configs.append(StudyConfig.from_yaml(source))
    records.extend(knowledge_base(configs, progress=progress))
    if not records:
        raise ConfigError(option, "no study has full-budget trials with an SGD reference point",
                          "finished studies whose space lists sgd")
    return records


def study_descriptor(config: StudyConfig, study: optuna.Study, compute: bool = True
                     ) -> TaskDescriptor | None:
    """The study's task descriptor, computed once (:func:`describe_task`) and kept in its
    storage."""
    text = study.user_attrs.get(record.DESCRIPTOR)
    if text is not None:
        return TaskDescriptor.from_dict(json.loads(text))
    if not compute:
        return None
    descriptor = describe_task(config.train, seed=config.seed)
    study.set_user_attr(record.DESCRIPTOR, json.dumps(descriptor.to_dict()))
    return descriptor


def knowledge_base(configs: list[StudyConfig], describe: bool = True,
                   progress: Callable[[int, str], None] | None = None) -> list[MetaRecord]:
    """Every full-budget trial of the studies, normalized per study by the study's metric (a
    cost-aware study's trials by their metric too, not by the score it ranked them by);
    ``progress`` is told (studies read, the one being read) as it goes."""
    records: list[MetaRecord] = []
    for done, config in enumerate(configs):
        if progress is not None:
            progress(done, config.name)
        study = config.load_study()
        finished = []  # (trial, its record, its spec, its metric) of the full-budget trials
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            rec = TrialRecord.of(t)
            spec = rec.spec
            if rec.counts and rec.full_budget and t.value is not None and spec is not None:
                raw = rec.result(config.metric) if config.metric in RESULT_KEYS else None
                finished.append((t, rec, spec, float(t.value if raw is None else raw)))
        sgd = [value for _, rec, _, value in finished if rec.label.is_reference("sgd")]
        if not sgd:
            continue
        sign = 1.0 if config.mode == "max" else -1.0
        best = max(sign * value for *_, value in finished)
        span = best - sign * sgd[0]
        descriptor = study_descriptor(config, study, compute=describe)
        for _, rec, spec, value in finished:
            score = (sign * value - sign * sgd[0]) / span if span > 0 else 0.0
            records.append(MetaRecord(config.name, descriptor, rec.name, spec,
                                      rec.epochs, rec.full_budget, value, score))
    return records


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
