"""Closures for :meth:`UniversalSAM.step` beyond one forward and backward pass."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def accumulating_closure(optimizer: torch.optim.Optimizer, loss_fn: Callable[[Any], Tensor],
                         micro_batches: Sequence[Any], *, model: nn.Module | None = None
                         ) -> Callable[[], Tensor]:
    """A closure whose loss and gradient are those of the union of ``micro_batches``.

    ``loss_fn(batch)`` returns the *mean* loss over one micro-batch; each is weighted by its
    share of the examples (its first dimension; for a tuple, list or dict batch, that of its
    first tensor) and back-propagated at once, so one call holds a single micro-batch's
    activations in memory. The closure returns the mean loss over all examples, so every pass of
    a :class:`~metasam.UniversalSAM` step — and with it each loss difference D_i — is the one the
    whole batch would give (to float rounding; BatchNorm layers see micro-batch statistics).
    It calls ``optimizer.backward(loss)`` when the optimizer has one (fp16 loss scaling) and
    ``loss.backward()`` otherwise. With ``DistributedDataParallel``, pass the wrapped ``model``:
    gradients are then all-reduced once, on the last micro-batch (``model.no_sync()`` before).

    Example::

        chunks = list(zip(inputs.split(32), targets.split(32)))
        closure = accumulating_closure(
            optimizer, lambda b: F.cross_entropy(model(b[0]), b[1]), chunks)
        loss = optimizer.step(closure)   # 1 + n passes, each over all the chunks
    """
    batches = list(micro_batches)
    if not batches:
        raise ValueError("accumulating_closure: no micro-batches")
    sizes = [_batch_size(b) for b in batches]
    total = sum(sizes)
    backward = getattr(optimizer, "backward", None) or (lambda loss: loss.backward())
    no_sync = getattr(model, "no_sync", None)

    def closure() -> Tensor:
        optimizer.zero_grad()
        mean: Tensor | None = None
        for i, (batch, size) in enumerate(zip(batches, sizes, strict=True)):
            last = i == len(batches) - 1
            context = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
            with context:
                loss = loss_fn(batch) * (size / total)
                backward(loss)
            mean = loss.detach() if mean is None else mean + loss.detach()
        assert mean is not None
        return mean

    return closure


def _batch_size(batch: Any) -> int:
    first = batch
    while isinstance(first, (tuple, list, dict)):
        if not first:
            raise ValueError("accumulating_closure: an empty micro-batch")
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    if not isinstance(first, Tensor) or first.dim() == 0:
        raise TypeError("accumulating_closure: a micro-batch must be a tensor, or a tuple, "
                        f"list or dict whose first entry is one; got {type(first).__name__}")
    return int(first.shape[0])
