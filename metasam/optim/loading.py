"""Exported optimizers (the JSON ``metasam best`` writes): reading them, and a ready
:class:`~metasam.UniversalSAM` from one in one call."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metasam.errors import ConfigError
from metasam.family.spec import SharpnessSpec
from metasam.optim.bases import BASES, base_class
from metasam.optim.universal_sam import UniversalSAM

FORMAT = "metasam.optimizer/1"


def read_export(path_or_export: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """An exported optimizer from a JSON file or a dict (a study YAML's winner is read by
    :func:`metasam.load_optimizer`, which goes through the study's workflow)."""
    if isinstance(path_or_export, dict):
        data = path_or_export
    else:
        path = Path(path_or_export)
        if path.suffix in (".yaml", ".yml"):
            raise ConfigError("", "a study YAML, not an optimizer export",
                              "the JSON that `metasam best` writes (or pass the study to "
                              "metasam.load_optimizer)", str(path))
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ConfigError("", f"cannot read ({err.strerror})", source=str(path)
                              ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError("", f"not an optimizer export: invalid JSON ({err})",
                              "the JSON that `metasam best` writes, or a study YAML",
                              str(path)) from None
    source = "the optimizer export" if isinstance(path_or_export, dict) else str(path_or_export)
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a JSON object, got {type(data).__name__}",
                          "the JSON that `metasam best` writes", source)
    if data.get("format") != FORMAT:
        raise ConfigError("format", repr(data.get("format")),
                          f"{FORMAT!r} (the JSON that `metasam best` writes)", source)
    for key, kind in (("spec", dict), ("base_optimizer", dict)):
        if not isinstance(data.get(key), kind):
            raise ConfigError(key, "missing or not an object",
                              "the JSON that `metasam best` writes", source)
    if "name" not in data["base_optimizer"]:
        raise ConfigError("base_optimizer.name", "missing", BASES, source)
    return data


def load_optimizer(path_or_export: str | os.PathLike[str] | dict[str, Any],
                   params: Iterable[Any], *, model: nn.Module | None = None,
                   seed: int | None = None, **overrides: Any) -> UniversalSAM:
    """A ready :class:`~metasam.UniversalSAM` from a study's best optimizer.

    ``path_or_export`` is the JSON that ``metasam best`` wrote, or that JSON as a dict
    (:func:`metasam.load_optimizer` also takes the study's YAML). ``overrides`` change
    base-optimizer arguments (``lr=...``); UniversalSAM's own options (``scaler``,
    ``max_grad_norm``, ``bn_stats``, ``on_nonfinite``, ``process_group``, ``total_steps`` —
    needed by a spec whose schedule starts late) go to it. Example::

        optimizer = load_optimizer("studies/digits-quick.best.json", model.parameters(),
                                   model=model)
        for x, y in loader:
            optimizer.step(closure)
    """
    data = read_export(path_or_export)
    source = None if isinstance(path_or_export, dict) else str(path_or_export)
    cls, base = base_class(data["base_optimizer"],
                           f"{source or 'the optimizer export'}: base_optimizer")
    own = {k: overrides.pop(k) for k in _OWN_OPTIONS if k in overrides}
    base.update(overrides)
    spec = SharpnessSpec.from_dict(data["spec"], source=source)
    return UniversalSAM(params, cls, spec, model=model, seed=seed, **own, **base)


_OWN_OPTIONS = ("scaler", "max_grad_norm", "bn_stats", "on_nonfinite", "process_group",
                "total_steps")


class RecipeWarning(UserWarning):
    """The recipe is used away from what it was tuned for (other epochs, another batch size)."""


@dataclass
class Recipe:
    """What a study's winner was tuned with, rebuilt: the optimizer, its learning-rate
    schedule (step it once per epoch, or once per optimizer step when ``per_step``), and
    notes on what was assumed where the user's run differs from the tuned one."""

    optimizer: UniversalSAM
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    per_step: bool
    batch_size: int | None
    notes: list[str] = field(default_factory=list)


def load_recipe(path_or_export: str | os.PathLike[str] | dict[str, Any], params: Iterable[Any],
                *, model: nn.Module | None = None, seed: int | None = None,
                epochs: int | None = None, steps_per_epoch: int | None = None,
                batch_size: int | None = None, **overrides: Any) -> Recipe:
    """The optimizer *and* the learning-rate schedule the winner was tuned with.

    ``epochs`` (default: the tuned run's) is how long your run trains; the schedule spans it
    (multistep milestones scaled to it). With ``steps_per_epoch`` the schedule is stepped per
    optimizer step (``recipe.per_step``; cosine then anneals smoothly) and the optimizer gets
    ``total_steps`` (a spec that varies over training needs it); without, step the schedule once
    per epoch, as metasam's trainer does. ``batch_size``: yours, compared with the tuned one —
    ρ and the learning rate are kept as tuned (SAM's ρ is tied to the batch it perturbs), and a
    :class:`RecipeWarning` says so. Example::

        recipe = load_recipe("studies/digits-noisy.best.json", model.parameters(), model=model,
                             epochs=30, steps_per_epoch=len(loader))
        for epoch in range(recipe.epochs):
            for x, y in loader:
                recipe.optimizer.step(closure)
                recipe.scheduler.step()
    """
    from metasam.optim.lr_schedules import build_lr_schedule

    data = read_export(path_or_export)
    schedule = data.get("schedule") or {"name": "constant", "epochs": data.get("epochs", 1)}
    tuned_epochs = int(schedule.get("epochs") or data.get("epochs") or 1)
    run_epochs = tuned_epochs if epochs is None else int(epochs)
    if run_epochs < 1:
        raise ConfigError("epochs", f"out of range: {epochs}", "whole numbers ≥ 1")
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise ConfigError("steps_per_epoch", f"out of range: {steps_per_epoch}",
                          "whole numbers ≥ 1")
    tuned_batch = data.get("batch_size")
    notes = _recipe_notes(schedule["name"], tuned_epochs, run_epochs, tuned_batch, batch_size)
    if steps_per_epoch is not None and "total_steps" not in overrides:
        overrides["total_steps"] = run_epochs * steps_per_epoch
    optimizer = load_optimizer(data, params, model=model, seed=seed, **overrides)
    milestones = [max(1, round(m * run_epochs / tuned_epochs))
                  for m in schedule.get("milestones") or ()]
    scheduler = build_lr_schedule(optimizer, schedule["name"], epochs=run_epochs,
                                  milestones=milestones, gamma=float(schedule.get("gamma", 0.1)),
                                  steps_per_epoch=steps_per_epoch or 1)
    for note in notes:
        warnings.warn(note, RecipeWarning, stacklevel=2)
    return Recipe(optimizer, scheduler, run_epochs, steps_per_epoch is not None, tuned_batch,
                  notes)


def _recipe_notes(schedule: str, tuned_epochs: int, run_epochs: int, tuned_batch: int | None,
                  batch_size: int | None) -> list[str]:
    """What a recipe assumes where the user's run differs from the tuned one."""
    notes = []
    if run_epochs != tuned_epochs:
        notes.append(f"tuned for {tuned_epochs} epochs; the {schedule} schedule spans "
                     f"your {run_epochs} (milestones scaled), ρ and λ unchanged")
    if batch_size is not None and tuned_batch is not None and batch_size != tuned_batch:
        notes.append(f"tuned at batch size {tuned_batch}, yours is {batch_size}: the learning "
                     "rate and ρ are kept as tuned (ρ is tied to the batch it perturbs); "
                     f"retune, or train at batch {tuned_batch}")
    return notes
