"""What metasam records in each Optuna trial, and reads back: the one owner of the trial
user-attribute names.

Written by the searcher (at the start and at the end of a trial), the storage (interruptions,
retries, surplus trials, enqueued points) and the search space (repairs); read by the storage's
census, the confirmation stage, the export, the comparison, the plots and the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

# The user attributes, by meaning.
POINT = "point"              # label of an enqueued point (reference points, retries, warm starts)
SPEC = "spec"                # the spec, JSON
TRAIN = "train"              # training overrides, JSON
LABEL = "label"              # the point's label, or "search" for a sampled trial
MEMBER = "member"            # the family member a searched trial sampled
REPAIRED = "repaired"        # how a sampled member was made a penalty
WORKER = "worker"            # the `metasam tune` process that runs it
EPOCHS = "epochs"            # epochs reached
FULL_BUDGET = "full_budget"  # its value was reached at the full budget
STATUS = "status"            # completed, stopped, diverged, failed
REASON = "reason"            # why it stopped or failed
INTERRUPTED = "interrupted"  # its worker died; it was re-enqueued
SURPLUS = "surplus"          # asked for after the study was full; never run
RETRY_OF = "retry_of"        # the number of the interrupted trial it re-runs
HISTORY = "history"          # per-epoch metrics, JSON (comparison runs)
RESULT_KEYS = ("passes_per_step", "grad_evals", "wall_time", "history", "test_acc",
               "test_loss", "val_acc", "val_loss")  # copied from the trial's final result


def _attr(key: str, doc: str) -> Any:
    return property(lambda self: self.trial.user_attrs.get(key), doc=doc)


def _flag(key: str, doc: str) -> Any:
    return property(lambda self: bool(self.trial.user_attrs.get(key)), doc=doc)


@dataclass(frozen=True)
class TrialRecord:
    """A read-only view of one trial: Optuna's fields plus metasam's attributes, typed."""

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

    @property
    def label(self) -> str:
        """The point's label, ``"search"`` for a sampled trial."""
        return str(self._get(LABEL, self._get(POINT, "search")))

    point = _attr(POINT, "the enqueued point's label")
    member = _attr(MEMBER, "the family member a searched trial sampled")
    repaired = _attr(REPAIRED, "how a sampled member was made a penalty")
    worker = _attr(WORKER, "the `metasam tune` process that ran it")
    epochs = _attr(EPOCHS, "epochs reached")
    status = _attr(STATUS, "completed, stopped, diverged or failed")
    reason = _attr(REASON, "why it stopped or failed")
    retry_of = _attr(RETRY_OF, "the number of the interrupted trial it re-runs")
    passes_per_step = _attr("passes_per_step", "forward/backward passes per step")
    full_budget = _flag(FULL_BUDGET, "its value was reached at the full budget")
    interrupted = _flag(INTERRUPTED, "its worker died and it was re-enqueued")
    surplus = _flag(SURPLUS, "asked for after the study was full; never run")

    @property
    def is_point(self) -> bool:
        return self.label != "search"

    @property
    def spec(self) -> dict[str, Any] | None:
        text = self._get(SPEC)
        return json.loads(text) if text else None

    @property
    def train(self) -> dict[str, Any]:
        text = self._get(TRAIN)
        return json.loads(text) if text else {}

    @property
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


def point_attrs(label: str, spec: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """The attributes of an enqueued point."""
    return {POINT: label, SPEC: json.dumps(spec), TRAIN: json.dumps(train)}


def start_attrs(worker: str, config: dict[str, Any], has_spec: bool) -> dict[str, Any]:
    """What the searcher records when a trial starts (``config`` is the sampled Ray config)."""
    attrs: dict[str, Any] = {LABEL: config["label"]}
    if "member" in config:
        attrs[MEMBER] = config["member"]
    if not has_spec:
        attrs[SPEC] = json.dumps(config["spec"])
        attrs[TRAIN] = json.dumps(config["train"])
    return attrs


def outcome_attrs(result: dict[str, Any], epochs_budget: int, error: bool) -> dict[str, Any]:
    """What the searcher records when a trial ends: its budget, status and final result."""
    status = result.get("status", "failed" if error else "stopped")
    epochs = int(result.get("epoch", 0) or 0)
    full = status == "completed" and epochs >= epochs_budget
    if status == "running":
        status = "stopped"  # ASHA stopped it early
    attrs: dict[str, Any] = {STATUS: status, EPOCHS: epochs, FULL_BUDGET: full}
    attrs.update({key: result[key] for key in RESULT_KEYS if key in result})
    if "reason" in result:
        attrs[REASON] = result["reason"]
    elif error:
        attrs[REASON] = "the trial raised an error (see the Ray logs of this study)"
    return attrs
