"""fp16 mixed precision: a :class:`~metasam.UniversalSAM` step with a ``torch.amp.GradScaler``.

Every one of the 1 + n passes is scaled by the same factor (a power of two), so the loss
differences come from unscaled losses and the combined gradient is unscaled once, by the
scaler's ``unscale_``, before it is checked and applied; ``update`` follows once per step. An
overflow anywhere in the step (a non-finite loss or gradient) is a skipped step, and the scaler
backs off — judged on the device like any step (:mod:`metasam.optim.finiteness`), or on the
host by :meth:`LossScaling.overflow`.

Example::

    scaling = LossScaling(torch.amp.GradScaler("cuda"))
    loss = scaling.backward(loss)        # in the closure: the scaled backward
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class LossScaling:
    """The GradScaler glue of one optimizer: the scaled backward, the step's one unscale, the
    scale read without a host sync, and the skip of an overflow found on the host."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        if not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {scaler!r}")
        self.scaler = scaler
        self.unscaled = False   # whether this step's gradients were unscaled already

    def backward(self, loss: Tensor) -> Tensor:
        """The scaled backward of ``loss``; returns ``loss`` unscaled."""
        self.scaler.scale(loss).backward()
        return loss

    def scale(self) -> Tensor:
        """The loss scale of this step's passes (float64, on the device; a power of two), read
        without a host sync."""
        scale = self.scaler._get_scale_async()
        assert scale is not None, "the closure scales its loss: optimizer.backward(loss)"
        return scale.double()

    def unscale(self, optimizer: torch.optim.Optimizer, params: list[Tensor],
                values: Sequence[Tensor], norm: Tensor) -> Tensor:
        """The scaler's one ``unscale_`` of the step; returns the unscaled ``norm``.

        A non-finite one of ``values`` (a loss) is planted into a gradient first, without a
        host sync, so that the scaler records the overflow (adding 0 leaves it unchanged)."""
        if values and params:
            finite = torch.stack([torch.isfinite(t).all() for t in values]).all()
            first = params[0].grad.view(-1)[:1]
            first.add_(torch.where(finite, 0.0, math.nan).to(first.device, first.dtype))
        self.scaler.unscale_(optimizer)
        self.unscaled = True
        return norm / self.scale()   # a power of two: exact

    def update(self) -> None:
        """The step's one ``update`` (backs off on an overflow ``unscale_`` found)."""
        self.scaler.update()

    def overflow(self, optimizer: Any, reason: str) -> str:
        """Skip a step found not finite on the host, as ``GradScaler.step`` does, and let the
        scaler back off; returns the skipped step's reason."""
        if not self.unscaled:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if params:  # make sure the scaler sees the overflow, wherever it happened
                params[0].grad = torch.full_like(params[0], math.nan)
                self.scaler.unscale_(optimizer)
        scale = self.scaler.get_scale()
        self.scaler.update()
        return f"fp16 overflow: {reason} at loss scale {scale:g} " \
               f"(now {self.scaler.get_scale():g})"
