"""Lanczos tridiagonalization, batched over starting vectors, with full reorthogonalization.

Used for the top eigenvalues (one start, Ritz values and their residual bounds) and for stochastic
Lanczos quadrature (many starts at once: each run's Ritz values are quadrature nodes and the
squared first components of its Ritz vectors the weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Tridiagonal:
    """Per run r: the Lanczos coefficients alpha[r, :m_r] and beta[r, :m_r] (beta[r, j] couples
    step j and j + 1; beta[r, m_r − 1] is the residual norm after the last step)."""

    alpha: Tensor  # (runs, steps) float64
    beta: Tensor  # (runs, steps) float64
    steps: Tensor  # (runs,) int64: steps actually taken (an invariant subspace stops a run)

    def eig(self, run: int) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and Ritz vectors (columns) of run ``run``'s tridiagonal."""
        m = int(self.steps[run])
        a, b = self.alpha[run, :m], self.beta[run, :m - 1]
        t = torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)
        return torch.linalg.eigh(t)


def lanczos(matvec: MatVec, starts: Tensor, steps: int, storage: torch.dtype = torch.float64,
            tol: float = 1e-10) -> Tridiagonal:
    """``steps`` Lanczos iterations from each row of ``starts`` (k, d) at once.

    ``matvec`` maps (k, d) to (k, d) float64. The Krylov bases (k × steps × d, in ``storage``)
    are kept for full reorthogonalization (twice, classical Gram–Schmidt), the accurate choice for
    the few dozen steps Hessian spectra need.
    """
    k, d = starts.shape
    steps = min(steps, d)
    device = starts.device
    basis = torch.zeros(k, steps, d, dtype=storage, device=device)
    alpha = torch.zeros(k, steps, dtype=torch.float64, device=device)
    beta = torch.zeros(k, steps, dtype=torch.float64, device=device)
    taken = torch.full((k,), steps, dtype=torch.int64)
    active = torch.ones(k, dtype=torch.bool, device=device)
    q = starts.to(torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
    for j in range(steps):
        basis[:, j] = q.to(storage)
        w = matvec(q.to(storage)).to(torch.float64)
        alpha[:, j] = (w * q).sum(1)
        for _ in range(2):  # full reorthogonalization against the whole basis
            previous = basis[:, : j + 1].to(torch.float64)
            w = w - torch.einsum("kj,kjd->kd", torch.einsum("kd,kjd->kj", w, previous), previous)
        norm = torch.linalg.vector_norm(w, dim=1)
        beta[:, j] = torch.where(active, norm, torch.zeros_like(norm))
        scale = alpha[:, : j + 1].abs().amax(1).clamp_min(1e-300)
        stopped = active & (norm <= tol * scale)
        for r in torch.nonzero(stopped).flatten().tolist():
            taken[r] = j + 1
        active = active & ~stopped
        if not bool(active.any()):
            break
        q = torch.where(active[:, None], w / norm.clamp_min(1e-300)[:, None], q)
    return Tridiagonal(alpha, beta, taken)


def top_eigenvalues(matvec: MatVec, dim: int, k: int, steps: int, generator: torch.Generator,
                    device: torch.device, storage: torch.dtype = torch.float64
                    ) -> tuple[Tensor, Tensor]:
    """The k largest Ritz values after ``steps`` Lanczos steps from a random start, with their
    residual bounds |β_m·s_m,i| (an eigenvalue of H lies within that distance of each)."""
    start = torch.randn(1, dim, generator=generator, dtype=torch.float64).to(device)
    tri = lanczos(matvec, start, steps, storage)
    values, vectors = tri.eig(0)
    m = int(tri.steps[0])
    bounds = (tri.beta[0, m - 1] * vectors[-1]).abs()
    order = torch.argsort(values, descending=True)[:k]
    return values[order].cpu(), bounds[order].cpu()


def quadrature(matvec: MatVec, starts: Tensor, steps: int,
               storage: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature: nodes and weights (runs, steps), weights summing to 1 per
    run (zero-padded where a run stopped early)."""
    tri = lanczos(matvec, starts, steps, storage)
    runs, width = tri.alpha.shape
    nodes = torch.zeros(runs, width, dtype=torch.float64)
    weights = torch.zeros(runs, width, dtype=torch.float64)
    for r in range(runs):
        values, vectors = tri.eig(r)
        m = values.numel()
        nodes[r, :m] = values.cpu()
        weights[r, :m] = (vectors[0] ** 2).cpu()
    return nodes, weights
