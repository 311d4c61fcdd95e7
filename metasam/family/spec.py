"""SharpnessSpec: one member (φ, ψ, μ, n, ρ, λ) of the universal SAM family."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metasam import _checks
from metasam.errors import SpecError
from metasam.family.implied import MeasureValue, implied_measure
from metasam.family.measures import Measure
from metasam.family.phi import Phi
from metasam.family.psi import Psi
from metasam.family.schedule import Schedule
from metasam.family.trajectory import Trajectories

FORMAT = "metasam.sharpness_spec/1"


class Surrogate(NamedTuple):
    """The zeroth-order sharpness surrogate of one step (see :meth:`SharpnessSpec.surrogate`)."""

    value: Tensor
    weights: Tensor
    psi_grad: Tensor


class Coefficients(NamedTuple):
    """The combine's coefficients: the step's gradient is β_n·g_n + ``g0``·g0 + Σ_{i<n} β_i·g_i,
    or with the g_i folded into m buffers Σ_i φ_j'(D_i)·g_i, buffer j times ``folded[j]``.
    Floats when known on the host (:attr:`SharpnessSpec.coefficients`), else device tensors."""

    beta: list[Any]
    g0: Any
    folded: list[Any]


# ψ's weights at D = 0 per (φ, ψ, n) of the members with constant weights
_CONSTANT_WEIGHTS: dict[str, tuple[list[float], list[float]]] = {}


# The published members, registered by metasam.family.presets (which builds on this module):
# a spec that names one means that preset (see SharpnessSpec.from_dict).
_PRESETS: dict[str, Callable[..., SharpnessSpec]] = {}


def register_preset(make: Callable[..., SharpnessSpec]) -> Callable[..., SharpnessSpec]:
    """Register a preset constructor under its function name (a decorator)."""
    _PRESETS[make.__name__] = make
    return make


def _structure(spec: SharpnessSpec) -> tuple[Any, ...]:
    """What makes a member that member: μ's kind, φ's functions (not their parameters: a
    preset region tunes Tilted SAM's τ), ψ, and whether it has a sharpness term at all."""
    fns = tuple(_functions(spec.phi))
    return spec.measure.kind, fns, json.dumps(spec.psi.to_obj(), sort_keys=True), spec.lam > 0


_KEYS = ("format", "name", "phi", "psi", "measure", "n", "rho", "lam", "d_clip", "lam_scale",
         "guard", "schedule", "vary")
LAM_SCALES = ("absolute", "relative")


@dataclass(frozen=True)
class SharpnessSpec:
    """A sharpness measure S(x) = ψ(E_{v~μ} φ(vᵀ∇²L(x)v)) and how SAM-train against it.

    With D_i = (L(x + ρv_i) − L(x))/ρ² over n sampled v_i, training minimizes
    L + λ·ρ²·ψ((1/n) Σ_i φ(D_i)) (docs/family.md §2). ``lam=0`` is plain training (one pass).

    ``d_clip`` (optional guard): D is clipped to [−d_clip, d_clip] before φ, which bounds the
    weight one perturbation can get; ``None`` (default) computes the exact surrogate and reports
    any overflow as a non-finite step instead.

    ``lam_scale`` says what λ multiplies (docs/search.md, "Strength"):

    - ``"absolute"`` (default, the paper's convention): the step's gradient is
      g0 + (λ/n)·Σ_i w_i·(g_i − g0) with w_i = Σ_j ∂_jψ·φ_j'(D_i), the exact gradient of
      L + λ·ρ²·ψ(mean φ(D_i)). How far it moves depends on the size of the weights, which
      differs by orders of magnitude between members (and between datasets).
    - ``"relative"``: g0 + λ·Σ_i (w_i / Σ_k |w_k|)·(g_i − g0): the weights are normalized to
      unit total size, so the sharpness part of the update is λ times a signed average of the
      gradient differences g_i − g0 (each of size ≈ ρ·‖Hv_i‖). λ = 1 moves as far as SAM at
      the same radius, for every member: one λ range transfers between members and datasets.
      The direction is that of the exact gradient (a positive rescaling per step); it equals
      the absolute form when φ and ψ are identities.

    ``guard`` (optional): the sharpness part c = (combined gradient − g0) is scaled down to
    ‖c‖ ≤ guard·‖g0‖ when it is longer, so that no member can wreck training unnoticed
    (``StepInfo.guard_factor`` records the scaling, 1.0 when inactive).

    ``vary`` (optional): parameters that change over training — ρ and λ as ramps or phases,
    φ's and ψ's coefficients as phases (:mod:`metasam.family.trajectory`); :meth:`at` is the
    member in effect at a fraction of training, and the optimizer needs ``total_steps``. The
    spec's own fields of a varied parameter are set to its value at the end of training.

    Fields accept plain values and are validated: ``phi`` a name, dict or list of them,
    ``psi`` a name or dict, ``measure`` a kind or dict.

    Example::

        >>> spec = SharpnessSpec(phi=["identity", "square"], psi="variance", measure="gaussian",
        ...                      n=2, rho=0.05, lam=0.01)
        >>> SharpnessSpec.from_json(spec.to_json()) == spec
        True
    """

    phi: Phi | Any = "identity"
    psi: Psi | Any = "identity"
    measure: Measure | Any = "gaussian"
    n: int = 1
    rho: float = 0.05
    lam: float = 1.0
    d_clip: float | None = None
    lam_scale: str = "absolute"
    guard: float | None = None
    schedule: Schedule | Any = None
    vary: Trajectories | Any = None
    name: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "phi", Phi.from_obj(self.phi))
        set_(self, "psi", Psi.from_obj(self.psi))
        set_(self, "measure", Measure.from_obj(self.measure))
        set_(self, "n", _checks.integer("n", self.n, low=1, high=1_000_000))
        set_(self, "rho", _checks.number("rho", self.rho, low=0.0, low_open=True))
        set_(self, "lam", _checks.number("lam", self.lam, low=0.0))
        if self.d_clip is not None:
            set_(self, "d_clip", _checks.number("d_clip", self.d_clip, low=0.0, low_open=True))
        set_(self, "lam_scale", _checks.choice("lam_scale", self.lam_scale, LAM_SCALES))
        if self.guard is not None:
            set_(self, "guard", _checks.number("guard", self.guard, low=0.0, low_open=True))
        schedule = Schedule.from_obj(self.schedule)
        # a schedule that applies the term on every step, or one without a term, is none
        set_(self, "schedule", None if schedule is None or schedule.is_always or
             self.lam == 0.0 else schedule)
        if self.name is not None and not isinstance(self.name, str):
            raise SpecError("name", f"expected a string, got {self.name!r}")
        if self.psi.dim is not None and self.psi.dim != self.phi.dim:
            raise SpecError("psi", f"takes {self.psi.dim} input(s) but φ has {self.phi.dim} "
                            "output(s)", f"a ψ of input size {self.phi.dim}")
        if not self.measure.is_random and self.n != 1:
            raise SpecError("n", f"the {self.measure.kind} measure is deterministic, so n must "
                            f"be 1, got {self.n}", "1")
        if getattr(self.psi, "name", None) == "variance" and self.n < 2:
            raise SpecError("n", f"the variance form of ψ needs n ≥ 2 samples, got {self.n}",
                            "integers ≥ 2")
        vary = Trajectories.from_obj(self.vary)
        set_(self, "vary", vary)
        if vary is not None:
            # the fields of a varied parameter hold its value at the end of training (ρ and λ:
            # where that is not 0), so that the spec reads as the member training ends with
            for key, value in vary.values_at(1.0).items():
                if key == "phi":
                    set_(self, key, Phi.from_obj(value))
                elif key == "psi":
                    set_(self, key, Psi.from_obj(value))
                elif value > 0.0:
                    set_(self, key, value)
            if self.lam == 0.0:
                raise SpecError("vary", "a member without a sharpness term (λ = 0) has nothing "
                                "to vary", "a spec with λ > 0 (vary.lam may start at 0)")
            for progress in vary.breakpoints():
                self._check_phase(progress)

    def _check_phase(self, progress: float) -> None:
        """The member at ``progress`` is a valid spec of the same structure (φ's and ψ's
        functions, μ, n) as this one."""
        try:
            member = self.at(progress)
        except SpecError as err:
            raise SpecError(f"vary (at {progress:g} of training): {err.field}", err.problem,
                            err.allowed) from None
        if member.is_plain:
            return
        for part in ("phi", "psi"):
            if _functions(getattr(member, part)) != _functions(getattr(self, part)):
                raise SpecError(f"vary.{part}", f"the phase at {progress:g} of training changes "
                                f"{part}'s functions", f"the spec's own {part} functions with "
                                "other coefficients")

    # --- the surrogate -------------------------------------------------------------------------

    @property
    def is_plain(self) -> bool:
        """True when there is no sharpness term (λ = 0): one pass, plain training."""
        return self.lam == 0.0

    @property
    def passes(self) -> int:
        """Forward/backward passes per optimizer step (1 + n, or 1 without a sharpness term)."""
        return 1 if self.is_plain else 1 + self.n

    @property
    def constant_weights(self) -> bool:
        """Whether every perturbation's weight ∂ψ·φ' is the same constant (φ and ψ affine)."""
        return self.phi.is_affine and self.psi.is_affine

    def weight_scale(self, weights: list[float]) -> float:
        """The factor c with which the step's gradient is g0 + c·Σ_i w_i·(g_i − g0):
        λ/n (absolute λ) or λ/Σ|w_i| (relative λ; 0 when every weight is 0)."""
        if self.lam_scale == "absolute":
            return self.lam / len(weights)
        total = sum(abs(w) for w in weights)
        return self.lam / total if total > 0 else 0.0

    @functools.cached_property
    def coefficients(self) -> Coefficients | None:
        """The combine's coefficients as floats when every weight is a known constant (SAM,
        Trace-SAM, ...; the g0 coefficient 0 for SAM, so g0 needs no copy), else None. Computed
        once per spec; ψ's weights once per (φ, ψ, n)."""
        if self.is_plain or not self.constant_weights:
            return None
        key = json.dumps([self.phi.to_obj(), self.psi.to_obj(), self.n])
        if key not in _CONSTANT_WEIGHTS:
            surrogate = self.surrogate(torch.zeros(self.n, dtype=torch.float64))
            _CONSTANT_WEIGHTS[key] = (surrogate.weights.tolist(),
                                      surrogate.psi_grad.reshape(-1).tolist())
        weights, psi_grad = _CONSTANT_WEIGHTS[key]
        scale = self.weight_scale(weights)
        return Coefficients([scale * w for w in weights], 1.0 - scale * sum(weights),
                            [scale * g for g in psi_grad])

    def clip(self, d: Tensor) -> Tensor:
        """D clipped to [−d_clip, d_clip] (unchanged without the guard)."""
        return d if self.d_clip is None else d.clamp(-self.d_clip, self.d_clip)

    def surrogate(self, d: Tensor) -> Surrogate:
        """ψ(A) with A = (1/n)Σφ(D_i), ∇ψ(A), and the weights w_i = Σ_j ∂_jψ(A)·φ_j'(D_i).

        ``d`` holds the n loss differences D_i (float64 where available). The optimizer's
        gradient is g0 + (λ/n)·Σ_i w_i·(g_i − g0).
        """
        d = self.clip(d)
        n = d.shape[-1]
        a = self.phi(d).mean(dim=-2)
        psi_grad = self.psi.grad(a, n)
        weights = (self.phi.derivative(d) @ psi_grad.unsqueeze(-1)).squeeze(-1)
        return Surrogate(self.psi(a, n), weights, psi_grad)

    # --- over training ------------------------------------------------------------------------

    def at(self, progress: float) -> SharpnessSpec:
        """The member in effect at ``progress`` (a fraction of training in [0, 1]): ``vary``'s
        values substituted, without ``vary``; where ρ or λ is 0, the plain member (λ = 0).
        Without ``vary``, the spec itself.

        Example::

            >>> from metasam import presets
            >>> spec = presets.sam(vary={"rho": {"ramp": [0.0, 0.2]}})
            >>> spec.at(0.5).rho, spec.at(0.0).is_plain
            (0.1, True)
        """
        if self.vary is None:
            return self
        values = self.vary.values_at(progress)
        if values.get("rho", self.rho) == 0.0 or values.get("lam", self.lam) == 0.0:
            values.pop("rho", None)
            values["lam"] = 0.0
        return replace(self, vary=None, **values)

    def over_training(self) -> list[tuple[float, float, SharpnessSpec]]:
        """``(from, to, member)`` for each stretch of training between ``vary``'s breakpoints,
        the member as at its start (a ramp moves on within the stretch); ``[(0, 1, self)]``
        without ``vary``."""
        if self.vary is None:
            return [(0.0, 1.0, self)]
        points = self.vary.breakpoints() + [1.0]
        return [(a, b, self.at(a)) for a, b in zip(points[:-1], points[1:], strict=True)]

    # --- what the bias measures ----------------------------------------------------------------

    def implied_measure(self, hessian: Tensor | Any, *, weights: Tensor | Any | None = None,
                        mask: Tensor | Any | None = None, samples: int = 200_000,
                        seed: int = 0) -> MeasureValue:
        """S(H) = ψ(E_{v~μ} φ(½vᵀHv)): what ψ((1/n)Σφ(D_i)) converges to at a critical point
        (D_i → ½v_iᵀHv_i as ρ → 0) when n → ∞, for a symmetric d×d matrix H.

        Closed forms where known (Gaussian or sphere μ with polynomial φ, Gaussian μ with
        exponential φ, and the ascent measures), Monte Carlo with ``samples`` draws otherwise;
        the result carries its standard error. ``weights`` (the d parameters) are needed by
        adaptive measures, ``mask`` (d booleans) by ``sparse_ascent``.

        Example::

            >>> import torch
            >>> H = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
            >>> float(SharpnessSpec(measure={"kind": "gaussian", "scale": "coordinate"})
            ...       .implied_measure(H))                     # ½ tr H
            3.0
        """
        return implied_measure(self, hessian, weights=weights, mask=mask, samples=samples,
                               seed=seed)

    # --- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back to an equal spec."""
        out: dict[str, Any] = {"format": FORMAT}
        if self.name is not None:
            out["name"] = self.name
        out.update(phi=self.phi.to_obj(), psi=self.psi.to_obj(), measure=self.measure.to_obj(),
                   n=self.n, rho=self.rho, lam=self.lam, d_clip=self.d_clip)
        if self.lam_scale != "absolute":
            out["lam_scale"] = self.lam_scale
        if self.guard is not None:
            out["guard"] = self.guard
        if self.schedule is not None:
            out["schedule"] = self.schedule.to_obj()
        if self.vary is not None:
            out["vary"] = self.vary.to_obj()
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> SharpnessSpec:
        """Validate and build a spec from :meth:`to_dict`'s form; errors name ``source``.

        A dict whose ``name`` is a preset means that preset with the dict's other fields as
        overrides (``{"name": "ssam", "rho": 0.305}`` is SSAM-F at ρ = 0.305); overrides that
        would make it a different member (another μ kind, other φ functions or ψ, or SGD with a
        sharpness term) are refused, never built under the preset's name.
        """
        try:
            data = _checks.mapping("spec", data)
            _checks.known_keys("", data, _KEYS)
            fmt = data.get("format", FORMAT)
            if fmt != FORMAT:
                raise SpecError("format", f"unsupported format {fmt!r}", FORMAT)
            kwargs = {k: v for k, v in data.items() if k != "format"}
            name = kwargs.get("name")
            if name not in _PRESETS:
                return cls(**kwargs)
            overrides = {k: v for k, v in kwargs.items() if k != "name"}
            spec = _PRESETS[name](**overrides)
            default = _PRESETS[name]()
            if _structure(spec) != _structure(default):
                raise SpecError("name", f"{name!r} names a preset, but the other fields make "
                                "a different member (μ, φ or ψ changed)",
                                f"{name} with numeric overrides (rho, lam, n, measure "
                                "parameters), or another name")
            return spec
        except SpecError as err:
            raise err.with_source(source) if source else err from None

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int = 2) -> str:
        """The spec as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> SharpnessSpec:
        """From JSON text or a JSON file (errors name the file)."""
        source = None
        text = str(text_or_path)
        if isinstance(text_or_path, os.PathLike) or not text.lstrip().startswith("{"):
            source = text
            try:
                text = Path(text_or_path).read_text()
            except OSError as err:
                raise SpecError("file", f"cannot read ({err.strerror})", source=source) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError("json", f"invalid JSON at line {err.lineno} column {err.colno}: "
                            f"{err.msg}", source=source) from None
        return cls.from_dict(data, source=source)

    def replace(self, **changes: Any) -> SharpnessSpec:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def coerce(cls, spec: Any) -> SharpnessSpec:
        """A spec from a :class:`SharpnessSpec`, a preset name, a dict or a JSON file path."""
        if isinstance(spec, SharpnessSpec):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        if isinstance(spec, (str, os.PathLike)):
            if isinstance(spec, str) and spec in _PRESETS:
                return _PRESETS[spec]()
            if isinstance(spec, os.PathLike) or spec.endswith(".json") or spec.lstrip(
                    ).startswith("{"):
                return cls.from_json(spec)
            raise SpecError("spec", f"unknown preset {spec!r}", tuple(_PRESETS))
        raise SpecError("spec", f"expected a SharpnessSpec, preset name, dict or JSON file, got "
                        f"{type(spec).__name__}")

    def describe(self) -> str:
        """One line: the spec in the family's notation."""
        label = f"{self.name}: " if self.name else ""
        return (f"{label}φ={self.phi.to_obj()} ψ={self.psi.to_obj()} μ={self.measure.to_obj()} "
                f"n={self.n} ρ={self.rho:g} λ={self.lam:g}"
                + (" (relative)" if self.lam_scale == "relative" else "")
                + (f" guard={self.guard:g}" if self.guard is not None else "")
                + (f" vary={json.dumps(self.vary.to_obj())}" if self.vary is not None else ""))


def _functions(part: Phi | Psi) -> list[str]:
    """φ's or ψ's function names, without their parameters."""
    obj = part.to_obj()
    blocks = obj if isinstance(obj, list) else [obj]
    return [b["fn"] if isinstance(b, dict) else b for b in blocks]


def _float64_supported(device: torch.device) -> bool:
    return device.type != "mps"


def scalar_dtype(device: torch.device) -> torch.dtype:
    """The dtype for the surrogate's scalar arithmetic on ``device`` (float64 where it exists)."""
    return torch.float64 if _float64_supported(device) else torch.float32
