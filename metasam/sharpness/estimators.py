"""Matrix-free sharpness estimates, each with its standard error and probe count."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metasam.family.spec import SharpnessSpec
from metasam.sharpness.hvp import HessianOperator
from metasam.sharpness.lanczos import quadrature, top_eigenvalues

PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass
class Estimate:
    """A sharpness estimate. ``stderr`` is the Monte-Carlo standard error for stochastic
    estimates and the Lanczos residual bound for eigenvalues; ``probes`` counts the Hessian-vector
    products it used. ``extra`` holds measure-specific detail (all eigenvalues, the density)."""

    value: float
    stderr: float
    probes: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr, "probes": self.probes, **self.extra}


def _mean_se(samples: Tensor) -> tuple[float, float]:
    n = samples.numel()
    mean = float(samples.mean())
    se = float(samples.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    return mean, se


def probes(count: int, dim: int, generator: torch.Generator, distribution: str = "rademacher"
           ) -> Tensor:
    """``count`` isotropic probes (E vvᵀ = I) as rows, float64 on the CPU."""
    if distribution == "rademacher":
        return torch.randint(0, 2, (count, dim), generator=generator).double() * 2 - 1
    if distribution == "gaussian":
        return torch.randn(count, dim, generator=generator, dtype=torch.float64)
    raise ValueError(f"distribution: unknown value {distribution!r}; allowed: "
                     f"{', '.join(PROBE_DISTRIBUTIONS)}")


def _stream(op: HessianOperator, count: int, sample: Any, reduce: Any) -> Tensor:
    """Per-probe statistics ``reduce(v, Hv)`` over ``count`` probes drawn ``op.chunk`` at a time
    by ``sample(k)``, so that no more than a chunk of d-vectors is alive at once."""
    stats = []
    for start in range(0, count, op.chunk):
        v = sample(min(op.chunk, count - start))
        hv = op.matvec(v.to(op.device)).cpu()
        stats.append(reduce(v, hv))
    return torch.cat(stats)


def trace_and_frobenius(op: HessianOperator, count: int, generator: torch.Generator,
                        distribution: str = "rademacher") -> tuple[Estimate, Estimate]:
    """Hutchinson's tr H = E vᵀHv and ‖H‖_F² = E‖Hv‖² from the same probes."""
    stats = _stream(op, count, lambda k: probes(k, op.dim, generator, distribution),
                    lambda v, hv: torch.stack([(v * hv).sum(1), (hv * hv).sum(1)], dim=1))
    quad, sq = stats[:, 0], stats[:, 1]
    t_mean, t_se = _mean_se(quad)
    f_mean, f_se = _mean_se(sq)
    return Estimate(t_mean, t_se, count), Estimate(f_mean, f_se, count)


def eigenvalues(op: HessianOperator, k: int, generator: torch.Generator,
                steps: int | None = None) -> Estimate:
    """The k largest eigenvalues by Lanczos; ``value`` is λ_max, ``extra['eigenvalues']`` all k
    and ``extra['bounds']`` their residual bounds."""
    steps = steps or min(op.dim, max(3 * k, 40))
    storage = torch.float64 if op.dim * steps <= 50_000_000 else op.dtype
    values, bounds = top_eigenvalues(op.matvec, op.dim, k, steps, generator, op.device, storage)
    return Estimate(float(values[0]), float(bounds[0]), steps,
                    {"eigenvalues": values.tolist(), "bounds": bounds.tolist()})


