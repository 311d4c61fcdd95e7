"""A candidate of a study's decision: a trial of the study, or a preset at its default."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from metasam.tuning.trials import Label, Role


class Pick(str, Enum):
    """Why a candidate races."""

    TOP = "top"            # one of the top-k full-budget trials of the search
    PRESET = "preset"      # a reference preset at its default
    POINT = "point"        # a point named in advance (the shipped portfolio, a space's points)


@dataclass(frozen=True)
class Candidate:
    """A member in the race: a trial of the study (``trial``), or a preset at its default the
    space lacks (``trial`` None)."""

    name: str
    pick: Pick
    spec: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    trial: int | None = None

    @property
    def preset(self) -> str | None:
        """The preset it is at its default (``None`` for a searched member)."""
        return self.spec.get("name") if self.pick is Pick.PRESET else None

    @property
    def id(self) -> str:
        """Its identity in the race and in its runs' labels (written, never parsed)."""
        return f"t{self.trial}" if self.trial is not None else f"preset:{self.preset}"

    def run_label(self, instance: int, role: Role = Role.RACE) -> Label:
        return Label(role, self.name, self.spec.get("name"), self.trial, instance)

    def owns(self, label: Label) -> bool:
        """Is ``label`` one of this candidate's runs?"""
        if self.trial is not None:
            return label.trial == self.trial
        if self.pick is Pick.POINT:
            return label.trial is None and label.method == self.name
        return label.trial is None and label.preset == self.preset and label.method == self.name
