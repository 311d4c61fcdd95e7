"""The optimizer that trains against a sharpness spec."""

from metasam.optim.batchnorm import RunningStatsGuard
from metasam.optim.closures import accumulating_closure
from metasam.optim.loading import load_optimizer, read_export
from metasam.optim.universal_sam import StepInfo, UniversalSAM

__all__ = ["RunningStatsGuard", "StepInfo", "UniversalSAM", "accumulating_closure",
           "load_optimizer", "read_export"]
