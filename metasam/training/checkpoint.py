"""Training checkpoints: written atomically, read back with a clear error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from metasam.errors import ConfigError

FORMAT = "metasam.checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a crash mid-write leaves the old file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ConfigError("", f"not a readable metasam checkpoint ({err})",
                          source=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError("", "not a metasam checkpoint", f"format {FORMAT}", str(path))
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
