"""The best optimizer of a study, as a JSON file and as a ready optimizer for any training loop."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metasam.family.spec import SharpnessSpec
from metasam.optim import UniversalSAM

FORMAT = "metasam.optimizer/1"


def best_optimizer(config: Any) -> dict[str, Any]:
    """The study's winner as an exportable dict: the spec, the base optimizer and its schedule,
    and where it came from.

    The winner is the confirmation stage's (best mean over fresh seeds, see
    :mod:`metasam.tuning.confirm`) once its runs exist, with its mean, confidence interval and
    tests under ``confirmed``; before that (or with ``confirm: false``) the best single-seed
    trial at full budget, marked ``confirmed: null``."""
    from metasam.tuning.confirm import confirmed_verdict, display_name
    from metasam.tuning.storage import best_trials, trial_spec, trial_train

    study = config.load_study()
    verdict = confirmed_verdict(config, study)
    if verdict is not None:
        f = verdict.winner.finalist
        spec, overrides, number, name = f.spec, f.train, f.trial, f.name
        value: float | None = verdict.winner.summary.mean
        trial = study.trials[number] if number >= 0 else None
    else:
        best = best_trials(study, config.mode, 1)
        if not best:
            raise ValueError(f"study {config.name!r} has no trial that finished its full budget "
                             "yet")
        trial = best[0]
        spec, overrides, number = trial_spec(trial), trial_train(trial), trial.number
        name, value = display_name(trial), trial.value
    train = config.train.replace(**overrides)
    attrs = trial.user_attrs if trial is not None else {}
    return {
        "format": FORMAT,
        "name": name,
        "spec": spec,
        "base_optimizer": _base(train),
        "schedule": {"name": train.schedule, "epochs": train.epochs,
                     "milestones": train.resolved_milestones(), "gamma": train.gamma},
        "batch_size": train.batch_size,
        "study": config.name, "trial": number, "label": attrs.get("label", name),
        "metric": config.metric, "mode": config.mode, "value": value,
        "epochs": attrs.get("epochs", train.epochs),
        "passes_per_step": attrs.get("passes_per_step"),
        "dataset": train.dataset, "model": train.model,
        "confirmed": verdict.to_dict() if verdict is not None else None,
    }


def _base(train: Any) -> dict[str, Any]:
    if train.optimizer == "sgd":
        return {"name": "sgd", "lr": train.lr, "momentum": train.momentum,
                "weight_decay": train.weight_decay,
                "nesterov": train.nesterov and train.momentum > 0}
    return {"name": "adamw", "lr": train.lr, "weight_decay": train.weight_decay}


BASES: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD,
                                                  "adamw": torch.optim.AdamW}


def read_export(path_or_study: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """An exported optimizer from a JSON file, a study YAML (its current best) or a dict."""
    if isinstance(path_or_study, dict):
        data = path_or_study
    else:
        path = Path(path_or_study)
        if path.suffix in (".yaml", ".yml"):
            from metasam.tuning.study import StudyConfig

            return best_optimizer(StudyConfig.from_yaml(path))
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ValueError(f"{path}: cannot read ({err.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not an optimizer export: invalid JSON ({err}); allowed: "
                             "the JSON that `metasam best` writes, or a study YAML") from None
    source = "the optimizer export" if isinstance(path_or_study, dict) else str(path_or_study)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}; "
                         "allowed: the JSON that `metasam best` writes")
    if data.get("format") != FORMAT:
        raise ValueError(f"{source}: format: {data.get('format')!r}; allowed: {FORMAT!r} (the "
                         "JSON that `metasam best` writes)")
    for key, kind in (("spec", dict), ("base_optimizer", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{source}: {key}: missing or not an object; allowed: the JSON "
                             "that `metasam best` writes")
    if "name" not in data["base_optimizer"]:
        raise ValueError(f"{source}: base_optimizer.name: missing; allowed: "
                         f"{', '.join(BASES)}")
    return data


def load_optimizer(path_or_study: str | os.PathLike[str] | dict[str, Any],
                   params: Iterable[Any], *, model: nn.Module | None = None,
                   seed: int | None = None, **overrides: Any) -> UniversalSAM:
    """A ready :class:`~metasam.UniversalSAM` from a study's best optimizer.

    ``path_or_study`` is the JSON that ``metasam best`` wrote, or the study's YAML (its best
    full-budget trial is read from the storage). ``overrides`` change base-optimizer arguments
    (``lr=...``); UniversalSAM's own options (``scaler``, ``max_grad_norm``, ``bn_stats``,
    ``on_nonfinite``, ``process_group``) go to it. Example::

        optimizer = metasam.load_optimizer("studies/digits-quick.best.json", model.parameters(),
                                           model=model)
        for x, y in loader:
            optimizer.step(closure)
    """
    data = read_export(path_or_study)
    source = None if isinstance(path_or_study, dict) else str(path_or_study)
    base = dict(data["base_optimizer"])
    name = base.pop("name")
    if name not in BASES:
        raise ValueError(f"{source or 'the optimizer export'}: base_optimizer.name: unknown "
                         f"value {name!r}; allowed: {', '.join(BASES)}")
    own = {k: overrides.pop(k) for k in _OWN_OPTIONS if k in overrides}
    base.update(overrides)
    spec = SharpnessSpec.from_dict(data["spec"], source=source)
    return UniversalSAM(params, BASES[name], spec, model=model, seed=seed, **own, **base)


_OWN_OPTIONS = ("scaler", "max_grad_norm", "bn_stats", "on_nonfinite", "process_group")
