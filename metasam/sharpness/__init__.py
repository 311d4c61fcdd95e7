"""Hessian sharpness of real models, matrix-free: trace, ‖H‖_F², top eigenvalues, spectral
density, and the measure of any :class:`~metasam.SharpnessSpec` evaluated on the Hessian.

    >>> from metasam.sharpness import estimate
    >>> results = estimate(model, F.cross_entropy, batches, ["trace", "frob", "lmax"], probes=100)
    >>> results["trace"].value, results["trace"].stderr, results["trace"].probes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metasam.family.spec import SharpnessSpec
from metasam.sharpness.estimators import (
    Estimate,
    check_name,
    density,
    eigenvalues,
    measure_names,
    spec_measure,
    trace_and_frobenius,
)
from metasam.sharpness.hvp import HessianOperator, LossFn, batches_from, eval_mode

MEASURES = measure_names()


def estimate(model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple[Tensor, Tensor]],
             measures: Sequence[str | SharpnessSpec] = ("trace", "frob", "lmax"), *,
             probes: int = 100, seed: int = 0, chunk: int = 16, distribution: str = "rademacher",
             lanczos_steps: int | None = None, density_runs: int = 10,
             density_steps: int = 30, mask: Tensor | None = None,
             backend: str = "auto", cache: bool | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Estimate]:
    """Estimate sharpness measures of ``model`` on the fixed ``batches`` (eval mode, restored).

    ``measures``: ``"trace"`` (Hutchinson), ``"frob"`` (‖H‖_F² = E‖Hv‖²), ``"lmax"`` and
    ``"topK"`` (Lanczos), ``"density"`` (stochastic Lanczos quadrature), a preset name
    (``"frob_sam"``: ψ(mean φ(½vᵀHv)) from Hessian-vector products) or a SharpnessSpec. Trace and
    Frobenius share ``probes`` probes; every result carries its standard error and probe count.
    ``cache`` keeps each batch's differentiable gradient for the whole call (faster, more
    memory; by default when examples × parameters ≤ 2·10⁹). ``progress`` is told the number of
    Hessian-vector products computed so far after each batch of them.
    """
    op = HessianOperator(model, loss_fn, batches, chunk=chunk, backend=backend, cache=cache)
    op.on_products = progress
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Estimate] = {}
    names = [m if isinstance(m, str) else m for m in measures]
    wanted = {n for n in names if isinstance(n, str)}
    for n in wanted:
        check_name(n)
    if wanted & {"trace", "frob"}:
        trace, frob = trace_and_frobenius(op, probes, generator, distribution)
        if "trace" in wanted:
            out["trace"] = trace
        if "frob" in wanted:
            out["frob"] = frob
    for item in names:
        if isinstance(item, SharpnessSpec):
            out[item.name or "spec"] = spec_measure(op, item, probes, generator, mask)
        elif item == "lmax":
            out["lmax"] = eigenvalues(op, 1, generator, lanczos_steps)
        elif item.startswith("top"):
            out[item] = eigenvalues(op, int(item[3:]), generator, lanczos_steps)
        elif item == "density":
            out["density"] = density(op, density_runs, generator, density_steps)
        elif item not in ("trace", "frob"):
            from metasam.family import presets

            out[item] = spec_measure(op, presets.get(item), probes, generator, mask)
    op.release()
    return out


def evaluation_batches(data: Any, examples: int, batch_size: int, device: torch.device | str
                       ) -> list[tuple[Tensor, Tensor]]:
    """The first ``examples`` examples of an :class:`~metasam.data.ArrayData`, normalized and
    un-augmented, as fixed batches on ``device``."""
    n = min(examples, len(data))
    x = data.normalize(data.x[:n]).to(device)
    return batches_from(x, data.y[:n].to(device), batch_size)


__all__ = ["Estimate", "HessianOperator", "MEASURES", "estimate", "eval_mode",
           "evaluation_batches"]
