"""Exported optimizers (the JSON ``metasam best`` writes): reading them, and a ready
:class:`~metasam.UniversalSAM` from one in one call."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
