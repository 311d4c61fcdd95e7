"""When a spec's sharpness term is applied: a schedule of the term (docs/family.md §3.4).

Every sharpness-aware step costs 1 + n forward/backward passes; a schedule makes the other
steps plain (one pass, an exact base-optimizer step on g0):

- ``start`` — the fraction of training after which the term starts (late-phase SAM: the term
  mostly matters near the end of training);
- ``every`` — the term on every k-th step from ``start`` on (the steps in between plain), and
  with ``reuse`` those steps add the sharpness component of the last full step instead, rescaled
  to the current gradient (LookSAM: the part of the sharpness gradient orthogonal to g0 changes
  slowly);
- ``trigger`` — the term only on steps whose squared gradient norm is unusually large:
  ‖g0‖² ≥ μ + trigger·σ, with μ and σ² exponential moving averages (factor ``decay``) of ‖g0‖²
  (AE-SAM's adaptive policy). The first step always applies the term.

``every`` and ``trigger`` exclude each other. Example::

    >>> Schedule(start=0.5, every=2).to_obj()
    {'start': 0.5, 'every': 2, 'reuse': False}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metasam import _checks
from metasam.errors import SpecError

_KEYS = ("start", "every", "reuse", "trigger", "decay")


@dataclass(frozen=True)
class Schedule:
    start: float = 0.0
    every: int = 1
    reuse: bool = False
    trigger: float | None = None
    decay: float = 0.9

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "start", _checks.number("schedule.start", self.start, low=0.0, high=1.0,
                                           high_open=True))
        set_(self, "every", _checks.integer("schedule.every", self.every, low=1))
        set_(self, "reuse", _checks.boolean("schedule.reuse", self.reuse))
        if self.trigger is not None:
            set_(self, "trigger", _checks.number("schedule.trigger", self.trigger, low=-10.0,
                                                 high=10.0))
            if self.every != 1 or self.reuse:
                raise SpecError("schedule.trigger", "an adaptive trigger excludes every/reuse",
                                "either trigger, or every (with reuse)")
        set_(self, "decay", _checks.number("schedule.decay", self.decay, low=0.0, high=1.0,
                                           low_open=True, high_open=True))
        if self.reuse and self.every == 1:
            raise SpecError("schedule.reuse", "needs plain steps in between", "every ≥ 2")

    @property
    def is_always(self) -> bool:
        """The term on every step: no schedule at all."""
        return self.start == 0.0 and self.every == 1 and self.trigger is None

    def first_step(self, total_steps: int | None) -> int:
        """The index (from 0) of the first step the term may apply to."""
        return math.ceil(self.start * total_steps) if self.start > 0 else 0  # type: ignore[operator]

    def periodic(self, index: int, total_steps: int | None) -> bool:
        """Whether step ``index`` (from 0) applies the term under ``start`` and ``every``."""
        start = self.first_step(total_steps)
        return index >= start and (index - start) % self.every == 0

    def triggered(self, index: int, total_steps: int | None, x: float,
                  stats: tuple[float, float] | None
                  ) -> tuple[bool, tuple[float, float] | None]:
        """AE-SAM's trigger at step ``index`` with x = ‖g0‖²: (whether the term applies, the
        new EMAs of x and of its squared deviation). The first step applies it (from
        ``start`` on); a non-finite x makes a plain step and leaves the EMAs as they were.

        Example::

            >>> s = Schedule(trigger=0.0, decay=0.5)
            >>> s.triggered(1, None, 3.0, (1.0, 0.0))   # mean 2, variance 0.5: 3 ≥ 2 + 0
            (True, (2.0, 0.5))
        """
        if not math.isfinite(x):
            return False, stats
        start = self.first_step(total_steps)
        if stats is None:
            return index >= start, (x, 0.0)
        d = self.decay
        mean = d * stats[0] + (1 - d) * x
        var = d * stats[1] + (1 - d) * (x - mean) ** 2
        return index >= start and x >= mean + self.trigger * math.sqrt(var), (mean, var)  # type: ignore[operator]

    @classmethod
    def from_obj(cls, obj: Any) -> Schedule | None:
        if obj is None or isinstance(obj, Schedule):
            return obj
        data = _checks.mapping("schedule", obj)
        _checks.known_keys("schedule", data, _KEYS)
        return cls(**data)

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": self.start, "every": self.every, "reuse": self.reuse}
        if self.trigger is not None:
            out.update(trigger=self.trigger, decay=self.decay)
        return out
