"""In-memory datasets as tensors: what every source produces and every loader consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class ArrayData:
    """Examples ``x`` (N, C, H, W) images or (N, C, L) signals, labels ``y`` (N,) int64.

    ``x`` keeps the source's dtype (uint8 images stay uint8: 4× less memory on the device); a
    batch becomes model input as ``((x / scale) − mean) / std`` per channel.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0
    name: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} examples but {self.y.shape[0]} "
                             "labels")
        if len(self.mean) != self.x.shape[1] or len(self.std) != self.x.shape[1]:
            raise ValueError(f"{self.name}: mean/std need one value per channel "
                             f"({self.x.shape[1]})")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: Tensor) -> ArrayData:
        return replace(self, x=self.x[index], y=self.y[index])

    def with_labels(self, y: Tensor) -> ArrayData:
        return replace(self, y=y)

    def constants(self, device: torch.device | str, ndim: int) -> tuple[Tensor, Tensor]:
        """The normalization's mean and std as float32 tensors on ``device``, shaped to
        broadcast over a batch of ``ndim`` dimensions (build once, pass to
        :meth:`normalize`)."""
        shape = (1, -1) + (1,) * (ndim - 2)
        mean = torch.tensor(self.mean, device=device, dtype=torch.float32).reshape(shape)
        std = torch.tensor(self.std, device=device, dtype=torch.float32).reshape(shape)
        return mean, std

    def normalize(self, x: Tensor, constants: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Model input from a batch of raw ``x`` (on any device); ``constants`` from
        :meth:`constants` saves building them per batch."""
        mean, std = constants if constants is not None else self.constants(x.device, x.ndim)
        return (x.float() / self.scale - mean) / std


@dataclass(frozen=True)
class Splits:
    """Train / validation / test, with a description of how they were made."""

    train: ArrayData
    val: ArrayData | None
    test: ArrayData
    description: dict[str, object] = field(default_factory=dict)
