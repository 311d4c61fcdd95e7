"""A member whose parameters change over training: ramps and piecewise-constant phases.

A spec's ``vary`` maps a parameter to its value as a function of training progress
p = (step index)/(total steps) ∈ [0, 1) (docs/family.md §3.5):

- a **ramp** (``rho`` and ``lam``): from ``start`` at progress ``begin`` to ``end`` at progress
  ``finish``, linear or cosine in between, constant outside::

      {"rho": {"ramp": [0.0, 0.2], "shape": "linear"}}          # SAM's ρ rising 0 → 0.2

- **phases** (``rho``, ``lam``, ``phi``, ``psi``): piecewise-constant values, each from its
  fraction of training on; the first starts at 0. A population's member history (PBT) exports
  as phases::

      {"lam": {"phases": [[0.0, 1.0], [0.5, 0.5]]},
       "phi": {"phases": [[0.0, {"fn": "polynomial", "coefficients": [0, 1]}],
                          [0.75, {"fn": "polynomial", "coefficients": [0, 1, 0.5]}]]}}

A value of 0 for ρ or λ turns the sharpness term off where it holds: those steps are plain
(one pass, an exact base-optimizer step). ``phi`` and ``psi`` phases keep the structure of the
spec's own φ and ψ (the same functions; only their coefficients change), so every phase is the
same kind of member and the optimizer's buffers carry over.

Example::

    >>> v = Trajectories.from_obj({"rho": {"ramp": [0.0, 0.2]}})
    >>> v.values_at(0.25)
    {'rho': 0.05}
    >>> Trajectories.from_obj({"lam": {"phases": [[0.0, 1.0], [0.5, 0.5]]}}).values_at(0.5)
    {'lam': 0.5}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from metasam import _checks
from metasam.errors import SpecError

RAMPED = ("rho", "lam")
PHASED = ("rho", "lam", "phi", "psi")
SHAPES = ("linear", "cosine")


@dataclass(frozen=True)
class Ramp:
    """A value moving from ``start`` (at progress ``begin``) to ``end`` (at ``finish``)."""

    start: float
    end: float
    shape: str = "linear"
    begin: float = 0.0
    finish: float = 1.0

    def at(self, progress: float) -> float:
        if progress <= self.begin:
            return self.start
        if progress >= self.finish:
            return self.end
        t = (progress - self.begin) / (self.finish - self.begin)
        if self.shape == "cosine":
            t = (1.0 - math.cos(math.pi * t)) / 2.0
        return self.start + (self.end - self.start) * t

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ramp": [self.start, self.end], "shape": self.shape}
        if (self.begin, self.finish) != (0.0, 1.0):
            out["span"] = [self.begin, self.finish]
        return out


@dataclass(frozen=True)
class Phases:
    """Piecewise-constant values: ``steps[k] = (at_k, value_k)``, at_0 = 0, increasing."""

    steps: tuple[tuple[float, Any], ...]

    def at(self, progress: float) -> Any:
        value = self.steps[0][1]
        for at, v in self.steps[1:]:
            if progress >= at:
                value = v
            else:
                break
        return value

    def to_obj(self) -> dict[str, Any]:
        return {"phases": [[at, v] for at, v in self.steps]}


Trajectory = Ramp | Phases


@dataclass(frozen=True)
class Trajectories:
    """Per parameter, its trajectory over training (see the module's docstring)."""

    items: tuple[tuple[str, Trajectory], ...]

    @classmethod
    def from_obj(cls, obj: Any) -> Trajectories | None:
        if obj is None or isinstance(obj, Trajectories):
            return obj
        data = _checks.mapping("vary", obj)
        if not data:
            return None
        _checks.known_keys("vary", data, PHASED)
        items = []
        for name in PHASED:  # a fixed order: equal trajectories compare and serialize equal
            if name in data:
                items.append((name, _read(name, data[name])))
        return cls(tuple(items))

    def to_obj(self) -> dict[str, Any]:
        return {name: t.to_obj() for name, t in self.items}

    def __getitem__(self, name: str) -> Trajectory:
        return dict(self.items)[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items)

    def values_at(self, progress: float) -> dict[str, Any]:
        """Each varied parameter's value at ``progress`` (a fraction of training)."""
        return {name: t.at(progress) for name, t in self.items}

    def breakpoints(self) -> list[float]:
        """Where some value changes: every phase's start and every ramp's ends, sorted."""
        points = {0.0}
        for _, t in self.items:
            if isinstance(t, Phases):
                points.update(at for at, _ in t.steps)
            else:
                points.update((t.begin, t.finish))
        return sorted(p for p in points if p < 1.0)

    def key(self) -> str:
        return json.dumps(self.to_obj(), sort_keys=True)

    def label(self) -> str:
        """A short name for tables: ``ρ 0→0.2``, ``λ 0.5→1 cos``, ``φ 3 phases``."""
        symbols = {"rho": "ρ", "lam": "λ", "phi": "φ", "psi": "ψ"}
        parts = []
        for name, t in self.items:
            if isinstance(t, Ramp):
                parts.append(f"{symbols[name]} {t.start:.3g}→{t.end:.3g}"
                             + (" cos" if t.shape == "cosine" else ""))
            elif all(isinstance(v, float) for _, v in t.steps):
                parts.append(f"{symbols[name]} {t.steps[0][1]:.3g}" + "".join(
                    f", {at:.0%}: {v:.3g}" for at, v in t.steps[1:]))
            else:
                parts.append(f"{symbols[name]} {len(t.steps)} phases")
        return ", ".join(parts)


def _fraction(field: str, value: Any, *, closed_high: bool = False) -> float:
    return _checks.number(field, value, low=0.0, high=1.0, high_open=not closed_high)


def _read(name: str, obj: Any) -> Trajectory:
    field = f"vary.{name}"
    data = _checks.mapping(field, obj)
    if "ramp" in data:
        if name not in RAMPED:
            raise SpecError(field, f"{name} cannot ramp (its value is not a number)",
                            "phases: [[0.0, VALUE], [AT, VALUE], ...]")
        _checks.known_keys(field, data, ("ramp", "shape", "span"))
        ends = data["ramp"]
        if not isinstance(ends, list) or len(ends) != 2:
            raise SpecError(f"{field}.ramp", f"expected [start, end], got {ends!r}",
                            "[start, end] with values ≥ 0")
        start = _checks.number(f"{field}.ramp[0]", ends[0], low=0.0)
        end = _checks.number(f"{field}.ramp[1]", ends[1], low=0.0)
        shape = _checks.choice(f"{field}.shape", data.get("shape", "linear"), SHAPES)
        span = data.get("span", [0.0, 1.0])
        if not isinstance(span, list) or len(span) != 2:
            raise SpecError(f"{field}.span", f"expected [begin, finish], got {span!r}",
                            "fractions of training, begin < finish")
        begin = _fraction(f"{field}.span[0]", span[0])
        finish = _fraction(f"{field}.span[1]", span[1], closed_high=True)
        if not begin < finish:
            raise SpecError(f"{field}.span", f"begin {begin} is not before finish {finish}",
                            "fractions of training, begin < finish")
        return Ramp(start, end, shape, begin, finish)
    if "phases" in data:
        _checks.known_keys(field, data, ("phases",))
        raw = data["phases"]
        if not isinstance(raw, list) or not raw:
            raise SpecError(f"{field}.phases", "expected a non-empty list of [at, value]",
                            "[[0.0, VALUE], [AT, VALUE], ...]")
        steps = []
        for k, entry in enumerate(raw):
            where = f"{field}.phases[{k}]"
            if not isinstance(entry, (list, tuple)) or len(entry) != 2:
                raise SpecError(where, f"expected [at, value], got {entry!r}",
                                "[fraction of training, value]")
            at = _fraction(f"{where}[0]", entry[0])
            if k == 0 and at != 0.0:
                raise SpecError(f"{where}[0]", f"the first phase starts at {at}, not 0", "0.0")
            if steps and at <= steps[-1][0]:
                raise SpecError(f"{where}[0]", f"{at} does not follow {steps[-1][0]}",
                                "increasing fractions of training")
            value = entry[1]
            if name in RAMPED:
                value = _checks.number(f"{where}[1]", value, low=0.0)
            steps.append((at, _freeze(value)))
        return Phases(tuple(steps))
    raise SpecError(field, "expected a ramp or phases",
                    "{ramp: [start, end], shape: linear|cosine} or {phases: [[at, value], ...]}")


def _freeze(value: Any) -> Any:
    """φ/ψ objects as read from JSON, normalized (lists for tuples) so that equal trajectories
    compare equal; numbers as floats."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.loads(json.dumps(value))
