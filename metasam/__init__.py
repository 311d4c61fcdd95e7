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


def load_optimizer(path_or_study, params, **kwargs):  # noqa: ANN001, ANN201
    """A ready UniversalSAM from a study's best optimizer (see metasam.tuning.export)."""
    from metasam.tuning.export import load_optimizer as _load

    return _load(path_or_study, params, **kwargs)


__version__ = "0.1.0"

__all__ = ["Measure", "NonFiniteStepError", "SharpnessSpec", "SpecError", "StepInfo",
           "UniversalSAM", "load_optimizer", "presets", "__version__"]
