"""The published members of the family with their official defaults (docs/family.md §2).

Each preset is one call returning a :class:`~metasam.SharpnessSpec`; keyword overrides change
any spec field, and measure fields may be given directly::

    >>> from metasam import presets
    >>> presets.frob_sam().n
    2
    >>> presets.frob_sam(lam=0.01, n=4).lam
    0.01
    >>> presets.det_sam(half_width=0.05).measure.half_width
    0.05

Random presets keep the official per-coordinate scale convention; pass ``scale="global"`` to make
ρ a radius (then ``half_width`` is unused).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from metasam.errors import SpecError
from metasam.family.measures import Measure
from metasam.family.spec import SharpnessSpec, register_preset

_SPEC_FIELDS = {f.name for f in fields(SharpnessSpec)}
_MEASURE_FIELDS = {f.name for f in fields(Measure)} - {"kind"}


def _make(name: str, overrides: dict[str, Any], **defaults: Any) -> SharpnessSpec:
    spec = SharpnessSpec(name=name, **defaults)
    measure_changes = {k: overrides.pop(k) for k in list(overrides) if k in _MEASURE_FIELDS}
    unknown = set(overrides) - _SPEC_FIELDS
    if unknown:
        raise SpecError(sorted(unknown)[0], f"unknown override for preset {name!r}",
                        sorted(_SPEC_FIELDS | _MEASURE_FIELDS))
    if measure_changes:
        overrides["measure"] = replace(spec.measure, **measure_changes)
    return replace(spec, **overrides) if overrides else spec


@register_preset
def sgd(**overrides: Any) -> SharpnessSpec:
    """No sharpness term (λ = 0): one forward/backward pass per step."""
    return _make("sgd", overrides, lam=0.0)


@register_preset
def sam(**overrides: Any) -> SharpnessSpec:
    """SAM (Foret et al.): ascent measure, φ = ψ = id, ρ = 0.05."""
    return _make("sam", overrides, measure="ascent", rho=0.05, lam=1.0)


@register_preset
def asam(**overrides: Any) -> SharpnessSpec:
    """ASAM (Kwon et al.): adaptive ascent with T = |w| + η, η = 0.01, ρ = 0.5."""
    return _make("asam", overrides, measure={"kind": "adaptive_ascent", "eta": 0.01}, rho=0.5,
                 lam=1.0)


@register_preset
def ssam(**overrides: Any) -> SharpnessSpec:
    """SSAM-F (Mi et al.): ascent masked to the top 50% Fisher coordinates (16 samples, mask
    refreshed every epoch), ρ = 0.1."""
    return _make("ssam", overrides, measure={"kind": "sparse_ascent", "sparsity": 0.5,
                                             "fisher_samples": 16, "refresh_epochs": 1},
                 rho=0.1, lam=1.0)


@register_preset
def trace_sam(**overrides: Any) -> SharpnessSpec:
    """Trace-SAM: Gaussian (σ = ρ per coordinate), φ = ψ = id, ρ = 0.01, λ = 1, n = 1."""
    return _make("trace_sam", overrides, measure={"kind": "gaussian", "scale": "coordinate"},
                 rho=0.01, lam=1.0, n=1)


@register_preset
def frob_sam(**overrides: Any) -> SharpnessSpec:
    """Frob-SAM: Gaussian per coordinate, φ = (t, t²), ψ = unbiased ½-variance, ρ = 0.005,
    λ = 0.005, n = 2 (the update g0 + (λ/ρ²)·Ĉov_unbiased(L_i, g_i))."""
    return _make("frob_sam", overrides, phi=["identity", "square"],
                 psi={"fn": "variance", "unbiased": True},
                 measure={"kind": "gaussian", "scale": "coordinate"}, rho=0.005, lam=0.005, n=2)


@register_preset
def det_sam(**overrides: Any) -> SharpnessSpec:
    """Det-SAM: box measure e = ρ·U[−h, h]^d with h = 0.01, φ = exp(−t/2), ψ = s⁻², ρ = 1,
    λ = 1, n = 1 (update g0 + λ·e^D·(g1 − g0), computed in float64; an overflow is reported as
    a non-finite step, never written into the weights)."""
    return _make("det_sam", overrides, phi={"fn": "exp", "scale": -0.5}, psi="inverse_square",
                 measure={"kind": "box", "scale": "coordinate", "half_width": 0.01}, rho=1.0,
                 lam=1.0, n=1)


@register_preset
def rwp(**overrides: Any) -> SharpnessSpec:
    """Random weight perturbation in the mixed-loss form (Bisla et al., AISTATS 2022; Li et al.,
    "Efficient generalization improvement guided by random weight perturbation", 2022):
    Gaussian noise relative to each weight, e ~ N(0, ρ²·diag(|w| + η)²) with η = 0.01, update
    g0 + λ·(g1 − g0) (the gradient of (1 − λ)·L(x) + λ·L(x + e)), ρ = 0.05, λ = 0.5, n = 1.
    An instance of the family with φ = ψ = id; the defaults are ours, in the papers' range."""
    return _make("rwp", overrides, measure={"kind": "gaussian", "scale": "coordinate",
                                            "adaptive": True, "eta": 0.01},
                 rho=0.05, lam=0.5, n=1)


@register_preset
def tilted_sam(**overrides: Any) -> SharpnessSpec:
    """Tilted SAM (Li, Beirami et al., "Tilted Sharpness-Aware Minimization", 2024): the
    log-mean-exp (1/τ)·log mean_i exp(τ·D_i) over n random perturbations, a smooth maximum that
    moves from the average (τ → 0, Trace-SAM) to the worst perturbation (τ → ∞). Here φ = exp(τ·t)
    with τ = 1, ψ = log, Gaussian μ with ρ = 0.05 a radius, n = 2, relative λ = 1 (the step
    follows the softmax(τ·D)-weighted average of the perturbed gradients), |D| clipped at 50."""
    return _make("tilted_sam", overrides, phi={"fn": "exp", "scale": 1.0}, psi="log",
                 measure={"kind": "gaussian", "scale": "global"}, rho=0.05, lam=1.0, n=2,
                 lam_scale="relative", d_clip=50.0)


PRESETS = {f.__name__: f for f in (sgd, sam, asam, ssam, trace_sam, frob_sam, det_sam, rwp,
                                   tilted_sam)}
NAMES = tuple(PRESETS)


def get(name: str, **overrides: Any) -> SharpnessSpec:
    """The preset called ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise SpecError("preset", f"unknown preset {name!r}", NAMES)
    return PRESETS[name](**overrides)