def density(op: HessianOperator, runs: int, generator: torch.Generator, steps: int = 30,
            grid_points: int = 400, sigma: float | None = None, moments: int = 4) -> Estimate:
    """Spectral density by stochastic Lanczos quadrature (Rademacher starts), smoothed with a
    Gaussian kernel on a grid. ``value`` is the mean eigenvalue tr(H)/d; ``extra`` holds the grid,
    the density, the quadrature nodes and weights, and the moments E λ^k = tr(H^k)/d with their
    standard errors across runs."""
    steps = min(steps, op.dim)
    storage = torch.float64 if runs * steps * op.dim <= 50_000_000 else op.dtype
    starts = probes(runs, op.dim, generator).to(op.device)
    nodes, weights = quadrature(op.matvec, starts, steps, storage)
    per_run = [(weights * nodes ** k).sum(1) for k in range(1, moments + 1)]
    moment_stats = [_mean_se(m) for m in per_run]
    low, high = float(nodes[weights > 0].min()), float(nodes[weights > 0].max())
    spread = max(high - low, 1e-12)
    sigma = sigma or spread / 100
    grid = torch.linspace(low - 5 * sigma - 0.05 * spread, high + 5 * sigma + 0.05 * spread,
                          grid_points, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / sigma) ** 2) / (
        sigma * math.sqrt(2 * math.pi))
    values = (kernel * weights[None]).sum(2).mean(1)
    mean, se = moment_stats[0]
    return Estimate(mean, se, runs * steps, {
        "grid": grid.tolist(), "density": values.tolist(), "sigma": sigma,
        "nodes": nodes.tolist(), "weights": weights.tolist(),
        "moments": [{"k": k + 1, "value": m, "stderr": s} for k, (m, s) in
                    enumerate(moment_stats)]})


def spec_measure(op: HessianOperator, spec: SharpnessSpec, count: int,
                 generator: torch.Generator, mask: Tensor | None = None) -> Estimate:
    """ψ(mean φ(½vᵀHv)) over ``count`` draws from the spec's μ, by Hessian-vector products
    (not loss differences); the delta-method standard error. Ascent measures give
    ψ(φ(½λ_max(THT))) by Lanczos."""
    measure = spec.measure
    weights = op.flat_params().double().cpu()
    scale = (weights.abs() + measure.eta if measure.uses_weights
             else torch.ones(op.dim, dtype=torch.float64))
    if not measure.is_random:
        if measure.kind == "sparse_ascent":
            if mask is None:
                raise ValueError("the sparse_ascent measure needs mask=<the Fisher mask, flat>")
            scale = scale * mask.reshape(-1).double().cpu()
        scaled_device = scale.to(op.device)

        def scaled(v: Tensor) -> Tensor:
            return op.matvec(v * scaled_device) * scaled_device

        top = eigenvalues(_Scaled(op, scaled), 1, generator)
        q = torch.tensor([0.5 * top.value], dtype=torch.float64)
        value = float(spec.psi(spec.phi(q)[0], None))
        return Estimate(value, float("nan"), top.probes, {"lambda_max": top.value})
    q = _stream(op, count, lambda k: measure.sample(k, op.dim, generator=generator) * scale,
                lambda v, hv: 0.5 * (v * hv).sum(1))
    f = spec.phi(q)
    mean = f.mean(0)
    cov = torch.cov(f.T).reshape(f.shape[1], f.shape[1]) if count > 1 else torch.zeros(1, 1)
    grad = spec.psi.grad(mean, None)
    value = float(spec.psi(mean, None))
    se = math.sqrt(max(float(grad @ cov @ grad), 0.0) / count)
    return Estimate(value, se, count)


class _Scaled:
    """An operator-like view v ↦ T·H·T·v (for adaptive and sparse ascent measures)."""

    def __init__(self, op: HessianOperator, matvec: Any) -> None:
        self.matvec = matvec
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device


# --- names -------------------------------------------------------------------------------------

BUILTIN = ("trace", "frob", "lmax", "density")
_TOP = re.compile(r"^top(\d+)$")


def measure_names() -> tuple[str, ...]:
    """Every name :func:`metasam.sharpness.estimate` understands (``topK`` for any K)."""
    from metasam.family.presets import NAMES

    return BUILTIN + ("topK",) + tuple(n for n in NAMES if n != "sgd")


def check_name(name: str) -> str:
    from metasam.family.presets import NAMES

    if name in BUILTIN or _TOP.match(name) or (name in NAMES and name != "sgd"):
        return name
    raise ValueError(f"measures: unknown measure {name!r}; allowed: "
                     f"{', '.join(measure_names())}")
