"""What UniversalSAM agrees on across data-parallel ranks.

Under ``DistributedDataParallel`` every backward averages the gradients, so g_0 and the g_i are
already global. The rest of a step is not: the loss differences D_i = (L(x+ρv_i) − L(x))/ρ² come
from each rank's own batch, so the weights ∂ψ·φ'(D_i) — and with them the update — would differ
from rank to rank and the replicas would drift apart; random perturbations drawn from different
seeds would put the ranks at different points; SSAM's Fisher mask would come from each rank's
own examples. :class:`Sync` makes every rank use the global batch's values instead: the losses
averaged over the group, one perturbation seed (rank 0's), Fisher scores summed over the group
(computed on the unwrapped module: :func:`local_module`).
With equal per-rank batches the step then equals the single-process step on the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

AUTO = "auto"


def local_module(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise).

    Rank-local passes such as SSAM's per-example gradients run on it: through the wrapper,
    every forward would be a collective (DDP broadcasts the buffers, BatchNorm's running
    statistics, from rank 0), one per example, and ranks with different numbers of examples
    would hang."""
    parallel = torch.nn.parallel.DistributedDataParallel
    return model.module if isinstance(model, parallel) else model


class Sync:
    """The process group a UniversalSAM agrees over (no-op without one)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.size = 1 if group is None else torch.distributed.get_world_size(group)

    @classmethod
    def resolve(cls, process_group: Any) -> Sync:
        """``"auto"``: the default group when torch.distributed is initialized with more than
        one rank; ``None``: no synchronization; otherwise the given process group."""
        if process_group is None:
            return cls(None)
        dist = torch.distributed
        if isinstance(process_group, str):
            if process_group != AUTO:
                raise ValueError(f"process_group: unknown value {process_group!r}; allowed: "
                                 "'auto', None, a torch.distributed process group")
            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
                return cls(None)
            process_group = dist.group.WORLD
        return cls(process_group)

    @property
    def active(self) -> bool:
        return self.size > 1

    def mean(self, value: Tensor) -> Tensor:
        """The group mean of a scalar (computed in at least float32)."""
        if not self.active:
            return value
        dtype = torch.promote_types(value.dtype, torch.float32)
        out = value.detach().to(dtype).clone()
        torch.distributed.all_reduce(out, group=self.group)
        return out / self.size

    def sum_(self, tensors: list[Tensor]) -> list[Tensor]:
        """Sum same-shaped tensors over the group in place (one collective)."""
        if not self.active or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat, group=self.group)
        for t, piece in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(piece.view_as(t))
        return tensors

    def seed(self, seed: int) -> int:
        """Rank 0's seed, on every rank."""
        if not self.active:
            return seed
        dist = torch.distributed
        box = [seed]
        device = None
        if dist.get_backend(self.group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, 0),
                                   group=self.group, device=device)
        return int(box[0])
