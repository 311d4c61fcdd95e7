"""Is a member a sharpness *penalty*? Checked through its implied measure on random spectra.

A member of the family penalizes sharpness when its implied measure S(H) = ψ(E_{v~μ} φ(½vᵀHv))
is non-decreasing in every eigenvalue of a positive semi-definite Hessian: making any direction
sharper never lowers S. A member that fails this (e.g. a polynomial φ with a negative slope, or
a ψ that falls) *rewards* sharpness; trained with λ > 0 it drives the weights towards sharper
minima. Search spaces check every sampled member with :func:`check_penalty` and repair the
ones that fail with :func:`repair_penalty`.

The check is numerical, not a proof: for ``spectra`` random diagonal PSD Hessians at overall
scales from 1e-3 to 1e2 (so that ½vᵀHv covers the range the loss differences D take in
training), it raises each eigenvalue in turn by half and compares S before
and after. Monte Carlo values use common random numbers (the same draws before and after), and a
drop must exceed three standard errors to count.

Example::

    >>> from metasam import SharpnessSpec
    >>> check_penalty(SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0, 1, 0.5]})).ok
    True
    >>> check_penalty(SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0, -1]})).ok
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from metasam.family.spec import SharpnessSpec


@dataclass(frozen=True)
class PenaltyCheck:
    """The outcome of :func:`check_penalty`: ``ok``, and the worst relative drop of S seen when
    one eigenvalue was raised (0 when none fell), with the spectrum where it happened."""

    ok: bool
    worst_drop: float
    spectrum: tuple[float, ...] = ()


def check_penalty(spec: SharpnessSpec, *, spectra: int = 8, dim: int = 4, seed: int = 0,
                  samples: int = 4000, bump: float = 0.5) -> PenaltyCheck:
    """Whether S(H) is non-decreasing in every eigenvalue of random PSD Hessians."""
    gen = torch.Generator().manual_seed(seed)
    weights = None
    if spec.measure.uses_weights:
        weights = torch.rand(dim, generator=gen, dtype=torch.float64) + 0.1
    mask = torch.ones(dim, dtype=torch.bool) if spec.measure.kind == "sparse_ascent" else None
    worst, where = 0.0, ()
    for k in range(spectra):
        # spectra at overall scales 1e-3 .. 1e2, each spreading over two decades
        level = -3.0 + 5.0 * k / max(1, spectra - 1)
        eig = torch.pow(10.0, level + torch.rand(dim, generator=gen, dtype=torch.float64) * 2 - 1)
        base = _value(spec, eig, weights, mask, samples, seed + k)
        if base is None:
            continue
        for i in range(dim):
            bumped = eig.clone()
            bumped[i] *= 1 + bump
            after = _value(spec, bumped, weights, mask, samples, seed + k)
            if after is None:
                continue
            tolerance = 3 * (base[1] + after[1]) + 1e-9 * max(abs(base[0]), abs(after[0]), 1e-12)
            drop = base[0] - after[0]
            if drop > tolerance:
                relative = drop / max(abs(base[0]), 1e-12)
                if relative > worst:
                    worst, where = relative, tuple(float(e) for e in eig)
    return PenaltyCheck(worst == 0.0, worst, where)


def _value(spec: SharpnessSpec, eig: torch.Tensor, weights: Any, mask: Any, samples: int,
           seed: int) -> tuple[float, float] | None:
    value = spec.implied_measure(torch.diag(eig), weights=weights, mask=mask, samples=samples,
                                 seed=seed)
    if not (math.isfinite(value.value) and math.isfinite(value.stderr)):
        return None  # e.g. an exponential φ whose expectation diverges on this spectrum
    return value.value, value.stderr


def repair_penalty(spec: SharpnessSpec) -> tuple[SharpnessSpec, str | None]:
    """``spec`` unchanged when it is a penalty; otherwise the nearest member that is, with a
    one-line note of what changed.

    Repairs, in order: polynomial φ blocks get the absolute values of their coefficients, MLP φ
    blocks the absolute values of their weights (with increasing activations both make φ
    non-decreasing on D ≥ 0); if S still falls somewhere, φ and ψ are replaced by the trace
    measure's (φ = ψ = identity), keeping μ, n, ρ and λ.
    """
    if check_penalty(spec).ok:
        return spec, None
    blocks = []
    for block in spec.phi.to_obj():
        block = dict(block)
        if block["fn"] == "polynomial":
            block["coefficients"] = [abs(c) for c in block["coefficients"]]
        elif block["fn"] == "mlp":
            block["weights"] = [[[abs(w) for w in row] for row in layer]
                                for layer in block["weights"]]
        blocks.append(block)
    try:
        candidate = spec.replace(phi=blocks)
        if check_penalty(candidate).ok:
            return candidate, "φ made non-decreasing (absolute coefficients/weights)"
    except ValueError:
        pass
    n = spec.n
    return spec.replace(phi="identity", psi="identity", n=n), (
        "φ, ψ replaced by the trace measure's (S fell when an eigenvalue rose)")


def check_over_training(spec: SharpnessSpec, **options: Any) -> list[tuple[float, PenaltyCheck]]:
    """:func:`check_penalty` of every member a spec trains with: ``(from, check)`` per stretch
    of training between ``spec.vary``'s breakpoints (one entry without ``vary``). ρ and λ do
    not change whether a member is a penalty; φ's and ψ's phases do. A stretch without the
    term (λ or ρ at 0) passes."""
    out = []
    for start, _, member in spec.over_training():
        check = PenaltyCheck(True, 0.0) if member.is_plain else check_penalty(member, **options)
        out.append((start, check))
    return out
