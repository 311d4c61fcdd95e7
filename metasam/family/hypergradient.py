"""Hypergradients of a validation loss with respect to the family's own parameters θ (λ, φ's and
ψ's coefficients), through one optimizer step.

A sharpness-aware step's gradient is g = g0 + Σ_i β_i(θ; D)·(g_i − g0), where the weights β_i
depend on θ and on the n loss differences D_i only (:meth:`SharpnessSpec.surrogate`,
:meth:`SharpnessSpec.weight_scale`). For an SGD step w' = w − η·(g + momentum + decay terms
that do not depend on θ), the exact hypergradient of L_val(w') is

    ∂L_val(w')/∂θ = −η · Σ_i (∂β_i/∂θ) · ⟨∇L_val(w'), g_i − g0⟩,

so it needs n dot products with gradients the step already computed and the Jacobian of n
scalars in θ; :func:`hypergradient` evaluates it (central differences of β in θ, on n scalars,
in float64). Online (:mod:`metasam.training.learned`), ∇L_val is taken at w — the gradient of
a validation batch just before the step — the usual one-step approximation (its error is
O(η); short-horizon bias: Wu et al., ICLR 2018).

θ is named by paths into the spec: ``lam``, ``phi[0].c1`` (coefficient 1 of φ's block 0),
``phi[0].scale``, ``psi.p``, ``psi.t1`` (the coefficient of a polynomial ψ's term 1). ρ is
not among them: D_i and the g_i depend on it through the perturbed passes, which one step's
products cannot differentiate.

    >>> from metasam import presets
    >>> spec = presets.get("sam")
    >>> parameters(spec)
    {'lam': 1.0}
    >>> import torch
    >>> [round(float(b), 6) for b in beta(spec, torch.tensor([0.3], dtype=torch.float64))]
    [1.0]
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metasam.family.spec import SharpnessSpec

_PATH = re.compile(r"^(?:lam|phi\[(\d+)\]\.([a-z_]+\d*)|psi\.([a-z_]+\d*))$")
SKIPPED = {"fn", "outputs", "unbiased", "weights", "biases"}   # structure, not parameters


def parameters(spec: SharpnessSpec) -> dict[str, float]:
    """The spec's learnable parameters by path: λ, then every numeric parameter of φ's blocks
    and of ψ (polynomial coefficients as ``cK``)."""
    data = spec.to_dict()
    out = {"lam": float(spec.lam)}
    for b, block in enumerate(data["phi"]):
        out.update(_numbers(f"phi[{b}]", block))
    out.update(_numbers("psi", data["psi"]))
    return out


def _numbers(prefix: str, block: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in block.items():
        if key in SKIPPED or isinstance(value, bool):
            continue
        if key == "coefficients":
            out.update({f"{prefix}.c{k}": float(c) for k, c in enumerate(value)})
        elif key == "terms":        # a polynomial ψ: the coefficient of each term
            out.update({f"{prefix}.t{k}": float(term[0]) for k, term in enumerate(value)})
        elif isinstance(value, (int, float)):
            out[f"{prefix}.{key}"] = float(value)
    return out


def with_parameters(spec: SharpnessSpec, values: dict[str, float]) -> SharpnessSpec:
    """The spec with the parameters at ``values`` (paths as :func:`parameters`), validated."""
    data = copy.deepcopy(spec.to_dict())
    for path, value in values.items():
        match = _PATH.match(path)
        if match is None:
            raise KeyError(f"not a learnable parameter path: {path!r}")
        if path == "lam":
            data["lam"] = float(value)
            continue
        block = data["phi"][int(match.group(1))] if match.group(1) is not None else data["psi"]
        key = match.group(2) or match.group(3)
        if key[0] in "ct" and key[1:].isdigit():
            index = int(key[1:])
            if key[0] == "c":
                block["coefficients"][index] = float(value)
            else:
                block["terms"][index][0] = float(value)
        else:
            block[key] = float(value)
    data.pop("name", None)
    return SharpnessSpec.from_dict(data)


def beta(spec: SharpnessSpec, d: Tensor) -> Tensor:
    """The step's weights β_i with g = g0 + Σ_i β_i (g_i − g0), for the loss differences ``d``
    (float64)."""
    weights = spec.surrogate(d.to(torch.float64)).weights
    return spec.weight_scale(weights.tolist()) * weights


def beta_jacobian(spec: SharpnessSpec, d: Tensor, names: Sequence[str],
                  step: float = 1e-6) -> Tensor:
    """∂β_i/∂θ_k, shape (n, len(names)): central differences with a relative step (n scalars
    per evaluation, float64)."""
    base = parameters(spec)
    columns = []
    for name in names:
        h = step * max(1.0, abs(base[name]))
        up = beta(with_parameters(spec, {name: base[name] + h}), d)
        down = beta(with_parameters(spec, {name: base[name] - h}), d)
        columns.append((up - down) / (2 * h))
    return torch.stack(columns, dim=1)


def hypergradient(spec: SharpnessSpec, d: Tensor, dots: Tensor, dot0: float | Tensor,
                  lr: float, names: Sequence[str]) -> dict[str, float]:
    """∂L_val(w')/∂θ for the step just taken with learning rate ``lr``: ``dots[i]`` =
    ⟨∇L_val, g_i⟩ and ``dot0`` = ⟨∇L_val, g0⟩ (see the module's docstring)."""
    diffs = dots.to(torch.float64) - torch.as_tensor(dot0, dtype=torch.float64)
    jac = beta_jacobian(spec, d, names)
    grads = -lr * (jac * diffs.unsqueeze(1)).sum(dim=0)
    return {name: float(g) for name, g in zip(names, grads, strict=True)}


def project(spec: SharpnessSpec, proposed: dict[str, float],
            check: Any = None, halvings: int = 6) -> tuple[SharpnessSpec, float]:
    """The member nearest along the move from ``spec`` to ``proposed`` that is still a penalty
    (λ ≥ 0, parameters valid, :func:`~metasam.family.monotone.check_penalty` passes): the
    whole move, else half of it, and so on ``halvings`` times; else ``spec`` itself. Returns
    the member and the fraction of the move taken."""
    from metasam.errors import SpecError
    from metasam.family.monotone import check_penalty

    check = check or check_penalty
    start = parameters(spec)
    fraction = 1.0
    for _ in range(halvings + 1):
        values = {k: start[k] + fraction * (v - start[k]) for k, v in proposed.items()}
        if values.get("lam", spec.lam) >= 0 and all(math.isfinite(v) for v in values.values()):
            try:
                member = with_parameters(spec, values)
            except (SpecError, ValueError):
                member = None
            if member is not None and (set(values) == {"lam"} or check(member).ok):
                return member, fraction
        fraction /= 2
    return spec, 0.0
