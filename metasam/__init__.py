"""metasam: search the universal class of sharpness-aware minimization.

Public API::

    from metasam import UniversalSAM, SharpnessSpec, presets

    spec = presets.frob_sam()                       # or SharpnessSpec(...), or "frob_sam"
    optimizer = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, lr=0.1)
"""

import sys
from typing import Any

from metasam._version import __version__
from metasam.errors import NonFiniteStepError, SpecError, ValidationError
from metasam.family import Measure, SharpnessSpec, presets
from metasam.optim import StepInfo, UniversalSAM

# The presets live in metasam.family (they are members of the family); `metasam.presets`
# stays the short public name.
sys.modules.setdefault("metasam.presets", presets)


__all__ = ["Measure", "NonFiniteStepError", "SharpnessSpec", "SpecError", "StepInfo", "Study",
           "UniversalSAM", "ValidationError", "load_optimizer", "load_recipe", "presets",
           "__version__"]


def __getattr__(name: str) -> Any:
    # The study workflow pulls in Optuna and Ray: loaded when first asked for, so that
    # `import metasam` for the optimizer alone stays light.
    if name in ("Study", "load_optimizer", "load_recipe"):
        from metasam import workflow

        return getattr(workflow, name)
    raise AttributeError(f"module 'metasam' has no attribute {name!r}")
