"""The optimizer that trains against a sharpness spec."""

from metasam.optim.batchnorm import RunningStatsGuard
from metasam.optim.universal_sam import StepInfo, UniversalSAM

__all__ = ["RunningStatsGuard", "StepInfo", "UniversalSAM"]
