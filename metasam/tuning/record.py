"""What metasam records in each Optuna trial, and reads back: the one owner of the trial
user-attribute names.

Written by the searcher (at the start and at the end of a trial), the storage (interruptions,
retries, surplus trials, enqueued points) and the search space (repairs); read by the storage's
census, the race, the export, the comparison, the plots and the CLI.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from metasam.family import presets
from metasam.tuning.naming import describe_spec
from metasam.tuning.placement import Placement
from metasam.tuning.trials import RESULT_KEYS, SEARCH, Label, Point, Status, TrialOutcome

# The user attributes, by meaning.
POINT = "point"              # the enqueued point's unique key (Label.key): de-duplication only
SPEC = "spec"                # the spec, JSON
TRAIN = "train"              # training overrides, JSON
LABEL = "label"              # the structured label (Label.to_dict), JSON
MEMBER = "member"            # the family member a searched trial sampled
REPAIRED = "repaired"        # how a sampled member was made a penalty
WORKER = "worker"            # the `metasam tune` process that runs it
EPOCHS = "epochs"            # epochs reached
FULL_BUDGET = "full_budget"  # its value was reached at the full budget
STATUS = "status"            # a Status value
REASON = "reason"            # why it stopped or failed
INTERRUPTED = "interrupted"  # its worker died; it was re-enqueued
SURPLUS = "surplus"          # asked for after the study was full; never run
RETRY_OF = "retry_of"        # the number of the interrupted trial it re-runs
RETRIES = "retries"          # how many times its configuration was re-run before it
HISTORY = "history"          # per-epoch metrics, JSON (comparison runs)
PLACEMENT = "placement"      # where it ran (host, Ray node, device, threads, versions), JSON
PASSES_PER_STEP = "passes_per_step"   # forward/backward passes per step
PBT_MEMBER = "pbt_member"    # a population member's index
PBT_EVENTS = "pbt_events"    # its exploit events, JSON
HEARTBEAT = "metasam:heartbeat"   # a system attribute: when its worker last said it is alive

# The study attributes, by meaning.
DEFINITION = "metasam:definition"   # what the study was created from (JSON)
PRIOR = "metasam:prior"             # a quick study's prior, recorded when it starts (JSON)
DESCRIPTOR = "metasam:descriptor"   # the task's descriptor (JSON)
PBT_PLAN = "pbt.plan.{}"            # the plan of generation g (JSON)
PBT_RESULT = "pbt.result.{}.{}"     # member i's result of generation g (JSON)
PBT_DONE = "pbt.done"               # the population's members are trials


def _attr(key: str, doc: str) -> Any:
    return property(lambda self: self.trial.user_attrs.get(key), doc=doc)


def _flag(key: str, doc: str) -> Any:
    return property(lambda self: bool(self.trial.user_attrs.get(key)), doc=doc)


@dataclass(frozen=True)
class TrialRecord:
    """A read-only view of one trial: Optuna's fields plus metasam's attributes, typed; the
    JSON ones (label, spec, training, placement, history) parsed once, when first read."""

    trial: FrozenTrial

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialRecord:
        return cls(trial)

    # Optuna's own
    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def state(self) -> TrialState:
        return self.trial.state

    @property
    def value(self) -> float | None:
        return self.trial.value

    # metasam's
    def _get(self, key: str, default: Any = None) -> Any:
        return self.trial.user_attrs.get(key, default)

    @functools.cached_property
    def label(self) -> Label:
        """The trial's structured label (:data:`~metasam.tuning.trials.SEARCH` for a sampled
        trial before it started)."""
        return label_of(self.trial.user_attrs)

    @property
    def name(self) -> str:
        """How the trial is named everywhere (see :func:`display_name`)."""
        return display_name(self)

    point = _attr(POINT, "the enqueued point's unique key (Label.key)")
    member = _attr(MEMBER, "the family member a searched trial sampled")
    repaired = _attr(REPAIRED, "how a sampled member was made a penalty")
    worker = _attr(WORKER, "the `metasam tune` process that ran it")
    epochs = _attr(EPOCHS, "epochs reached")
    @property
    def status(self) -> Status | None:
        """How it ended (``None`` while it runs)."""
        raw = self._get(STATUS)
        return Status(raw) if raw is not None else None

    reason = _attr(REASON, "why it stopped or failed")
    retry_of = _attr(RETRY_OF, "the number of the interrupted trial it re-runs")
    passes_per_step = _attr(PASSES_PER_STEP, "forward/backward passes per step")
    full_budget = _flag(FULL_BUDGET, "its value was reached at the full budget")
    interrupted = _flag(INTERRUPTED, "its worker died and it was re-enqueued")
    surplus = _flag(SURPLUS, "asked for after the study was full; never run")

    @property
    def is_point(self) -> bool:
        return self.label.is_point

    @functools.cached_property
    def spec(self) -> dict[str, Any] | None:
        text = self._get(SPEC)
        return json.loads(text) if text else None

    @functools.cached_property
    def train(self) -> dict[str, Any]:
        text = self._get(TRAIN)
        return json.loads(text) if text else {}

    @functools.cached_property
    def placement(self) -> Placement | None:
        """Where it ran (``None`` before its first report, or for a study made before
        placements were recorded)."""
        text = self._get(PLACEMENT)
        data = json.loads(text) if isinstance(text, str) else None
        return Placement.from_dict(data) if data and "host" in data else None

    @functools.cached_property
    def history(self) -> list[dict[str, Any]]:
        text = self._get(HISTORY)
        return json.loads(text) if isinstance(text, str) else list(text or [])

    def result(self, key: str) -> Any:
        """One of :data:`RESULT_KEYS` as recorded (``None`` when absent)."""
        return self._get(key)

    @property
    def counts(self) -> bool:
        """Does it count towards the study's target? COMPLETE, FAIL (a real failure), RUNNING
        and WAITING trials do; interrupted and surplus ones do not."""
        if self.interrupted or self.surplus:
            return False
        return self.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                              TrialState.WAITING)


def label_of(attrs: dict[str, Any]) -> Label:
    """The label recorded in a trial's user attributes (a sampled trial that has not started
    has none yet: :data:`SEARCH`)."""
    text = attrs.get(LABEL)
    if text is None:
        return SEARCH
    if isinstance(text, str) and not text.startswith("{"):
        return Label.legacy(text, presets.NAMES)
    return Label.from_dict(json.loads(text) if isinstance(text, str) else text)


def display_name(rec: TrialRecord) -> str:
    """How a trial is named everywhere: a fixed point by its label's method (``sam``, ``sam
    ρ=0.071``), a sampled preset region's member as the preset with its tuned fields, a
    sampled universal member as ``universal #N (μ=… φ=… …)``."""
    label = rec.label
    if label.is_point:
        return label.method
    spec = rec.spec
    if not spec:
        return f"trial #{rec.number}"
    text = describe_spec(spec)  # a preset region's member reads as the tuned preset
    return text if spec.get("name") in presets.NAMES else f"universal #{rec.number} ({text})"


