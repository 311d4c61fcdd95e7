"""Training runs: :class:`TrainConfig` says what to run, :func:`train` runs it."""

from metasam.training.config import TrainConfig
from metasam.training.trainer import Trial, evaluate, train

__all__ = ["TrainConfig", "Trial", "evaluate", "train"]
