"""metasam: search the universal class of sharpness-aware minimization.

Public API::

    from metasam import UniversalSAM, SharpnessSpec, presets

    spec = presets.frob_sam()                       # or SharpnessSpec(...), or "frob_sam"
    optimizer = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, lr=0.1)
"""

import sys

from metasam.errors import NonFiniteStepError, SpecError
from metasam.family import Measure, SharpnessSpec, presets
from metasam.optim import StepInfo, UniversalSAM, load_optimizer

# The presets live in metasam.family (they are members of the family); `metasam.presets`
# stays the short public name.
sys.modules.setdefault("metasam.presets", presets)

__version__ = "0.1.0"

__all__ = ["Measure", "NonFiniteStepError", "SharpnessSpec", "SpecError", "StepInfo",
           "UniversalSAM", "load_optimizer", "presets", "__version__"]
