"""Shared test helpers: small models, recording closures and Monte-Carlo tolerances."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


class Quadratic(nn.Module):
    """L(x) = ½ (x − c)ᵀ H (x − c): exact Hessian H."""

    def __init__(self, h: Tensor, x0: Tensor | None = None, center: Tensor | None = None):
        super().__init__()
        d = h.shape[0]
        self.register_buffer("h", h.clone())
        self.register_buffer("center", torch.zeros(d, dtype=h.dtype) if center is None
                             else center.clone())
        self.x = nn.Parameter(torch.zeros(d, dtype=h.dtype) if x0 is None else x0.clone())

    def forward(self) -> Tensor:
        z = self.x - self.center
        return 0.5 * z @ self.h @ z


def random_spd(d: int, low: float, high: float, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(low, high, d, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


def tiny_mlp(dtype: torch.dtype = torch.float64, seed: int = 0, width: int = 4,
             inputs: int = 2, outputs: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, outputs)).to(dtype)


class Recorder:
    """A closure over ``loss_fn`` that records the parameters at every call."""

    def __init__(self, params: list[Tensor], loss_fn: Callable[[], Tensor]):
        self.params = params
        self.loss_fn = loss_fn
        self.points: list[list[Tensor]] = []

    def __call__(self) -> Tensor:
        self.points.append([p.detach().clone() for p in self.params])
        for p in self.params:
            p.grad = None
        loss = self.loss_fn()
        loss.backward()
        return loss

    def perturbations(self) -> list[list[Tensor]]:
        """e_i = x_i − x_0 for the perturbed calls of the last step."""
        x0 = self.points[0]
        return [[pi - p0 for pi, p0 in zip(point, x0)] for point in self.points[1:]]


def assert_within_stderr(estimate: float, stderr: float, target: float, *, sigmas: float = 4.0,
                         max_relative_stderr: float = 0.05) -> None:
    """The estimate agrees with the target within ``sigmas`` standard errors, and the standard
    error is small enough for the comparison to mean something."""
    assert math.isfinite(estimate) and math.isfinite(stderr)
    assert stderr <= max_relative_stderr * abs(target), (
        f"standard error {stderr:.3g} too large against target {target:.6g}")
    assert abs(estimate - target) <= sigmas * stderr, (
        f"estimate {estimate:.6g} ± {stderr:.3g} is {abs(estimate - target) / stderr:.1f} "
        f"standard errors from {target:.6g}")


def mean_and_stderr(values: list[float] | Tensor) -> tuple[float, float]:
    t = torch.as_tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True) / math.sqrt(t.numel()))
