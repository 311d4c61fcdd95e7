"""The measure a spec implies on a given Hessian: S(H) = ψ(E_{v~μ} φ(½vᵀHv)).

Closed forms (derived; docs/family.md §1):

- v = c·T·z with z ~ N(0, I): q = ½vᵀHv = zᵀKz with K = (c²/2)·THT. Its cumulants are
  κ_k = 2^(k−1)(k−1)!·tr(K^k), which give every moment E[q^k] (so E[poly(q)] exactly), and
  E[exp(s·q)] = det(I − 2sK)^(−1/2) when I − 2sK ≻ 0 (+∞ otherwise).
- v = r·T·u with u uniform on the unit sphere: E[(uᵀKu)^k] = E[(zᵀKz)^k] / Π_{i<k}(d + 2i).
- Ascent measures (radius 1): ½·max_{‖T⁻¹v‖=1} vᵀHv = ½λ_max(THT) (T = I for SAM; for SSAM the
  principal submatrix on the mask).

- A box measure on a *diagonal* Hessian: q = Σ_i a_i u_i² with independent uniform u_i, so the
  cumulants of q are sums of one-dimensional ones (polynomial φ) and E[exp(s·q)] is a product of
  one-dimensional Gaussian integrals (erf for s < 0, erfi for s > 0).

Everything else (box measures on non-diagonal H, saturating or MLP φ, exp φ on the sphere) is
Monte Carlo, with the delta-method standard error of ψ(mean φ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from metasam.family.measures import Measure
    from metasam.family.phi import Phi
    from metasam.family.psi import Psi


class Member(Protocol):
    """What the implied measure reads of a member (a :class:`~metasam.SharpnessSpec` is one):
    its φ, ψ and μ."""

    phi: Phi
    psi: Psi
    measure: Measure


@dataclass(frozen=True)
class MeasureValue:
    """A measured or computed sharpness value with its standard error (0 for closed forms)."""

    value: float
    stderr: float
    method: str  # "closed_form" or "monte_carlo"
    samples: int = 0

    def __float__(self) -> float:
        return self.value


def _as_matrix(h: Any) -> Tensor:
    h = torch.as_tensor(h, dtype=torch.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"hessian must be a square matrix, got shape {tuple(h.shape)}")
    if not torch.allclose(h, h.T, rtol=1e-8, atol=1e-10 * float(h.abs().max().clamp_min(1))):
        raise ValueError("hessian must be symmetric")
    return (h + h.T) / 2


def _scaling(spec: Member, d: int, weights: Any | None) -> Tensor:
    """T = |w| + η for adaptive measures, ones otherwise."""
    if not spec.measure.uses_weights:
        return torch.ones(d, dtype=torch.float64)
    if weights is None:
        raise ValueError(f"the {spec.measure.kind} measure (adaptive) needs the weights: "
                         "pass weights=<the d parameters>")
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.numel() != d:
        raise ValueError(f"weights has {w.numel()} entries, the hessian is {d}×{d}")
    return w.abs() + spec.measure.eta


def moments_from_cumulants(kappa: list[float]) -> list[float]:
    """Raw moments μ_0..μ_K from cumulants κ_0..κ_K (κ_0 unused)."""
    mu = [1.0]
    for n in range(1, len(kappa)):
        mu.append(sum(math.comb(n - 1, k - 1) * kappa[k] * mu[n - k] for k in range(1, n + 1)))
    return mu


def cumulants_from_moments(mu: list[float]) -> list[float]:
    """Cumulants κ_0..κ_K (κ_0 = 0) from raw moments μ_0..μ_K (μ_0 = 1)."""
    kappa = [0.0]
    for n in range(1, len(mu)):
        kappa.append(mu[n] - sum(math.comb(n - 1, k - 1) * kappa[k] * mu[n - k]
                                 for k in range(1, n)))
    return kappa


def gaussian_moments(eigenvalues: Tensor, order: int) -> list[float]:
    """E[q^k], k = 0..order, for q = zᵀKz, z ~ N(0, I) and K with the given eigenvalues."""
    ev = eigenvalues.to(torch.float64)
    kappa = [0.0] + [2.0 ** (k - 1) * math.factorial(k - 1) * float((ev ** k).sum())
                     for k in range(1, order + 1)]
    return moments_from_cumulants(kappa)


def _box_diagonal(spec: Member, coefficients: Tensor, half_width: float
                  ) -> list[float] | None:
    """E[φ_j(q)] in closed form for q = Σ_i a_i u_i², u_i ~ U[−h, h] independent (a box measure
    on a diagonal Hessian): polynomial φ through the summed cumulants of the independent terms,
    exponential φ as a product of one-dimensional Gaussian integrals (erf, erfi)."""
    from scipy.special import erf, erfi

    forms = spec.phi.closed_forms()
    if any(f is None for f in forms):
        return None
    a = [float(c) for c in coefficients]
    max_order = max((len(f[1]) - 1 for f in forms if f and f[0] == "poly"), default=0)
    values = []
    if max_order:
        kappa = [0.0] * (max_order + 1)
        for ai in a:  # raw moments of a_i·u² are a_i^j·h^(2j)/(2j + 1)
            raw = [1.0] + [ai ** j * half_width ** (2 * j) / (2 * j + 1)
                           for j in range(1, max_order + 1)]
            for k, cum in enumerate(cumulants_from_moments(raw)):
                kappa[k] += cum
        moments = moments_from_cumulants(kappa)
    for kind, param in forms:  # type: ignore[misc]
        if kind == "poly":
            values.append(sum(c * moments[k] for k, c in enumerate(param)))
            continue
        log_value = 0.0
        for ai in a:
            b = param * ai  # E exp(b·u²) = (1/2h) ∫_{−h}^{h} exp(b u²) du
            if b == 0:
                continue
            root = math.sqrt(abs(b))
            integral = erf(half_width * root) if b < 0 else erfi(half_width * root)
            log_value += math.log(math.sqrt(math.pi) / root * float(integral) /
                                  (2 * half_width))
        values.append(math.exp(log_value) if log_value < 700 else math.inf)
    return values


def _closed_form_components(spec: Member, eigenvalues: Tensor, d: int,
                            radius: float | None) -> list[float] | None:
    """E[φ_j(q)] in closed form, or None when any component has none.

    ``radius=None``: Gaussian q = zᵀKz; otherwise q = radius²·uᵀKu on the unit sphere.
    """
    forms = spec.phi.closed_forms()
    if any(f is None for f in forms):
        return None
    max_order = max((len(f[1]) - 1 for f in forms if f and f[0] == "poly"), default=0)
    if radius is not None and any(f and f[0] == "exp" for f in forms):
        return None
    moments = gaussian_moments(eigenvalues, max_order)
    if radius is not None:
        moments = [m * radius ** (2 * k) / math.prod(d + 2 * i for i in range(k))
                   for k, m in enumerate(moments)]
    values = []
    for kind, param in forms:  # type: ignore[misc]
        if kind == "poly":
            values.append(sum(c * moments[k] for k, c in enumerate(param)))
        else:  # exp(s·q) for Gaussian q
            factors = 1 - 2 * param * eigenvalues
            if bool((factors <= 0).any()):
                values.append(math.inf)
            else:
                values.append(float(torch.exp(-0.5 * torch.log(factors).sum())))
    return values


def implied_measure(spec: Member, hessian: Any, *, weights: Any | None = None,
                    mask: Any | None = None, samples: int = 200_000,
                    seed: int = 0) -> MeasureValue:
    """See :meth:`SharpnessSpec.implied_measure`."""
    h = _as_matrix(hessian)
    d = h.shape[0]
    measure = spec.measure
    t = _scaling(spec, d, weights)
    k_full = t[:, None] * h * t[None, :]

    def psi_of(values: list[float]) -> float:
        return float(spec.psi(torch.tensor(values, dtype=torch.float64), None))

    if not measure.is_random:
        if measure.kind == "sparse_ascent":
            if mask is None:
                raise ValueError("the sparse_ascent measure needs mask=<d booleans>")
            keep = torch.as_tensor(mask).reshape(-1).to(torch.bool)
            k_full = k_full[keep][:, keep]
        lam_max = float(torch.linalg.eigvalsh(k_full)[-1]) if k_full.numel() else 0.0
        q = torch.tensor([0.5 * lam_max], dtype=torch.float64)
        return MeasureValue(psi_of(spec.phi(q)[0].tolist()), 0.0, "closed_form")

    scale = measure.coordinate_scale(d)
    if measure.kind in ("gaussian", "sphere"):
        c2 = scale ** 2 if measure.kind == "gaussian" else 1.0
        eig = torch.linalg.eigvalsh(0.5 * c2 * k_full)
        radius = None if measure.kind == "gaussian" else scale
        values = _closed_form_components(spec, eig, d, radius)
        if values is not None:
            return MeasureValue(psi_of(values), 0.0, "closed_form")
    elif measure.kind == "box" and bool((k_full == torch.diag(torch.diagonal(k_full))).all()):
        values = _box_diagonal(spec, 0.5 * torch.diagonal(k_full), scale)
        if values is not None:
            return MeasureValue(psi_of(values), 0.0, "closed_form")
    return _monte_carlo(spec, h, t, samples, seed)


def _monte_carlo(spec: Member, h: Tensor, t: Tensor, samples: int,
                 seed: int) -> MeasureValue:
    d = h.shape[0]
    gen = torch.Generator().manual_seed(seed)
    m = spec.phi.dim
    total = torch.zeros(m, dtype=torch.float64)
    outer = torch.zeros(m, m, dtype=torch.float64)
    chunk = max(1, min(samples, 2_000_000 // max(d, 1)))
    done = 0
    while done < samples:
        rows = min(chunk, samples - done)
        v = spec.measure.sample(rows, d, generator=gen) * t
        q = 0.5 * ((v @ h) * v).sum(dim=1)
        f = spec.phi(q)
        total += f.sum(0)
        outer += f.T @ f
        done += rows
    mean = total / samples
    cov = outer / samples - torch.outer(mean, mean)
    value = float(spec.psi(mean, None))
    grad = spec.psi.grad(mean, None)
    stderr = math.sqrt(max(float(grad @ cov @ grad), 0.0) / samples)
    return MeasureValue(value, stderr, "monte_carlo", samples)
