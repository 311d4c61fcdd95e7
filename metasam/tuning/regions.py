"""Preset regions: every published member as a region of a search space, not a point.

A region is a preset with its own ρ (and λ, and τ for Tilted SAM, where it has one) sampled
log-uniformly within a factor ``width`` of its official default, everything else as published.
With the regions in a space, "the presets, tuned" lies inside it, and the search can return a
preset at a better strength as readily as a new member.

Example::

    >>> REGIONS["frob_sam"].ranges(4.0)["lam"]
    (0.00125, 0.02)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metasam.family import presets
from metasam.family.spec import SharpnessSpec


@dataclass(frozen=True)
class Region:
    """Which of a preset's fields a region varies, and hard limits on them."""

    preset: str
    lam: bool = False
    tau: bool = False
    lam_max: float | None = None

    def ranges(self, width: float) -> dict[str, tuple[float, float]]:
        """The log-uniform range of each varied field."""
        spec = presets.get(self.preset)
        out = {"rho": (spec.rho / width, spec.rho * width)}
        if self.lam:
            high = spec.lam * width
            out["lam"] = (spec.lam / width, min(high, self.lam_max or high))
        if self.tau:
            scale = spec.phi.to_obj()[0]["scale"]
            out["tau"] = (scale / width, scale * width)
        return out

    def spec(self, values: dict[str, float], guard: float | None) -> SharpnessSpec:
        changes: dict[str, Any] = {k: v for k, v in values.items() if k in ("rho", "lam")}
        if "tau" in values:
            changes["phi"] = {"fn": "exp", "scale": values["tau"]}
        if guard is not None:
            changes["guard"] = guard
        return presets.get(self.preset, **changes)


REGIONS: dict[str, Region] = {r.preset: r for r in (
    Region("sam"), Region("asam"), Region("ssam"),
    Region("trace_sam", lam=True), Region("frob_sam", lam=True), Region("det_sam", lam=True),
    Region("rwp", lam=True, lam_max=1.0),  # λ mixes two losses: at most 1
    Region("tilted_sam", lam=True, tau=True),
)}
MEMBERS = ("universal", *REGIONS)


def sample_region(name: str, width: float, guard: float | None, trial: Any,
                  box: dict[str, tuple[float, float]] | None = None) -> SharpnessSpec:
    """One member of a preset's region, sampled from an Optuna trial (parameters named
    ``{preset}_rho``, ``{preset}_lam``, ``{preset}_tau``). With ``box`` (ranges learned from
    prior studies, :mod:`metasam.meta`) each field it names is sampled within the box's part of
    the region instead, as ``{preset}_{field}_box``."""
    region = REGIONS[name]
    values = {}
    for key, (low, high) in region.ranges(width).items():
        inner = (box or {}).get(key)
        if inner is not None and max(low, inner[0]) < min(high, inner[1]):
            values[key] = trial.suggest_float(f"{name}_{key}_box", max(low, inner[0]),
                                              min(high, inner[1]), log=True)
        else:
            values[key] = trial.suggest_float(f"{name}_{key}", low, high, log=True)
    return region.spec(values, guard)
