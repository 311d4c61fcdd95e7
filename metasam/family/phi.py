"""φ: R → R^m, the per-perturbation transform of the sharpness family.

A :class:`Phi` is a concatenation of blocks. Each block maps the scalar D (a loss difference,
≈ ½ vᵀHv) to one or more outputs and knows its exact derivative:

- :class:`NamedPhi` — ``identity``, ``square``, ``power`` (integer p), ``abs_power`` (real p ≥ 1),
  ``exp`` (exp(scale·t); scale −½ is Det-SAM's exp(−t/2)), ``tanh`` and ``softplus`` (saturating,
  scale·f(t/scale)).
- :class:`PolynomialPhi` — Σ_k c_k t^k with given coefficients.
- :class:`MLPPhi` — a tiny MLP R → R^m with given weights (tanh, softplus or sigmoid hidden units).

Example::

    >>> import torch
    >>> phi = Phi.from_obj(["identity", "square"])        # Frob-SAM's (t, t²)
    >>> phi(torch.tensor([1.0, 2.0], dtype=torch.float64))
    tensor([[1., 1.],
            [2., 4.]], dtype=torch.float64)

JSON form (what :meth:`Phi.to_obj` writes): a list of blocks, each ``{"fn": NAME, ...params}``,
``{"fn": "polynomial", "coefficients": [...]}`` or ``{"fn": "mlp", "weights": ..., "biases": ...}``;
a bare string stands for a named block without parameters.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metasam import _checks
from metasam.errors import SpecError
from metasam.family.functions import Form, named_parameters, read_function

# A closed form the implied-measure code can integrate exactly, per output of a block:
# ("poly", coefficients c_0..c_k) or ("exp", scale); None where only Monte Carlo applies.
ClosedForm = tuple[str, Any] | None


class PhiBlock(ABC):
    """One block of φ: a map R → R^dim applied element-wise to a tensor of D values."""

    dim: int

    @abstractmethod
    def value(self, t: Tensor) -> Tensor:
        """φ(t) with a trailing axis of size ``dim``: shape ``t.shape + (dim,)``."""

    @abstractmethod
    def derivative(self, t: Tensor) -> Tensor:
        """dφ/dt, same shape as :meth:`value`."""

    @abstractmethod
    def to_obj(self) -> dict[str, Any]:
        """JSON-ready description that :meth:`Phi.from_obj` reads back."""

    def closed_forms(self) -> list[ClosedForm]:
        return [None] * self.dim

    @property
    def is_affine(self) -> bool:
        return False


# --- named blocks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _NamedDef:
    params: dict[str, float]  # parameter -> default
    check: Callable[[dict[str, Any]], dict[str, float]]
    value: Callable[[Tensor, dict[str, float]], Tensor]
    derivative: Callable[[Tensor, dict[str, float]], Tensor]
    closed_form: Callable[[dict[str, float]], ClosedForm] = lambda p: None
    affine: bool = False


def _no_params(p: dict[str, Any]) -> dict[str, float]:
    return {}


def _check_power(p: dict[str, Any]) -> dict[str, float]:
    return {"p": _checks.integer("p", p["p"], low=1, high=64)}


def _check_abs_power(p: dict[str, Any]) -> dict[str, float]:
    return {"p": _checks.number("p", p["p"], low=1.0, high=64.0)}


def _check_scale(p: dict[str, Any]) -> dict[str, float]:
    return {"scale": _checks.number("scale", p["scale"], low=0.0, low_open=True)}


def _check_exp(p: dict[str, Any]) -> dict[str, float]:
    return {"scale": _checks.number("scale", p["scale"], low=-1e3, high=1e3)}


def _poly(k: int) -> ClosedForm:
    return ("poly", tuple([0.0] * k + [1.0]))


NAMED_PHI: dict[str, _NamedDef] = {
    "identity": _NamedDef({}, _no_params, lambda t, p: t, lambda t, p: torch.ones_like(t),
                          lambda p: _poly(1), affine=True),
    "square": _NamedDef({}, _no_params, lambda t, p: t * t, lambda t, p: 2 * t,
                        lambda p: _poly(2)),
    "power": _NamedDef({"p": 2}, _check_power, lambda t, p: t ** int(p["p"]),
                       lambda t, p: p["p"] * t ** (int(p["p"]) - 1),
                       lambda p: _poly(int(p["p"]))),
    "abs_power": _NamedDef({"p": 2.0}, _check_abs_power, lambda t, p: t.abs() ** p["p"],
                           lambda t, p: p["p"] * t.abs() ** (p["p"] - 1) * torch.sign(t)),
    "exp": _NamedDef({"scale": -0.5}, _check_exp, lambda t, p: torch.exp(p["scale"] * t),
                     lambda t, p: p["scale"] * torch.exp(p["scale"] * t),
                     lambda p: ("exp", p["scale"])),
    "tanh": _NamedDef({"scale": 1.0}, _check_scale,
                      lambda t, p: p["scale"] * torch.tanh(t / p["scale"]),
                      lambda t, p: 1 - torch.tanh(t / p["scale"]) ** 2),
    "softplus": _NamedDef({"scale": 1.0}, _check_scale,
                          lambda t, p: p["scale"] * torch.nn.functional.softplus(t / p["scale"]),
                          lambda t, p: torch.sigmoid(t / p["scale"])),
}


class NamedPhi(PhiBlock):
    """A named scalar function with its parameters, e.g. ``NamedPhi("exp", scale=-0.5)``."""

    dim = 1

    def __init__(self, name: str, **params: Any) -> None:
        self._def, self.params = named_parameters(NAMED_PHI, name, params, "φ", list(PHI_FORMS))
        self.name = name

    def value(self, t: Tensor) -> Tensor:
        return self._def.value(t, self.params).unsqueeze(-1)

    def derivative(self, t: Tensor) -> Tensor:
        return self._def.derivative(t, self.params).unsqueeze(-1)

    def to_obj(self) -> dict[str, Any]:
        return {"fn": self.name, **self.params}

    def closed_forms(self) -> list[ClosedForm]:
        return [self._def.closed_form(self.params)]

    @property
    def is_affine(self) -> bool:
        return self._def.affine


class PolynomialPhi(PhiBlock):
    """Σ_k c_k t^k for coefficients ``(c_0, c_1, ..., c_K)``."""

    dim = 1

    def __init__(self, coefficients: Sequence[float]) -> None:
        self.coefficients = _checks.numbers("coefficients", coefficients)
        if len(self.coefficients) > 17:
            raise SpecError("coefficients", f"degree {len(self.coefficients) - 1} is too high",
                            "degrees 0 to 16")

    def value(self, t: Tensor) -> Tensor:
        out = torch.zeros_like(t)
        for c in reversed(self.coefficients):  # Horner
            out = out * t + c
        return out.unsqueeze(-1)

    def derivative(self, t: Tensor) -> Tensor:
        out = torch.zeros_like(t)
        for k in range(len(self.coefficients) - 1, 0, -1):
            out = out * t + k * self.coefficients[k]
        return out.unsqueeze(-1)

    def to_obj(self) -> dict[str, Any]:
        return {"fn": "polynomial", "coefficients": list(self.coefficients)}

    def closed_forms(self) -> list[ClosedForm]:
        return [("poly", self.coefficients)]

    @property
    def is_affine(self) -> bool:
        return all(c == 0 for c in self.coefficients[2:])


_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "tanh": (torch.tanh, lambda h: 1 - torch.tanh(h) ** 2),
    "softplus": (torch.nn.functional.softplus, torch.sigmoid),
    "sigmoid": (torch.sigmoid, lambda h: torch.sigmoid(h) * (1 - torch.sigmoid(h))),
}


class MLPPhi(PhiBlock):
    """A tiny MLP R → R^m with fixed weights: h_0 = input_scale·t, h_k = σ(W_k h_{k-1} + b_k),
    output W_L h_{L-1} + b_L (no activation on the output layer).

    ``weights[k]`` has shape (out_k, in_k) with in_0 = 1; ``biases[k]`` has length out_k.
    """

    def __init__(self, weights: Sequence[Sequence[Sequence[float]]],
                 biases: Sequence[Sequence[float]], activation: str = "tanh",
                 input_scale: float = 1.0) -> None:
        self.activation = _checks.choice("activation", activation, _ACTIVATIONS)
        self.input_scale = _checks.number("input_scale", input_scale, low=0.0, low_open=True)
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable) or not weights:
            raise SpecError("weights", "expected a non-empty list of matrices",
                            "lists of rows of finite numbers")
        if isinstance(biases, (str, bytes)) or not isinstance(biases, Iterable):
            raise SpecError("biases", "expected a list of vectors", "one vector per layer")
        weights, biases = list(weights), list(biases)
        if len(biases) != len(weights):
            raise SpecError("biases", f"{len(biases)} bias vectors for {len(weights)} layers",
                            "one bias vector per weight matrix")
        self.weights: list[tuple[tuple[float, ...], ...]] = []
        self.biases: list[tuple[float, ...]] = []
        fan_in = 1
        for k, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if isinstance(w, (str, bytes)) or not isinstance(w, Iterable):
                raise SpecError(f"weights[{k}]", "expected a matrix (a list of rows)")
            rows = [_checks.numbers(f"weights[{k}][{i}]", r) for i, r in enumerate(w)]
            if not rows or any(len(r) != fan_in for r in rows):
                raise SpecError(f"weights[{k}]", f"rows must have {fan_in} entries "
                                f"(the previous layer's width)", f"shape (out, {fan_in})")
            bias = _checks.numbers(f"biases[{k}]", b)
            if len(bias) != len(rows):
                raise SpecError(f"biases[{k}]", f"length {len(bias)} does not match the "
                                f"{len(rows)} rows of weights[{k}]", f"length {len(rows)}")
            self.weights.append(tuple(rows))
            self.biases.append(bias)
            fan_in = len(rows)
        self.dim = fan_in

    def _forward(self, t: Tensor, with_derivative: bool) -> tuple[Tensor, Tensor | None]:
        act, dact = _ACTIVATIONS[self.activation]
        h = (t * self.input_scale).unsqueeze(-1)  # (..., 1)
        dh = torch.full_like(h, self.input_scale) if with_derivative else None
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            weight = torch.tensor(w, dtype=t.dtype, device=t.device)
            bias = torch.tensor(b, dtype=t.dtype, device=t.device)
            pre = h @ weight.T + bias
            dpre = dh @ weight.T if dh is not None else None
            if k == last:
                h, dh = pre, dpre
            else:
                h = act(pre)
                dh = dact(pre) * dpre if dpre is not None else None
        return h, dh

    def value(self, t: Tensor) -> Tensor:
        return self._forward(t, with_derivative=False)[0]

    def derivative(self, t: Tensor) -> Tensor:
        derivative = self._forward(t, with_derivative=True)[1]
        assert derivative is not None
        return derivative

    def to_obj(self) -> dict[str, Any]:
        return {"fn": "mlp", "weights": [[list(r) for r in w] for w in self.weights],
                "biases": [list(b) for b in self.biases], "activation": self.activation,
                "input_scale": self.input_scale}

    @classmethod
    def random(cls, widths: Sequence[int], generator: torch.Generator | None = None,
               activation: str = "tanh", input_scale: float = 1.0,
               weight_scale: float = 1.0) -> MLPPhi:
        """An MLP with widths ``(h_1, ..., m)`` and N(0, weight_scale²/fan_in) weights."""
        weights, biases, fan_in = [], [], 1
        for width in widths:
            w = torch.randn(width, fan_in, generator=generator, dtype=torch.float64)
            weights.append((w * weight_scale / math.sqrt(fan_in)).tolist())
            biases.append([0.0] * width)
            fan_in = width
        return cls(weights, biases, activation=activation, input_scale=input_scale)


PHI_FORMS = {
    "polynomial": Form(("coefficients",), ("coefficients",), "a list of finite numbers c_0..c_K",
                       lambda coefficients: PolynomialPhi(coefficients)),
    "mlp": Form(("weights", "biases", "activation", "input_scale"), ("weights", "biases"),
                "lists of finite numbers", lambda **fields: MLPPhi(**fields)),
}


def block_from_obj(obj: Any) -> PhiBlock:
    """Read one block from its JSON form (see the module docstring)."""
    if isinstance(obj, PhiBlock):
        return obj
    return read_function(obj, named=NAMED_PHI, forms=PHI_FORMS, make_named=NamedPhi)


class Phi:
    """φ = (block_1, ..., block_k) concatenated: R → R^m with m the sum of the blocks' sizes."""

    def __init__(self, blocks: Sequence[PhiBlock]) -> None:
        if not blocks:
            raise SpecError("phi", "needs at least one block",
                            sorted(NAMED_PHI) + ["polynomial", "mlp"])
        self.blocks = tuple(blocks)
        self.dim = sum(b.dim for b in self.blocks)

    @classmethod
    def from_obj(cls, obj: Any) -> Phi:
        """From a :class:`Phi`, a block, a name, a dict or a list of those."""
        if isinstance(obj, Phi):
            return obj
        items = obj if isinstance(obj, (list, tuple)) else [obj]
        blocks = []
        for i, item in enumerate(items):
            try:
                blocks.append(block_from_obj(item))
            except SpecError as err:
                raise err.within(f"phi[{i}]") from None
        return cls(blocks)

    def to_obj(self) -> list[dict[str, Any]]:
        return [b.to_obj() for b in self.blocks]

    def __call__(self, t: Tensor) -> Tensor:
        return torch.cat([b.value(t) for b in self.blocks], dim=-1)

    def derivative(self, t: Tensor) -> Tensor:
        return torch.cat([b.derivative(t) for b in self.blocks], dim=-1)

    def closed_forms(self) -> list[ClosedForm]:
        return [form for b in self.blocks for form in b.closed_forms()]

    @property
    def is_affine(self) -> bool:
        return all(b.is_affine for b in self.blocks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Phi) and self.to_obj() == other.to_obj()

    def __hash__(self) -> int:
        return hash(repr(self.to_obj()))

    def __repr__(self) -> str:
        return f"Phi({self.to_obj()!r})"
