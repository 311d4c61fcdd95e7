"""Models by name: ``resnet18`` (CIFAR ResNet-18), ``mlp`` (the paper's 6-layer ReLU MLP with
128 hidden units), ``cnn`` (a small convolutional network for images or 1-D signals).

    >>> from metasam.models import build_model
    >>> model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    >>> sum(p.numel() for p in model.parameters())
    11173962
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from metasam.errors import ConfigError
from metasam.models.cnn import SmallCNN
from metasam.models.mlp import MLP
from metasam.models.resnet import resnet18

MODELS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {
    "resnet18": lambda shape, classes: resnet18(num_classes=classes, in_channels=shape[0]),
    "mlp": lambda shape, classes: MLP(shape, classes),
    "cnn": lambda shape, classes: SmallCNN(shape, classes),
}


def build_model(name: str, input_shape: Sequence[int] = (3, 32, 32),
                num_classes: int = 10) -> nn.Module:
    """The model called ``name`` for inputs of ``input_shape`` (without the batch axis)."""
    if name not in MODELS:
        raise ConfigError("model", f"unknown model {name!r}", MODELS)
    return MODELS[name](tuple(input_shape), num_classes)


__all__ = ["MLP", "MODELS", "SmallCNN", "build_model", "resnet18"]
