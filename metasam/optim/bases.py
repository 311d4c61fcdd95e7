"""The base optimizers UniversalSAM steps with, by name: one registry for the trainer's
configs and the exported optimizers."""

from __future__ import annotations

from typing import Any

import torch

from metasam.errors import ConfigError

BASES: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD,
                                                  "adamw": torch.optim.AdamW}


def base_settings(name: str, *, lr: float, weight_decay: float, momentum: float = 0.0,
                  nesterov: bool = False) -> dict[str, Any]:
    """``{"name": ..., **arguments}`` of the named base optimizer, with the arguments it takes
    (SGD's Nesterov only with momentum)."""
    if name not in BASES:
        raise ConfigError("base optimizer", f"unknown value {name!r}", BASES)
    if name == "sgd":
        return {"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                "nesterov": nesterov and momentum > 0}
    return {"name": name, "lr": lr, "weight_decay": weight_decay}


def base_class(settings: dict[str, Any], source: str = "base_optimizer"
               ) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The class and keyword arguments of ``{"name": ..., **arguments}``."""
    kwargs = dict(settings)
    name = kwargs.pop("name", None)
    if name not in BASES:
        raise ConfigError(f"{source}.name", f"unknown value {name!r}", BASES)
    return BASES[name], kwargs
