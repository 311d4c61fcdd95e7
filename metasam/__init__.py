"""metasam: search the universal class of sharpness-aware minimization.

Public API::

    from metasam import UniversalSAM, SharpnessSpec, presets

    spec = presets.frob_sam()                       # or SharpnessSpec(...), or "frob_sam"
    optimizer = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, lr=0.1)
"""

from metasam import presets
from metasam.errors import NonFiniteStepError, SpecError
from metasam.family import Measure, SharpnessSpec
from metasam.optim import StepInfo, UniversalSAM

__version__ = "0.1.0"

__all__ = ["Measure", "NonFiniteStepError", "SharpnessSpec", "SpecError", "StepInfo",
           "UniversalSAM", "presets", "__version__"]
