"""The study protocol: what a trial *is*, what it *returned*, and what a study *concluded*.

Every layer above this module (the searcher, the storage, the race of the decision stage,
the export, the meta-learning, the CLI) reads and writes these types; nothing above parses a
label or a status back out of a string. Optuna's user attributes and Ray Tune's trial configs
are the two places where these types become plain data (:meth:`Label.to_dict` /
:meth:`Label.from_dict`, :class:`Status` values), behind :mod:`metasam.tuning.record`.

    >>> label = Label(Role.RACE, "sam ρ=0.1", trial=12, instance=2)
    >>> Label.from_dict(label.to_dict()) == label
    True
    >>> label.key
    'race:t12/i2'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SEARCH_KEY = "search"
# the derived studies of a study's decision, in its storage: NAME.race and NAME.verdict
RACE_SUFFIX = "race"
CONFIRM_SUFFIX = "verdict"


class Role(str, Enum):
    """Why a trial is in a study."""

    SEARCH = "search"          # sampled by the search (Optuna's sampler)
    REFERENCE = "reference"    # a preset at its official defaults, from the space's presets
    POINT = "point"            # a fixed point of the space (a grid entry)
    WARM = "warm"              # the top trial of another study (tune --warm-start)
    META = "meta"              # a prior task's winner from the zero-shot portfolio
    RACE = "race"              # a candidate of the race on one instance
    VERDICT = "verdict"        # the winner or one it is compared with, on a fresh instance
    COMPARE = "compare"        # a method of `metasam compare`, one seed, scored on test
    POPULATION = "population"  # a member of a population-based study (PBT): its schedule

    @property
    def sampled(self) -> bool:
        """Is the member drawn by the sampler (and ranked by ASHA)? Every other role is a
        fixed point: enqueued with its spec, never stopped early."""
        return self is Role.SEARCH


@dataclass(frozen=True)
class Label:
    """A trial's structured name: its role, the method it runs, and for re-runs the trial it
    re-runs and the instance (seed, validation fold) it runs on.

    ``method`` is what people read (``sam``, ``sam ρ=0.102``, ``universal #7 (…)``);
    ``preset`` is the preset a fixed point was made from (``None`` for universal members and
    sampled trials), so no caller needs to take a method name apart.
    """

    role: Role
    method: str = ""
    preset: str | None = None
    trial: int | None = None      # the study trial a RACE run re-runs
    instance: int | None = None   # the instance index of RACE / COMPARE runs

    @property
    def key(self) -> str:
        """A unique id within a study (enqueued points are de-duplicated by it). Written,
        never parsed."""
        if self.role is Role.SEARCH:
            return SEARCH_KEY
        head = f"t{self.trial}" if self.trial is not None else self.method
        tail = f"/i{self.instance}" if self.instance is not None else ""
        return f"{self.role.value}:{head}{tail}"

    @property
    def is_point(self) -> bool:
        return not self.role.sampled

    def is_reference(self, preset: str | None = None) -> bool:
        """Is it a reference point (a preset at its defaults), ``preset`` if given?"""
        return self.role is Role.REFERENCE and (preset is None or self.preset == preset)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role.value, "method": self.method, "preset": self.preset,
                "trial": self.trial, "instance": self.instance}

    @classmethod
    def legacy(cls, text: str, preset_names: tuple[str, ...]) -> Label:
        """The label of a trial stored before labels were structured: its name only, never
        taken apart (a bare preset name was then always that preset's reference point)."""
        if text == SEARCH_KEY:
            return cls(Role.SEARCH)
        if text in preset_names:
            return cls(Role.REFERENCE, text, preset=text)
        return cls(Role.POINT, text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        return cls(Role(data["role"]), str(data.get("method", "")), data.get("preset"),
                   data.get("trial"), data.get("instance"))


SEARCH = Label(Role.SEARCH)


class Status(str, Enum):
    """How a trial ended (or, in a report, that it is still running)."""

    RUNNING = "running"        # an intermediate report
    COMPLETED = "completed"    # it trained to its budget
    STOPPED = "stopped"        # ASHA (or the caller) stopped it early
    DIVERGED = "diverged"      # a non-finite loss or step
    FAILED = "failed"          # it raised, or its config was invalid, or sampling failed

    @property
    def failed(self) -> bool:
        """Does Optuna record it as FAIL (no value to rank by)?"""
        return self in (Status.DIVERGED, Status.FAILED)


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial returned: its status, how far it got, and its final metrics."""

    status: Status
    epochs: int
    full_budget: bool
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_result(cls, result: dict[str, Any], budget: int, error: bool) -> TrialOutcome:
        """The outcome from a trial's last Ray Tune report (``error``: the trainable raised)."""
        raw = result.get("status")
        status = Status(raw) if raw is not None else (Status.FAILED if error
                                                      else Status.STOPPED)
        epochs = int(result.get("epoch", 0) or 0)
        full = status is Status.COMPLETED and epochs >= budget
        if status is Status.RUNNING:
            status = Status.STOPPED  # ASHA stopped it between reports
        reason = result.get("reason")
        if reason is None and error:
            reason = "the trial raised an error (see the Ray logs of this study)"
        return cls(status, epochs, full, reason,
                   {k: result[k] for k in RESULT_KEYS if k in result})


RESULT_KEYS = ("passes_per_step", "grad_evals", "wall_time", "history", "test_acc",
               "test_loss", "val_acc", "val_loss", "placement",
               "learned_spec", "learn_grad_evals")  # copied from the last result


@dataclass(frozen=True)
class Point:
    """A fixed trial: a full spec plus training overrides, under a structured label."""

    label: Label
    spec: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
