"""Keep normalization layers' running statistics out of the perturbed passes.

A perturbed pass evaluates the loss at x + ρv; letting BatchNorm's running mean and variance
absorb those activations (as the official Universal-SAM code does) biases evaluation-mode
statistics towards perturbed weights. :class:`RunningStatsGuard` snapshots the running buffers
of every normalization layer that runs in training mode and restores them exactly afterwards.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.module import register_module_forward_pre_hook

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _tracks_stats(module: nn.Module) -> bool:
    return isinstance(module, _NormBase) and module.track_running_stats and module.training


class RunningStatsGuard:
    """Context manager: running statistics after the block equal those before it.

    With ``model`` given, its normalization layers are snapshotted on entry (compatible with
    ``torch.compile``). Without it, a global forward pre-hook snapshots each training-mode
    normalization layer the first time it runs inside the block.
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self._saved: dict[int, tuple[nn.Module, list[Tensor | None]]] = {}
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        # with a model: the buffers guarded and their snapshots, kept between uses (one
        # foreach copy each way, no new tensors per use)
        self._live: list[Tensor] = []
        self._copies: list[Tensor] = []
        self._key: tuple[int, ...] = ()

    def _snapshot(self, module: nn.Module) -> None:
        if id(module) in self._saved:
            return
        self._saved[id(module)] = (module, [
            None if getattr(module, name) is None else getattr(module, name).detach().clone()
            for name in _BUFFERS])

    def __enter__(self) -> RunningStatsGuard:
        self._saved.clear()
        if self.model is not None:
            live = [getattr(m, name) for m in self.model.modules() if _tracks_stats(m)
                    for name in _BUFFERS if getattr(m, name) is not None]
            key = tuple(id(t) for t in live)
            if key != self._key:
                self._live, self._key = live, key
                self._copies = [torch.empty_like(t) for t in live]
            if live:
                with torch.no_grad():
                    torch._foreach_copy_(self._copies, live)
        else:
            self._live, self._key, self._copies = [], (), []

            def hook(module: nn.Module, args: object) -> None:
                if _tracks_stats(module):
                    self._snapshot(module)

            self._hook = register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        with torch.no_grad():
            if self.model is not None and self._live:
                torch._foreach_copy_(self._live, self._copies)
            for module, values in self._saved.values():
                for name, value in zip(_BUFFERS, values, strict=True):
                    if value is not None:
                        getattr(module, name).copy_(value)
        self._saved.clear()
