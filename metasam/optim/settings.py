"""The settings :class:`~metasam.UniversalSAM` takes, each checked in one line naming it."""

from __future__ import annotations

import math
from typing import Any

import torch

from metasam.family.spec import SharpnessSpec

BN_MODES = ("freeze", "official")
NONFINITE_MODES = ("raise", "skip")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """``value`` is one of ``allowed``, else ValueError naming ``name`` and the allowed."""
    if value not in allowed:
        raise ValueError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def check_arguments(base_optimizer: Any, bn_stats: str, on_nonfinite: str,
                    max_grad_norm: float | None, total_steps: int | None,
                    spec: SharpnessSpec) -> None:
    """The constructor's arguments: an optimizer class, known modes, a positive clip, a
    positive whole ``total_steps`` — needed by a schedule with a start and by ``vary``."""
    if not (isinstance(base_optimizer, type) and
            issubclass(base_optimizer, torch.optim.Optimizer)):
        raise TypeError("base_optimizer must be an optimizer class such as torch.optim.SGD, "
                        f"got {base_optimizer!r}")
    check_choice("bn_stats", bn_stats, BN_MODES)
    check_choice("on_nonfinite", on_nonfinite, NONFINITE_MODES)
    if max_grad_norm is not None and not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise ValueError(f"max_grad_norm: must be a positive number, got {max_grad_norm!r}")
    if total_steps is not None and (isinstance(total_steps, bool) or
                                    not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"total_steps: expected a positive whole number, got {total_steps!r}")
    needs = "UniversalSAM(..., total_steps=epochs * steps_per_epoch)"
    if spec.schedule is not None and spec.schedule.start > 0 and total_steps is None:
        raise ValueError("total_steps: the spec's schedule starts the sharpness term at "
                         f"{spec.schedule.start:g} of training; allowed: {needs}")
    if spec.vary is not None and total_steps is None:
        raise ValueError("total_steps: the spec's parameters vary over training "
                         f"({', '.join(spec.vary.names)}); allowed: {needs}")
