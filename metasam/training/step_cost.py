"""What a training step costs besides time, measured through the trainer's own epoch loop and
against the plain loop a user would write around the same model, loader and base optimizer.

A step's steady-state cost is the difference of two counted epochs, one of ``2k`` and one of
``k`` steps, divided by ``k``: what an epoch costs once (the scheduler, the metrics' read-back)
cancels, and so does the first step of a run (it sets up the optimizer's state). Counts are
aten operators and host reads of tensor values (:class:`metasam.optim.counting.OpCounter`; on a
GPU, the proxies of kernel launches and host syncs).

Example::

    cost = step_cost(TrainConfig(preset="sam", model="cnn"), steps=6)
    cost.ops, cost.host_reads, cost.plain_ops     # per step, the trainer's and a plain loop's
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metasam.data import DeviceLoader
from metasam.optim.counting import OpCounter, PlainSAM, PlainSGD
from metasam.training.config import TrainConfig
from metasam.training.trainer import Trial, autocast


@dataclass(frozen=True)
class StepCost:
    """Per steady-state step: the trainer's operators and host reads, a plain loop's (the same
    model, batches and base optimizer, no sharpness term and no bookkeeping; two passes with
    SAM's ascent for a spec with one perturbation, else one pass), and the operators by name
    that the trainer dispatches beyond the plain loop."""

    ops: float
    host_reads: float
    plain_ops: float
    plain_host_reads: float
    extra_by_op: dict[str, float]
    reads_at: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.ops / self.plain_ops


class _FirstBatches:
    """The first ``k`` batches of each pass over a loader."""

    def __init__(self, loader: DeviceLoader, k: int) -> None:
        self.loader, self.k = loader, k

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.k)

    def __len__(self) -> int:
        return self.k


def _counted_epoch(trial: Trial, plain: bool) -> OpCounter:
    """The second epoch of ``trial`` counted (the first one warms the optimizer's state)."""
    run = _plain_epoch if plain else Trial.train_epoch
    run(trial)
    with OpCounter() as count:
        run(trial)
    return count


def _plain_epoch(trial: Trial) -> None:
    """The loop a user writes around the trial's model, loader and base optimizer: the closure,
    then plain two-pass SAM (:class:`~metasam.optim.counting.PlainSAM`) or one pass."""
    model = trial.model
    params = [p for p in model.parameters() if p.requires_grad]
    base = trial.optimizer.base_optimizer
    plain = PlainSGD(params, optimizer=base) if trial.spec.is_plain else \
        PlainSAM(params, rho=trial.spec.rho, optimizer=base)
    model.train()
    for x, y in trial.loader:
        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            for p in params:
                p.grad = None
            with autocast(trial.device, trial.precision):
                logits = trial.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            return loss

        plain.step(closure)


def step_cost(config: TrainConfig, steps: int = 6) -> StepCost:
    """The steady-state cost per step of ``Trial.train_epoch`` and of a plain loop (see the
    module's docstring), from epochs of ``2 * steps`` and ``steps`` steps."""
    counts: dict[tuple[bool, int], OpCounter] = {}
    for plain in (False, True):
        for k in (steps, 2 * steps):
            trial = Trial(dataclasses.replace(config, epochs=3))
            if len(trial.loader) < 2 * steps:
                raise ValueError(f"step_cost: {2 * steps} steps asked, the loader has "
                                 f"{len(trial.loader)} per epoch")
            trial.loader = _FirstBatches(trial.loader, k)  # type: ignore[assignment]
            counts[plain, k] = _counted_epoch(trial, plain)

    def per_step(plain: bool, attr: str) -> float:
        return (getattr(counts[plain, 2 * steps], attr) -
                getattr(counts[plain, steps], attr)) / steps

    def by_op(plain: bool) -> Counter[str]:
        return counts[plain, 2 * steps].by_op - counts[plain, steps].by_op

    extra = by_op(False)
    extra.subtract(by_op(True))
    reads = counts[False, 2 * steps].reads_at
    return StepCost(per_step(False, "ops"), per_step(False, "host_reads"),
                    per_step(True, "ops"), per_step(True, "host_reads"),
                    {k: v / steps for k, v in extra.items() if v}, {k: v for k, v in reads.items()})


__all__ = ["StepCost", "step_cost"]
