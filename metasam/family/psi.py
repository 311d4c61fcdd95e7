"""ψ: R^m → R, the outer transform of the sharpness family, with its exact gradient.

Named functions (input size in brackets):

- ``identity`` [1]: s; ``sum`` [any m]: Σ_j s_j
- ``variance`` [2]: (a, b) ↦ (b − a²)/2, half the variance when φ = (t, t²); with ``unbiased: true``
  it is multiplied by n/(n − 1) for n samples (the official Frob-SAM covariance)
- ``inverse_square`` [1]: s^−2 (Det-SAM); ``power`` [1]: sign(s)|s|^q; ``root`` [1]:
  sign(s)|s|^(1/p); ``log`` [1]: log s

and :class:`PolynomialPsi`, Σ_t c_t Π_j s_j^(e_tj) with non-negative integer exponents.

Example::

    >>> import torch
    >>> psi = Psi.from_obj({"fn": "variance"})
    >>> float(psi(torch.tensor([1.0, 3.0], dtype=torch.float64)))   # (3 − 1²)/2
    1.0

``n`` (the number of perturbations averaged) is passed to every ψ; only the unbiased variance
uses it, and ``n=None`` means the n → ∞ limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metasam import _checks
from metasam.errors import SpecError
from metasam.family.functions import Form, named_parameters, read_function


class Psi(ABC):
    """ψ: R^m → R. ``dim`` is m, or ``None`` when any m is accepted (``sum``)."""

    dim: int | None

    @abstractmethod
    def __call__(self, s: Tensor, n: int | None = None) -> Tensor:
        """ψ(s) for s of shape ``(..., m)``; returns shape ``(...)``."""

    @abstractmethod
    def grad(self, s: Tensor, n: int | None = None) -> Tensor:
        """∇ψ(s), shape ``(..., m)``."""

    @abstractmethod
    def to_obj(self) -> dict[str, Any]:
        """JSON-ready description that :meth:`Psi.from_obj` reads back."""

    @property
    def is_affine(self) -> bool:
        return False

    @classmethod
    def from_obj(cls, obj: Any) -> Psi:
        """From a :class:`Psi`, a name or a dict ``{"fn": NAME, ...params}``."""
        if isinstance(obj, Psi):
            return obj
        try:
            return _psi_from_obj(obj)
        except SpecError as err:
            raise err.within("psi") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Psi) and self.to_obj() == other.to_obj()

    def __hash__(self) -> int:
        return hash(repr(self.to_obj()))

    def __repr__(self) -> str:
        return f"Psi({self.to_obj()!r})"


@dataclass(frozen=True)
class _NamedDef:
    dim: int | None
    params: dict[str, Any]
    check: Callable[[dict[str, Any]], dict[str, Any]]
    value: Callable[[Tensor, dict[str, Any], int | None], Tensor]
    grad: Callable[[Tensor, dict[str, Any], int | None], Tensor]
    affine: bool = False


def _variance_factor(p: Mapping[str, Any], n: int | None) -> float:
    if p["unbiased"] and n is not None:
        return n / (n - 1) if n > 1 else float("nan")
    return 1.0


def _variance_value(s: Tensor, p: dict[str, Any], n: int | None) -> Tensor:
    return _variance_factor(p, n) * (s[..., 1] - s[..., 0] ** 2) / 2


def _variance_grad(s: Tensor, p: dict[str, Any], n: int | None) -> Tensor:
    factor = _variance_factor(p, n)
    return factor * torch.stack([-s[..., 0], torch.full_like(s[..., 1], 0.5)], dim=-1)


def _signed_power(s: Tensor, q: float) -> Tensor:
    return torch.sign(s) * s.abs() ** q


def _no_params(p: dict[str, Any]) -> dict[str, Any]:
    return {}


NAMED_PSI: dict[str, _NamedDef] = {
    "identity": _NamedDef(1, {}, _no_params, lambda s, p, n: s[..., 0],
                          lambda s, p, n: torch.ones_like(s), affine=True),
    "sum": _NamedDef(None, {}, _no_params, lambda s, p, n: s.sum(-1),
                     lambda s, p, n: torch.ones_like(s), affine=True),
    "variance": _NamedDef(2, {"unbiased": False},
                          lambda p: {"unbiased": _checks.boolean("unbiased", p["unbiased"])},
                          _variance_value, _variance_grad),
    "inverse_square": _NamedDef(1, {}, _no_params, lambda s, p, n: s[..., 0] ** -2,
                                lambda s, p, n: -2 * s ** -3),
    "power": _NamedDef(1, {"q": 1.0},
                       lambda p: {"q": _checks.number("q", p["q"], low=-8.0, high=8.0)},
                       lambda s, p, n: _signed_power(s[..., 0], p["q"]),
                       lambda s, p, n: p["q"] * s.abs() ** (p["q"] - 1)),
    "root": _NamedDef(1, {"p": 2.0},
                      lambda p: {"p": _checks.number("p", p["p"], low=1.0, high=64.0)},
                      lambda s, p, n: _signed_power(s[..., 0], 1 / p["p"]),
                      lambda s, p, n: s.abs() ** (1 / p["p"] - 1) / p["p"]),
    "log": _NamedDef(1, {}, _no_params, lambda s, p, n: torch.log(s[..., 0]),
                     lambda s, p, n: 1 / s),
}


class NamedPsi(Psi):
    """A named ψ with its parameters, e.g. ``NamedPsi("variance", unbiased=True)``."""

    def __init__(self, name: str, **params: Any) -> None:
        self._def, self.params = named_parameters(NAMED_PSI, name, params, "ψ", list(PSI_FORMS))
        self.name = name
        self.dim = self._def.dim

    def __call__(self, s: Tensor, n: int | None = None) -> Tensor:
        return self._def.value(s, self.params, n)

    def grad(self, s: Tensor, n: int | None = None) -> Tensor:
        return self._def.grad(s, self.params, n)

    def to_obj(self) -> dict[str, Any]:
        return {"fn": self.name, **self.params}

    @property
    def is_affine(self) -> bool:
        return self._def.affine


class PolynomialPsi(Psi):
    """Σ_t c_t Π_j s_j^(e_tj). ``terms`` is a list of ``(coef, (e_1, ..., e_m))``."""

    def __init__(self, terms: Iterable[Any]) -> None:
        if isinstance(terms, (str, bytes)) or not isinstance(terms, Iterable):
            raise SpecError("terms", "expected a list of [coef, [exponents]] pairs",
                            "[[c, [e_1, ..., e_m]], ...] with integer e_j in [0, 16]")
        parsed: list[tuple[float, tuple[int, ...]]] = []
        for i, term in enumerate(terms):
            if isinstance(term, Mapping):
                term = (term.get("coef"), term.get("powers"))
            if not isinstance(term, (list, tuple)) or len(term) != 2:
                raise SpecError(f"terms[{i}]", f"expected [coef, [exponents]], got {term!r}",
                                "[c, [e_1, ..., e_m]]")
            coef = _checks.number(f"terms[{i}][0]", term[0])
            if isinstance(term[1], (str, bytes)) or not isinstance(term[1], Iterable):
                raise SpecError(f"terms[{i}][1]", "expected a list of exponents",
                                "integers in [0, 16]")
            powers = tuple(_checks.integer(f"terms[{i}][1][{j}]", e, low=0, high=16)
                           for j, e in enumerate(term[1]))
            parsed.append((coef, powers))
        if not parsed:
            raise SpecError("terms", "needs at least one term", "[[c, [e_1, ..., e_m]], ...]")
        dims = {len(p) for _, p in parsed}
        if len(dims) != 1 or 0 in dims:
            raise SpecError("terms", "every term needs the same, non-zero number of exponents",
                            "one exponent per output of φ")
        self.terms = tuple(parsed)
        self.dim = dims.pop()

    def __call__(self, s: Tensor, n: int | None = None) -> Tensor:
        out = torch.zeros_like(s[..., 0])
        for coef, powers in self.terms:
            term = torch.full_like(out, coef)
            for j, e in enumerate(powers):
                if e:
                    term = term * s[..., j] ** e
            out = out + term
        return out

    def grad(self, s: Tensor, n: int | None = None) -> Tensor:
        columns = []
        for k in range(self.dim or 0):
            col = torch.zeros_like(s[..., 0])
            for coef, powers in self.terms:
                if powers[k] == 0:
                    continue
                term = torch.full_like(col, coef * powers[k])
                for j, e in enumerate(powers):
                    exponent = e - 1 if j == k else e
                    if exponent:
                        term = term * s[..., j] ** exponent
                col = col + term
            columns.append(col)
        return torch.stack(columns, dim=-1)

    def to_obj(self) -> dict[str, Any]:
        return {"fn": "polynomial", "terms": [[c, list(p)] for c, p in self.terms]}

    @property
    def is_affine(self) -> bool:
        return all(sum(p) <= 1 for _, p in self.terms)


PSI_FORMS = {
    "polynomial": Form(("terms",), ("terms",), "[[c, [e_1, ..., e_m]], ...]",
                       lambda terms: PolynomialPsi(terms)),
}


def _psi_from_obj(obj: Any) -> Psi:
    return read_function(obj, named=NAMED_PSI, forms=PSI_FORMS, make_named=NamedPsi)
