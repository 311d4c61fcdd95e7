"""Tuning studies over the sharpness family: search spaces, study configs, the Ray Tune runner
with Optuna storage, and the export of the best optimizer."""

from metasam.tuning.space import SearchSpace
from metasam.tuning.study_config import StudyConfig

__all__ = ["SearchSpace", "StudyConfig"]
