"""What the last :meth:`~metasam.UniversalSAM.step` did, read on the host only when asked."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class StepInfo:
    """What the last :meth:`UniversalSAM.step` did.

    ``step`` and ``passes`` are known on the host; the other fields stay on the device
    (:attr:`tensors`) and become Python numbers when first read — one transfer for all, after
    the optimizer's pending verdicts are settled (so a deferred
    :class:`~metasam.errors.NonFiniteStepError` surfaces on that read).

    ``loss`` is the loss at x; ``sharpness`` ψ((1/n)Σφ(D_i)), ``regularizer`` λ·ρ²·sharpness
    (the term added to the loss), ``d`` the loss differences D_i and ``weights`` the
    w_i = ∂ψ·φ'(D_i); ``grad_norm`` the norm of the gradient handed to the base optimizer,
    before clipping; ``skipped`` the reason when the step was not applied (``on_nonfinite=
    "skip"``, an fp16 overflow, or under ``"raise"`` a step after a failed one);
    ``guard_factor`` the factor the spec's ``guard`` scaled the sharpness part by (1.0 within
    bounds; ``None`` without a guard) and ``sharpness_share`` ‖sharpness part‖/‖g0‖ before it.
    ``passes`` counts the forward/backward passes the step really made (1 for plain training or
    when no parameter is perturbed, 1 + n otherwise, a skipped step included).
    """

    step: int
    passes: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    applied: Tensor | None = None   # whether the step was applied (0-dim bool, on the device)
    regularizer_factor: float | None = None   # λ·ρ²
    settle: Callable[[], None] | None = field(default=None, repr=False)
    _verdict: str | None = field(default=None, repr=False)
    _host: dict[str, Any] | None = field(default=None, repr=False)

    def _read(self) -> dict[str, Any]:
        if self.settle is not None:
            settle, self.settle = self.settle, None
            settle()
        if self._host is None:
            host: dict[str, Any] = {}
            names = list(self.tensors)
            if names:
                values = [self.tensors[k].reshape(-1) for k in names]
                device = values[0].device
                flat = torch.cat([v.to(device, torch.float64) for v in values]).tolist()
                start = 0
                for k, v in zip(names, values, strict=True):
                    part = flat[start:start + v.numel()]
                    start += v.numel()
                    host[k] = part if self.tensors[k].dim() else part[0]
            self._host = host
        return self._host

    @property
    def skipped_on_host(self) -> bool:
        """Judged on the host and not applied (known without reading the device)."""
        return self.applied is None and self.settle is None and self._verdict is not None

    @property
    def skipped(self) -> str | None:
        self._read()
        return self._verdict

    @property
    def loss(self) -> float:
        return math.nan if self.skipped is not None else self._read().get("loss", math.nan)

    @property
    def sharpness(self) -> float | None:
        return self._read().get("sharpness") if self.skipped is None else None

    @property
    def regularizer(self) -> float | None:
        sharpness = self.sharpness
        if sharpness is None or self.regularizer_factor is None:
            return None
        return self.regularizer_factor * sharpness

    @property
    def grad_norm(self) -> float | None:
        if self.skipped is not None:
            return None
        host = self._read()
        if "grad_parts" in host:   # a plain step: the norm from the per-tensor norms
            return math.sqrt(sum(v * v for v in host["grad_parts"][1:]))
        return host.get("grad_norm")

    @property
    def d(self) -> list[float]:
        return list(self._read().get("d", [])) if self.skipped is None else []

    @property
    def weights(self) -> list[float]:
        return list(self._read().get("weights", [])) if self.skipped is None else []

    @property
    def guard_factor(self) -> float | None:
        guard = self._read().get("guard") if self.skipped is None else None
        return None if guard is None else guard[0]

    @property
    def sharpness_share(self) -> float | None:
        guard = self._read().get("guard") if self.skipped is None else None
        return None if guard is None else guard[1]


def skipped_info(step: int, passes: int, reason: str) -> StepInfo:
    """The StepInfo of a step judged on the host and not applied."""
    return StepInfo(step, passes, _verdict=reason, _host={})
