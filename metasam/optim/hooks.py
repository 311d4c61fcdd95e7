"""Torch's optimizer step hooks without its profiler markers when nothing profiles.

``torch.optim.Optimizer`` wraps every ``step`` in a profiler range and the step pre/post
hooks; the range is two dispatcher operators per call even when no profiler records. A
:class:`~metasam.UniversalSAM` step runs the hooks itself (:func:`hooked`) and calls its base
optimizer's step unwrapped when no hook is registered and no profiler records
(:func:`base_step`): the same calls and ranges whenever someone looks, four fewer operators per
step otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer


def profiling() -> bool:
    return bool(torch.autograd.profiler._is_profiler_enabled)


def has_hooks(opt: torch.optim.Optimizer) -> bool:
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or
                torch_optimizer._global_optimizer_pre_hooks or
                torch_optimizer._global_optimizer_post_hooks)


def hooked(opt: torch.optim.Optimizer, step: Callable[..., Tensor],
            closure: Callable[[], Tensor | float]) -> Tensor:
    """``step(closure)`` with what torch's ``Optimizer.profile_hook_step`` does — the step pre
    and post hooks, global and the optimizer's own, and a profiler range — the range only while
    a profiler records (its markers are two operators per step otherwise)."""
    args: tuple[Any, ...] = (opt, closure)
    kwargs: dict[str, Any] = {}
    for pre_hook in chain(torch_optimizer._global_optimizer_pre_hooks.values(),
                          opt._optimizer_step_pre_hooks.values()):
        result = pre_hook(opt, args[1:], kwargs)
        if result is not None:
            args, kwargs = (opt, *result[0]), result[1]
    if profiling():
        with torch.autograd.profiler.record_function(
                f"Optimizer.step#{type(opt).__name__}.step"):
            out = step(*args[1:], **kwargs)
    else:
        out = step(*args[1:], **kwargs)
    for post_hook in chain(opt._optimizer_step_post_hooks.values(),
                           torch_optimizer._global_optimizer_post_hooks.values()):
        post_hook(opt, args[1:], kwargs)
    return out


def base_step(base: torch.optim.Optimizer) -> None:
    """``base.step()``, unwrapped from torch's profiling wrapper when nothing profiles or
    hooks it."""
    raw = getattr(type(base).step, "__wrapped__", None)
    if raw is None or profiling() or has_hooks(base):
        base.step()
    else:
        raw(base)
