"""A small convolutional network for images (C, H, W) or 1-D signals (C, L)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Three conv–BN–ReLU blocks (32, 64, 128 channels; pooling after the first two when the
    input is large enough), global average pooling and a linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int,
                 widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn: input shape must be (C, L) or (C, H, W), got {input_shape}")
        two_d = len(input_shape) == 3
        conv = nn.Conv2d if two_d else nn.Conv1d
        norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        pool = nn.MaxPool2d if two_d else nn.MaxPool1d
        size = min(input_shape[1:])
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for i, width in enumerate(widths):
            layers += [conv(channels, width, 3, padding=1, bias=False), norm(width), nn.ReLU()]
            if i < len(widths) - 1 and size >= 8:
                layers.append(pool(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))