def stored_point(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """An enqueued point's ``spec``, ``train`` and ``label`` (as a dict: Ray's boundary) from
    a trial's attributes; None for a trial the searcher samples."""
    if SPEC not in attrs:
        return None
    return {"spec": json.loads(attrs[SPEC]), "train": json.loads(attrs[TRAIN]),
            "label": label_of(attrs).to_dict()}


def point_attrs(point: Point) -> dict[str, Any]:
    """The attributes of an enqueued point."""
    return {POINT: point.label.key, LABEL: json.dumps(point.label.to_dict()),
            SPEC: json.dumps(point.spec), TRAIN: json.dumps(point.train)}


def start_attrs(config: dict[str, Any], has_spec: bool) -> dict[str, Any]:
    """What the searcher records when a trial starts (``config`` is the sampled Ray config)."""
    attrs: dict[str, Any] = {LABEL: json.dumps(config["label"])}
    if "member" in config:
        attrs[MEMBER] = config["member"]
    if not has_spec:
        attrs[SPEC] = json.dumps(config["spec"])
        attrs[TRAIN] = json.dumps(config["train"])
    return attrs


def outcome_attrs(outcome: TrialOutcome) -> dict[str, Any]:
    """What the searcher records when a trial ends: its budget, status and final result."""
    attrs: dict[str, Any] = {STATUS: outcome.status.value, EPOCHS: outcome.epochs,
                             FULL_BUDGET: outcome.full_budget, **outcome.metrics}
    if outcome.reason is not None:
        attrs[REASON] = outcome.reason
    return attrs


__all__ = ["RESULT_KEYS", "TrialRecord", "display_name", "label_of", "outcome_attrs",
           "point_attrs", "start_attrs"]
