"""The device-side arithmetic of a :class:`~metasam.UniversalSAM` step, as pure functions of
tensor lists (the way ``torch.optim`` keeps its ``_multi_tensor_*`` kernels beside the stateful
classes): global norms, the ascent directions, the combine, the guard, clipping and LookSAM's
reused direction, one function per equation (the finiteness verdict lives in
:mod:`metasam.optim.finiteness`).

None of them reads a device value back to the host: every coefficient that depends on the
data is a tensor on the device, so a step built from them runs without host synchronization
(what capturing it in a graph would need; no capture is built). Coefficients known on the
host may be Python floats; then the operations are the very ones the reference-rule tests were
written against (bit-identical).

Example::

    g = [torch.randn(3), torch.randn(2)]
    total_norm(norms(g), torch.device("cpu"))          # ‖g‖ over both tensors, float64
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from metasam.family.spec import Coefficients, Surrogate, scalar_dtype

Coefficient = float | Tensor
T = TypeVar("T")


def ids(tensors: list[Tensor]) -> tuple[int, ...]:
    """The identity of a set of tensors (the key of buffers kept for them)."""
    return tuple(id(t) for t in tensors)


class KeyedBuffers(Generic[T]):
    """Buffers made for a set of tensors by ``make`` and kept while the set is the same (by
    identity): the weights at x, a measure's draws, the rollback's copies."""

    def __init__(self, make: Callable[[list[Tensor]], T]) -> None:
        self.make = make
        self.key: tuple[int, ...] = ()
        self.value: T | None = None

    def get(self, tensors: list[Tensor]) -> T:
        key = ids(tensors)
        if self.value is None or key != self.key:
            self.key, self.value = key, self.make(tensors)
        return self.value

    def forget(self) -> None:
        self.key, self.value = (), None


def loss_differences(losses: Tensor, loss0: Tensor, rho: float) -> Tensor:
    """D_i = (L(x + ρv_i) − L(x))/ρ² (float64 where the device has it), for one loss or a
    stacked vector of them."""
    dtype = scalar_dtype(loss0.device)
    return (losses.to(dtype) - loss0.to(dtype)) / rho**2


def surrogate_coefficients(surrogate: Surrogate, lam: float, relative: bool,
                           folded: bool) -> Coefficients:
    """The combine's coefficients on the device: β_i = c·w_i, the coefficient 1 − Σβ_i of g0
    and, for folded buffers, c·∂_jψ (c from :func:`weight_scale`). The host twin, for
    constant weights, is :attr:`metasam.SharpnessSpec.coefficients`."""
    scale = weight_scale(surrogate.weights, lam, relative)
    beta = surrogate.weights * scale
    return Coefficients(list(beta.unbind(0)), 1.0 - beta.sum(),
                        list((surrogate.psi_grad * scale).unbind(0)) if folded else [])


def norms(tensors: list[Tensor]) -> list[Tensor]:
    """The 2-norm of each tensor (one ``_foreach_norm``)."""
    return list(torch._foreach_norm(tensors)) if tensors else []


def total_norm(per_tensor: list[Tensor], device: torch.device) -> Tensor:
    """The global norm (float64, on ``device``) from per-tensor norms: one stack and one copy
    per device and dtype, not one copy per tensor."""
    if not per_tensor:
        return torch.zeros((), device=device)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for n in per_tensor:
        groups.setdefault((n.device, n.dtype), []).append(n)
    if len(groups) == 1 and per_tensor[0].device == device:
        # one stack, the norm in float64 (a cast inside the kernel, not a separate copy)
        return torch.linalg.vector_norm(torch.stack(per_tensor), dtype=torch.float64)
    parts = [torch.stack(g).to(device, torch.float64) for g in groups.values()]
    return torch.linalg.vector_norm(parts[0] if len(parts) == 1 else torch.cat(parts))


def per_device(scalar: Tensor, like: list[Tensor]) -> list[Tensor]:
    """``scalar`` once per tensor of ``like``, copied once per device and dtype."""
    copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}
    out = []
    for t in like:
        key = (t.device, t.dtype)
        if key not in copies:
            copies[key] = scalar.to(t.device, t.dtype)
        out.append(copies[key])
    return out


def scale_(tensors: list[Tensor], c: Coefficient) -> None:
    """tensors ← c·tensors (nothing to do for the float 1.0)."""
    if isinstance(c, Tensor):
        torch._foreach_mul_(tensors, per_device(c, tensors))
    elif c != 1.0:
        torch._foreach_mul_(tensors, c)


def add_scaled_(tensors: list[Tensor], other: list[Tensor], c: Coefficient) -> None:
    """tensors ← tensors + c·other (nothing to do for the float 0.0)."""
    if isinstance(c, Tensor):
        torch._foreach_add_(tensors, torch._foreach_mul(other, per_device(c, other)))
    elif c != 0.0:
        torch._foreach_add_(tensors, other, alpha=c)


def combine_gradients(final: list[Tensor], g0: list[Tensor] | None,
                      beta: Sequence[Coefficient], coefficient_g0: Coefficient, *,
                      raw: list[list[Tensor]] | None = None,
                      folded: list[list[Tensor]] | None = None,
                      folded_coefficients: Sequence[Coefficient] | None = None) -> None:
    """The combine step: on entry ``final`` holds g_n, the gradient of the last perturbed pass;
    on exit β_n·g_n + c0·g0 + Σ_{i<n} β_i·g_i, where the g_i (i < n) are given either ``raw``
    (one list per pass) or ``folded`` into m buffers Σ_i φ_j'(D_i)·g_i with
    ``folded_coefficients`` the factor of buffer j.

    Coefficients are floats (known on the host) or 0-dim tensors / elements of a tensor (on the
    device). ``g0`` may be ``None`` only when ``coefficient_g0`` is the float 0.0. In place, in
    the order the reference-rule tests were written against.
    """
    scale_(final, beta[-1])
    if not (isinstance(coefficient_g0, float) and coefficient_g0 == 0.0):
        if g0 is None:
            raise ValueError("combine_gradients: g0 is needed when its coefficient is not 0")
        add_scaled_(final, g0, coefficient_g0)
    if raw is not None:
        for b, grads in zip(beta, raw, strict=False):  # the first n − 1 passes
            add_scaled_(final, grads, b)
    if folded is not None:
        if folded_coefficients is None:
            raise ValueError("combine_gradients: folded buffers need their coefficients")
        for buf, c in zip(folded, folded_coefficients, strict=True):
            add_scaled_(final, buf, c)


def fold_(buffers: list[list[Tensor]], grads: list[Tensor], slopes: Tensor) -> None:
    """buffers[j] += slopes[j]·grads, with ``slopes`` a vector on the device (φ'(D_i)); a
    non-finite slope adds nothing (the step's checks report it)."""
    slopes = torch.where(torch.isfinite(slopes), slopes, 0.0)
    for j, buf in enumerate(buffers):
        add_scaled_(buf, grads, slopes[j])


def weight_scale(weights: Tensor, lam: float, relative: bool) -> Tensor:
    """The factor c of the step's gradient g0 + c·Σ_i w_i·(g_i − g0) on the device: λ/n
    (absolute λ) or λ/Σ|w_i| (relative; 0 when every weight is 0). The host twin is
    :meth:`metasam.SharpnessSpec.weight_scale`."""
    if not relative:
        return torch.full((), lam / weights.numel(), dtype=weights.dtype, device=weights.device)
    total = weights.abs().sum()
    return torch.where(total > 0, lam / total.clamp_min(1e-300), 0.0)


def apply_guard(final: list[Tensor], g0: list[Tensor], g0_norm: Tensor,
                bound: float) -> Tensor:
    """Scale the sharpness part c = final − g0 down to ‖c‖ ≤ bound·‖g0‖; returns the pair
    (factor applied (1 when within bounds), ‖c‖/‖g0‖) as a tensor."""
    diff = torch._foreach_sub(final, g0)
    c_norm = total_norm(norms(diff), g0_norm.device)
    share = c_norm / g0_norm.clamp_min(1e-30)
    factor = torch.clamp(bound / share.clamp_min(1e-30), max=1.0)
    # final += (factor − 1)·c: adds exact zeros within bounds, so the step is bit-identical
    torch._foreach_mul_(diff, per_device(factor - 1.0, diff))
    torch._foreach_add_(final, diff)
    return torch.stack([factor, share])


def clip_(grads: list[Tensor], norm: Tensor, max_norm: float) -> Tensor:
    """Scale ``grads`` (of global norm ``norm``) by max_norm/(norm + 1e-6) when norm exceeds
    ``max_norm`` (torch's ``clip_grad_norm_`` rule); returns the factor (exactly 1.0 within
    bounds, so the gradients are unchanged bit for bit)."""
    factor = torch.where(norm > max_norm, max_norm / (norm + 1e-6), 1.0)
    torch._foreach_mul_(grads, per_device(factor, grads))
    return factor


def add_reused_(grads: list[Tensor], stored: list[Tensor], g0_norm: Tensor) -> None:
    """grads ← grads + ‖g0‖·stored: a LookSAM step between full ones adds the last full
    step's orthogonal sharpness component (:func:`orthogonal_part`) rescaled to ‖g0‖."""
    torch._foreach_add_(grads, torch._foreach_mul(stored, per_device(g0_norm, stored)))


def orthogonal_part(final: list[Tensor], g0: list[Tensor], g0_norm: Tensor) -> list[Tensor]:
    """(c − (⟨c, g0⟩/‖g0‖²)·g0)/‖g0‖ with c = final − g0: the sharpness component orthogonal to
    g0, per unit of ‖g0‖ (LookSAM's reused direction)."""
    c = torch._foreach_sub(final, g0)
    dot = sum((torch.sum(a * b).to(g0_norm.device, torch.float64)
               for a, b in zip(c, g0, strict=True)),
              torch.zeros((), device=g0_norm.device, dtype=torch.float64))
    g0_sq = (g0_norm.to(torch.float64) ** 2).clamp_min(1e-30)
    torch._foreach_add_(c, torch._foreach_mul(g0, per_device(-dot / g0_sq, g0)))
    torch._foreach_div_(c, per_device(g0_norm.clamp_min(1e-30), c))
    return c


def ascent_direction(grads: list[Tensor], params: list[Tensor], per_tensor: list[Tensor], *,
                     adaptive_eta: float | None = None, masks: list[Tensor] | None = None,
                     eps: float | Tensor = 1e-12) -> list[Tensor]:
    """The unit ascent direction of the deterministic measures (docs/family.md §2): SAM's
    g/‖g‖; with ``adaptive_eta`` ASAM's T²g/‖Tg‖, T = |w| + η; with ``masks`` SSAM's
    m⊙g/‖g‖. ``per_tensor`` holds ‖g‖ per tensor (SAM, SSAM)."""
    if adaptive_eta is not None:
        scale = torch._foreach_abs(params)
        torch._foreach_add_(scale, adaptive_eta)
        scaled = torch._foreach_mul(grads, scale)
        norm = total_norm(norms(scaled), grads[0].device)
        torch._foreach_mul_(scaled, scale)
        torch._foreach_div_(scaled, per_device(norm + eps, grads))
        return scaled
    norm = total_norm(per_tensor, grads[0].device)
    direction = torch._foreach_div(grads, per_device(norm + eps, grads))
    if masks is not None:
        torch._foreach_mul_(direction, masks)
    return direction


def finish_gradient(final: list[Tensor], g0: list[Tensor] | None, beta: Sequence[Coefficient],
                    coefficient_g0: Coefficient, *, raw: list[list[Tensor]] | None,
                    folded: list[list[Tensor]] | None,
                    folded_coefficients: Sequence[Coefficient] | None,
                    guard: float | None, g0_norm: Tensor | None,
                    known_norm: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The arithmetic after the passes, as one function (what ``compile="step"`` hands to
    ``torch.compile``): :func:`combine_gradients`, the guard (:func:`apply_guard`, when
    ``guard`` is a bound) and the combined gradient's norm (``known_norm`` when the update is
    exactly the last pass's gradient). Returns (norm, the guard's (factor, share) or None)."""
    combine_gradients(final, g0, beta, coefficient_g0, raw=raw, folded=folded,
                      folded_coefficients=folded_coefficients)
    factor = None
    if guard is not None:
        assert g0 is not None and g0_norm is not None
        factor = apply_guard(final, g0, g0_norm, guard)
    norm = known_norm if known_norm is not None else total_norm(norms(final), final[0].device)
    return norm, factor


def flat_buffers(tensors: list[Tensor]) -> list[tuple[list[int], Tensor, list[Tensor]]]:
    """One new flat buffer per device and dtype of ``tensors``, with a view shaped like each
    of them: (the indices of the group's tensors, the buffer, the views) — so that one
    operator fills or copies a whole group."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype), []).append(i)
    out = []
    for (device, dtype), members in buckets.items():
        sizes = [tensors[i].numel() for i in members]
        flat = torch.empty(sum(sizes), device=device, dtype=dtype)
        views = [piece.view(tensors[i].shape)
                 for i, piece in zip(members, flat.split(sizes), strict=True)]
        out.append((members, flat, views))
    return out


def grad_or_zero(p: Tensor) -> Tensor:
    """``p.grad``, created as zeros when a pass left it unset."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


class CompiledKernels:
    """:func:`ascent_direction` and :func:`finish_gradient` through ``torch.compile``, each one
    whole graph (no break, no host read: tested), compiled on first use. Not
    ``fullgraph=True``: under a dispatch mode (an operator or FLOP counter) torch.compile runs a
    function eagerly, which ``fullgraph`` refuses. Not ``mode="reduce-overhead"``: its CUDA
    graphs would overwrite the returned norm on the next replay while a pending verdict still
    holds it, and the gradients they read are new tensors every pass."""

    def __init__(self) -> None:
        self.ascent_direction = torch.compile(ascent_direction, dynamic=False)
        self.finish_gradient = torch.compile(finish_gradient, dynamic=False)
