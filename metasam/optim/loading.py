"""Exported optimizers (the JSON ``metasam best`` writes): reading them, and a ready
:class:`~metasam.UniversalSAM` from one in one call."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from metasam.family.spec import SharpnessSpec
from metasam.optim.bases import BASES, base_class
from metasam.optim.universal_sam import UniversalSAM

FORMAT = "metasam.optimizer/1"


def read_export(path_or_study: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """An exported optimizer from a JSON file, a study YAML (its current best) or a dict."""
    if isinstance(path_or_study, dict):
        data = path_or_study
    else:
        path = Path(path_or_study)
        if path.suffix in (".yaml", ".yml"):
            from metasam.tuning.export import best_optimizer
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
    ``on_nonfinite``, ``process_group``, ``total_steps`` — needed by a spec whose schedule
    starts late) go to it. Example::

        optimizer = metasam.load_optimizer("studies/digits-quick.best.json", model.parameters(),
                                           model=model)
        for x, y in loader:
            optimizer.step(closure)
    """
    data = read_export(path_or_study)
    source = None if isinstance(path_or_study, dict) else str(path_or_study)
    cls, base = base_class(data["base_optimizer"],
                           f"{source or 'the optimizer export'}: base_optimizer")
    own = {k: overrides.pop(k) for k in _OWN_OPTIONS if k in overrides}
    base.update(overrides)
    spec = SharpnessSpec.from_dict(data["spec"], source=source)
    return UniversalSAM(params, cls, spec, model=model, seed=seed, **own, **base)


_OWN_OPTIONS = ("scaler", "max_grad_norm", "bn_stats", "on_nonfinite", "process_group",
                "total_steps")
