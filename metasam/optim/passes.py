"""The forward/backward passes of a :class:`~metasam.UniversalSAM` step, as functions that
return typed records: the pass at x (:func:`unperturbed_pass`) and the n passes at x + ρv_i
(:func:`perturbed_passes`), each with the values the step must check for finiteness.

A pass is ``call()``: the optimizer's closure, counted and averaged over the process group,
returning the loss as a 0-dim tensor. Gradients stay in ``.grad`` between passes; nothing here
reads a device value back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metasam.family.spec import SharpnessSpec
from metasam.optim import kernels
from metasam.optim.finiteness import PERTURBED, UNPERTURBED
from metasam.optim.kernels import grad_or_zero, norms, total_norm
from metasam.optim.scaling import LossScaling

Pass = Callable[[], Tensor]


class Check(NamedTuple):
    """A value a pass produced that must be finite, and what to call it if it is not."""

    pass_name: str   # "unperturbed pass", "perturbation 2 of 4", "sharpness surrogate"
    what: str        # "loss", "gradient", ...
    value: Tensor


@dataclass
class FirstPass:
    """What the unperturbed pass leaves for the rest of the step (g0 stays in ``.grad``)."""

    loss: Tensor
    params: list[Tensor]            # every parameter with a gradient
    perturbed: list[Tensor]         # those of groups with ``perturb=True``
    perturbed_norms: list[Tensor]   # ‖g0‖ per perturbed parameter
    per_tensor: list[Tensor]        # ‖g0‖ per parameter
    # [loss, ‖g0‖ per parameter] stacked, when all live on the loss's device: a plain step's
    # values to check, without computing the global norm unless it is needed
    parts: Tensor | None
    _grad_norm: Tensor | None = None
    _checks: list[Check] | None = None

    @property
    def grad_norm(self) -> Tensor:
        """‖g0‖ over every parameter (float64; scaled under fp16), computed once when asked."""
        if self._grad_norm is None:
            if self.parts is not None:
                self._grad_norm = torch.linalg.vector_norm(self.parts[1:], dtype=torch.float64)
            else:
                self._grad_norm = total_norm(self.per_tensor, self.loss.device)
        return self._grad_norm

    @property
    def checks(self) -> list[Check]:
        """Every value of the step to check for finiteness so far (the passes append theirs)."""
        if self._checks is None:
            self._checks = [Check(UNPERTURBED, "loss", self.loss),
                            Check(UNPERTURBED, "gradient", self.grad_norm)]
        return self._checks

    @property
    def loss_check(self) -> list[Check]:
        """The check of the loss alone (a plain step checks the gradient's norm at the end)."""
        return [Check(UNPERTURBED, "loss", self.loss)]


@dataclass
class PerturbedPasses:
    """What the perturbed passes leave: their losses and the gradients kept for combining
    (the last pass's gradient stays in ``.grad``)."""

    raw_mode: bool                  # g_i kept as they are (n − 1 ≤ m), else folded
    losses: list[Tensor] = field(default_factory=list)
    raw: list[list[Tensor]] = field(default_factory=list)
    folded: list[list[Tensor]] = field(default_factory=list)   # Σ_i φ_j'(D_i)·g_i per j
    last_grad_norm: Tensor | None = None   # ‖g_n‖, of the last perturbed pass
    dots: list[Tensor] = field(default_factory=list)   # ⟨v, g_i⟩ with the hyper probe v


@dataclass(frozen=True)
class ProbeRecord:
    """What a step tells a hypergradient (:mod:`metasam.family.hypergradient`): ⟨v, g0⟩ and
    ⟨v, g_i⟩ for the probe direction v (``UniversalSAM.hyper_probe``), the loss differences
    D_i, and the learning rate of the base step (its first group's)."""

    dot0: float
    dots: Tensor
    d: Tensor
    lr: float


def unperturbed_pass(call: Pass, param_groups: list[dict[str, Any]]) -> FirstPass:
    """The pass at x: the loss, g0 (left in ``.grad``) and its per-tensor norms."""
    loss = call()
    active = [(p, g["perturb"]) for g in param_groups for p in g["params"]
              if p.grad is not None]
    per_tensor = norms([p.grad for p, _ in active])
    same = all(n.device == loss.device for n in per_tensor)
    parts = torch.stack([loss, *per_tensor]) if per_tensor and same else None
    return FirstPass(loss, [p for p, _ in active], [p for p, flag in active if flag],
                     [per_tensor[i] for i, (_, flag) in enumerate(active) if flag],
                     per_tensor, parts)


def perturbed_passes(call: Pass, first: FirstPass, spec: SharpnessSpec, x0: list[Tensor],
                     draw: Callable[[], list[Tensor]],
                     dot: Callable[[list[Tensor]], Tensor | None]) -> PerturbedPasses:
    """The passes at x + ρv_i, i = 1..n, with v_i = ``draw()`` and the weights restored to
    ``x0`` after each. All but the last pass's gradient are kept: raw when n − 1 ≤ m, else
    folded into m buffers Σ_i φ_j'(D_i)·g_i (on the device); the last one stays in ``.grad``.
    Appends each pass's checks to ``first.checks``; ``dot`` gives ⟨v, g_i⟩ of a hypergradient
    probe (None: none)."""
    n, params, perturbed = spec.n, first.params, first.perturbed
    out = PerturbedPasses(raw_mode=n - 1 <= spec.phi.dim)
    for i in range(n):
        torch._foreach_add_(perturbed, draw(), alpha=spec.rho)
        for p in params:
            p.grad = None
        try:
            loss_i = call()
        finally:
            torch._foreach_copy_(perturbed, x0)
        grads_i = [grad_or_zero(p) for p in params]
        _keep_pass(out, first, spec, i, loss_i, grads_i, dot(params))
    return out


def _keep_pass(out: PerturbedPasses, first: FirstPass, spec: SharpnessSpec, i: int,
               loss_i: Tensor, grads_i: list[Tensor], dot: Tensor | None) -> None:
    """Record pass i's loss, checks and probe dot, and keep its gradient (but the last's)."""
    if dot is not None:
        out.dots.append(dot)
    name = PERTURBED.format(i=i + 1, n=spec.n)
    out.last_grad_norm = total_norm(norms(grads_i), first.loss.device)
    first.checks.extend([Check(name, "loss", loss_i),
                         Check(name, "gradient", out.last_grad_norm)])
    out.losses.append(loss_i)
    if i == spec.n - 1:
        return
    if out.raw_mode:
        out.raw.append([g.clone() for g in grads_i])
        return
    d_i = kernels.loss_differences(loss_i, first.loss, spec.rho)
    slopes = spec.phi.derivative(spec.clip(d_i.reshape(1)))[0]
    if not out.folded:
        out.folded = [[torch.zeros_like(g) for g in grads_i] for _ in range(spec.phi.dim)]
    kernels.fold_(out.folded, grads_i, slopes)


def probe_dot(probe: list[Tensor] | None, param_groups: list[dict[str, Any]],
              params: list[Tensor]) -> Tensor | None:
    """⟨v, current gradients⟩ over ``params`` with v = ``probe`` (one tensor per parameter of
    ``param_groups``), in float64; None without a probe."""
    if probe is None:
        return None
    every = [p for g in param_groups for p in g["params"]]
    by_id = dict(zip(map(id, every), probe, strict=True))
    return sum((by_id[id(p)].to(torch.float64) * grad_or_zero(p).to(torch.float64)).sum()
               for p in params)


def probe_record(dot0: Tensor | None, out: PerturbedPasses, d: Tensor,
                 lr: float) -> ProbeRecord | None:
    """The step's :class:`ProbeRecord` (None without a probe)."""
    if dot0 is None or len(out.dots) != len(out.losses):
        return None
    return ProbeRecord(float(dot0), torch.stack(out.dots).double().cpu(),
                       d.detach().double().cpu(), float(lr))


def ascent_direction(ops: Any, measure: Any, first: FirstPass, state: Any,
                     scaling: LossScaling | None) -> list[Tensor]:
    """The deterministic measures' v from g0: SAM's g/‖g‖, ASAM's T²g/‖Tg‖ or SSAM's
    m⊙g/‖g‖ with its Fisher mask (docs/family.md §2), through ``ops`` (:mod:`kernels` or
    :class:`~metasam.optim.kernels.CompiledKernels`); ε unscaled under fp16."""
    perturbed, masks = first.perturbed, None
    if measure.kind == "sparse_ascent":
        masks = [state[p].get("fisher_mask") for p in perturbed]
        if any(m is None for m in masks):
            raise RuntimeError("the sparse_ascent (SSAM) measure needs a Fisher mask: call "
                               "optimizer.update_fisher_mask(model, loss_fn, inputs, "
                               "targets) before the first step")
    eps = 1e-12 if scaling is None else scaling.scale() * 1e-12
    return ops.ascent_direction(
        [p.grad for p in perturbed], perturbed, first.perturbed_norms, masks=masks, eps=eps,
        adaptive_eta=measure.eta if measure.kind == "adaptive_ascent" else None)
