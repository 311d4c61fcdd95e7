"""The (φ, ψ, μ) sharpness family: its parts, the spec that combines them, and what it measures."""

from metasam.family import presets  # noqa: E402, I001 (after the spec it builds on)
from metasam.family.implied import MeasureValue, implied_measure
from metasam.family.measures import Measure
from metasam.family.phi import MLPPhi, NamedPhi, Phi, PolynomialPhi
from metasam.family.psi import NamedPsi, PolynomialPsi, Psi
from metasam.family.spec import SharpnessSpec

__all__ = ["Measure", "MeasureValue", "MLPPhi", "NamedPhi", "NamedPsi", "Phi", "PolynomialPhi",
           "PolynomialPsi", "Psi", "SharpnessSpec", "implied_measure", "presets"]
