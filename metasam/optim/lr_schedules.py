"""The learning-rate schedules a run trains with, by name: one owner for the trainer's runs and
for the recipes rebuilt from exported optimizers (:func:`metasam.load_recipe`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SCHEDULES = ("multistep", "cosine", "constant")


def build_lr_schedule(optimizer: torch.optim.Optimizer, name: str, *, epochs: int,
                      milestones: Sequence[int] = (), gamma: float = 0.1,
                      steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule ``name`` over ``epochs`` epochs, stepped once per epoch
    (``steps_per_epoch`` = 1, as metasam's trainer does) or once per optimizer step:
    ``cosine`` anneals to 0 over all the steps, ``multistep`` multiplies by ``gamma`` at each
    milestone epoch, ``constant`` keeps the rate.

        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> s = build_lr_schedule(opt, "multistep", epochs=4, milestones=[2], steps_per_epoch=3)
        >>> for _ in range(6): opt.step(); s.step()
        >>> opt.param_groups[0]["lr"]
        0.1
    """
    total = epochs * steps_per_epoch
    if name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [m * steps_per_epoch for m in milestones], gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    from metasam.errors import ConfigError

    raise ConfigError("schedule", f"unknown value {name!r}", SCHEDULES)
