"""μ: the perturbation measure of the sharpness family.

Random measures (a fresh v per perturbation):

- ``gaussian`` — v ~ N(0, σ²I);
- ``sphere`` — v uniform on the sphere of *all* (perturbed) parameters jointly;
- ``box`` — v uniform on a hypercube [−a, a]^d (the Lebesgue measure of Det-SAM, truncated).

Two scale conventions (docs/family.md §3.1):

- ``scale="global"`` (default): E‖v‖² = 1 whatever the model size, so ρ is a radius and one range
  of ρ serves every measure (σ² = 1/d, sphere radius 1, a = √(3/d); ``half_width`` is unused);
- ``scale="coordinate"``: the official convention, unit variance per coordinate (σ = 1, sphere
  radius √d) and the box half-width ``half_width`` per coordinate, so ‖ρv‖ grows like ρ√d.

``adaptive=True`` multiplies any random v element-wise by T = |w| + η (a scale-invariant random
measure, in the spirit of ASAM).

Deterministic ("ascent") measures, always a radius (‖T⁻¹v‖ = 1) and n = 1:

- ``ascent`` — SAM: v = g/‖g‖;
- ``adaptive_ascent`` — ASAM: v = T²g/‖Tg‖ with T = |w| + η;
- ``sparse_ascent`` — SSAM-F: v = m ⊙ g/‖g‖ with m the Fisher mask keeping the top
  (1 − ``sparsity``) coordinates, estimated from ``fisher_samples`` per-example squared gradients
  and refreshed every ``refresh_epochs`` epochs by the trainer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from metasam import _checks
from metasam.errors import SpecError

RANDOM_KINDS = ("gaussian", "sphere", "box")
ASCENT_KINDS = ("ascent", "adaptive_ascent", "sparse_ascent")
KINDS = RANDOM_KINDS + ASCENT_KINDS
SCALES = ("global", "coordinate")

# Which optional fields each kind reads; any other field given explicitly is an error.
_FIELDS_OF_KIND: dict[str, tuple[str, ...]] = {
    "gaussian": ("scale", "adaptive", "eta"),
    "sphere": ("scale", "adaptive", "eta"),
    "box": ("scale", "half_width", "adaptive", "eta"),
    "ascent": (),
    "adaptive_ascent": ("eta",),
    "sparse_ascent": ("sparsity", "fisher_samples", "refresh_epochs"),
}


@dataclass(frozen=True)
class Measure:
    """A perturbation measure μ; see the module docstring for the kinds and conventions.

    Example::

        >>> Measure("box", scale="coordinate", half_width=0.01)   # Det-SAM's official measure
        Measure(kind='box', scale='coordinate', half_width=0.01, ...)
    """

    kind: str
    scale: str = "global"
    half_width: float = 1.0
    adaptive: bool = False
    eta: float = 0.01
    sparsity: float = 0.5
    fisher_samples: int = 16
    refresh_epochs: int = 1

    def __post_init__(self) -> None:
        _checks.choice("measure.kind", self.kind, KINDS)
        _checks.choice("measure.scale", self.scale, SCALES)
        object.__setattr__(self, "half_width", _checks.number(
            "measure.half_width", self.half_width, low=0.0, low_open=True))
        object.__setattr__(self, "adaptive", _checks.boolean("measure.adaptive", self.adaptive))
        object.__setattr__(self, "eta", _checks.number("measure.eta", self.eta, low=0.0))
        object.__setattr__(self, "sparsity", _checks.number(
            "measure.sparsity", self.sparsity, low=0.0, high=1.0, high_open=True))
        object.__setattr__(self, "fisher_samples", _checks.integer(
            "measure.fisher_samples", self.fisher_samples, low=1))
        object.__setattr__(self, "refresh_epochs", _checks.integer(
            "measure.refresh_epochs", self.refresh_epochs, low=1))

    @property
    def is_random(self) -> bool:
        return self.kind in RANDOM_KINDS

    @property
    def uses_weights(self) -> bool:
        """Whether v depends on the current weights (T = |w| + η)."""
        return self.kind == "adaptive_ascent" or (self.is_random and self.adaptive)

    def coordinate_scale(self, d: int) -> float:
        """The per-draw constant for d perturbed coordinates: the Gaussian σ, the sphere radius
        or the box half-width a (before the optional adaptive scaling)."""
        if not self.is_random:
            raise ValueError(f"the {self.kind} measure is deterministic")
        if self.kind == "gaussian":
            return 1.0 if self.scale == "coordinate" else 1.0 / math.sqrt(d)
        if self.kind == "sphere":
            return math.sqrt(d) if self.scale == "coordinate" else 1.0
        return self.half_width if self.scale == "coordinate" else math.sqrt(3.0 / d)

    def sample(self, draws: int, d: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """``draws`` i.i.d. vectors v ∈ R^d as rows (random kinds, without adaptive scaling)."""
        out = torch.empty(draws, d, dtype=dtype, device=device)
        fill_random_(self, [out], d, [generator], rowwise=True)
        return out

    def to_obj(self) -> dict[str, Any]:
        data = asdict(self)
        return {"kind": self.kind, **{k: data[k] for k in _FIELDS_OF_KIND[self.kind]}}

    @classmethod
    def from_obj(cls, obj: Any) -> Measure:
        """From a :class:`Measure`, a kind name or a dict ``{"kind": ..., ...}``."""
        if isinstance(obj, Measure):
            return obj
        if isinstance(obj, str):
            obj = {"kind": obj}
        obj = _checks.mapping("measure", obj)
        if "kind" not in obj:
            raise SpecError("measure.kind", "missing", KINDS)
        kind = _checks.choice("measure.kind", obj["kind"], KINDS)
        _checks.known_keys("measure", obj, ("kind",) + _FIELDS_OF_KIND[kind])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


def fill_random_(measure: Measure, buffers: list[Tensor], d: int,
                 generators: list[torch.Generator | None], rowwise: bool = False) -> None:
    """Fill ``buffers`` in place with one draw of a random measure.

    With ``rowwise=False`` the buffers are the flat pieces (one per device) of a single vector of
    total length ``d``; with ``rowwise=True`` a single 2-D buffer holds one draw per row.
    """
    scale = measure.coordinate_scale(d)
    if measure.kind == "box":
        for buf, gen in zip(buffers, generators, strict=True):
            buf.uniform_(-scale, scale, generator=gen)
        return
    for buf, gen in zip(buffers, generators, strict=True):
        buf.normal_(0.0, 1.0, generator=gen)
    if measure.kind == "gaussian":
        if scale != 1.0:
            torch._foreach_mul_(buffers, scale)
        return
    # sphere: normalize jointly over all pieces (or per row)
    if rowwise:
        (buf,) = buffers
        buf.mul_(scale / torch.linalg.vector_norm(buf, dim=1, keepdim=True))
        return
    device = buffers[0].device
    sq = torch.stack([torch.linalg.vector_norm(b, dtype=torch.float64).to(device) ** 2
                      for b in buffers]).sum()
    factor = scale / torch.sqrt(sq)
    for buf in buffers:
        buf.mul_(factor.to(device=buf.device, dtype=buf.dtype))
