"""Per-parameter state of an optimizer in a ``state_dict``: tensors keyed by the parameter's
index in the parameter groups, so that a state saved from one model loads into another."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def by_index(state: Any, params: list[Tensor], key: str) -> dict[int, Tensor]:
    """``state[p][key]`` of every parameter that has one, by its index in ``params``."""
    index = {id(p): i for i, p in enumerate(params)}
    return {index[id(p)]: s[key] for p, s in state.items() if key in s}


def restore(state: Any, params: list[Tensor], key: str, values: dict[Any, Tensor]) -> None:
    """The inverse of :func:`by_index`: each value onto its parameter's device."""
    for i, value in values.items():
        p = params[int(i)]
        state[p][key] = value.to(p.device)
