"""The paper's explicit-bias MLP: 6 linear layers, ReLU, 128 hidden units."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten → (Linear(·, width) → ReLU) × (depth − 1) → Linear(width, classes)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(depth - 1):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
