"""Draws of a random perturbation measure, on the parameters' devices.

One generator per device and dtype, seeded from the optimizer's seed (its state travels in the
optimizer's ``state_dict``), and one flat buffer per device and dtype kept between steps: a draw
is one fill per group, whatever the number of tensors (docs/family.md §3.3).

Example::

    sampler = PerturbationSampler(seed=0)
    v = sampler.sample(presets.rwp().measure, list(model.parameters()), x0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metasam.family.measures import fill_random_
from metasam.optim.kernels import KeyedBuffers, flat_buffers


class PerturbationSampler:
    """The generators and buffers of a random measure's draws (see the module's docstring).

    ``states``: generator states from :meth:`state_dict`, restored when each generator is
    first used (the device may differ from the saved one's only by its index)."""

    def __init__(self, seed: int, states: dict[str, Tensor] | None = None) -> None:
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending = {k: v.clone() for k, v in (states or {}).items()}
        self._buffers = KeyedBuffers(_draw_buffers)

    def state_dict(self) -> dict[str, Tensor]:
        states = dict(self._pending)
        states.update({k: g.get_state() for k, g in self._generators.items()})
        return states

    def generator(self, device: torch.device, dtype: torch.dtype, index: int
                  ) -> torch.Generator:
        """The generator of (device, dtype); the ``index``-th group seeds it when new."""
        key = f"{device}|{dtype}"
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            state = self._pending.pop(key, None)
            if state is not None:
                gen.set_state(state)
            else:
                gen.manual_seed((self.seed + 1_000_003 * index) % 2**63)
            self._generators[key] = gen
        return gen

    def sample(self, measure: Any, perturbed: list[Tensor], x0: list[Tensor]) -> list[Tensor]:
        """A draw of ``measure``, one tensor per perturbed parameter (views of the kept
        buffers: valid until the next draw); an adaptive measure scales it by |x0| + η."""
        flats, views = self._buffers.get(perturbed)
        gens = [self.generator(f.device, f.dtype, i) for i, f in enumerate(flats)]
        fill_random_(measure, flats, sum(f.numel() for f in flats), gens)
        if measure.adaptive:
            scale = torch._foreach_abs(x0)
            torch._foreach_add_(scale, measure.eta)
            torch._foreach_mul_(views, scale)
        return views


def _draw_buffers(perturbed: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """One flat buffer per device and dtype, and a view of it shaped like each tensor."""
    views: list[Any] = [None] * len(perturbed)
    flats = []
    for members, flat, group_views in flat_buffers(perturbed):
        flats.append(flat)
        for i, view in zip(members, group_views, strict=True):
            views[i] = view
    return flats, views
