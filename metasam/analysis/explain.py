"""What a sharpness bias measures: its implied S(H) on families of synthetic spectra, compared
with tr H, ‖H‖_F², det H and λ_max.

The spectra are diagonal Hessians H = diag(λ) of dimension d. The Gaussian and sphere measures
are rotation invariant, so for them a diagonal H loses nothing; box and adaptive measures are not,
and are explained for axis-aligned spectra. Adaptive measures use unit weights (T = 1 + η) and
SSAM's mask keeps the coordinates of largest curvature (a stand-in for its Fisher mask).

Measures with a nonlinear φ depend on the overall scale of H relative to their perturbation
radius (Det-SAM's exp(−t/2) approaches det H only when the box holds the Gaussian
exp(−vᵀHv/4)); by default every spectrum is rescaled so that E_μ[½vᵀHv] is 20 per coordinate at
the family's typical spectrum — the measure's characteristic scale.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from metasam._plotting import pyplot, save_figure
from metasam.family.spec import SharpnessSpec

REFERENCES = ("trace", "frobenius²", "det", "λ_max")
REFERENCE_NAMES = {"trace": "tr H", "frobenius²": "‖H‖_F²", "det": "det H",
                   "λ_max": "λ_max(H)"}


def reference_measures(spectrum: np.ndarray) -> dict[str, float]:
    return {"trace": float(spectrum.sum()), "frobenius²": float((spectrum ** 2).sum()),
            "det": float(np.exp(np.log(spectrum).sum())), "λ_max": float(spectrum.max())}


def spectra_family(count: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random positive spectra of varied spread and level: log λ ~ N(m, σ²) with m ∈ [−1, 1]
    and σ ∈ [0.1, 1.5] drawn per spectrum, so that trace, Frobenius, determinant and λ_max
    disagree about the ordering."""
    rng = np.random.default_rng(seed)
    levels = rng.uniform(-1.0, 1.0, count)
    spreads = rng.uniform(0.1, 1.5, count)
    return np.exp(levels[:, None] + spreads[:, None] * rng.standard_normal((count, dim)))


def implied(spec: SharpnessSpec, spectrum: np.ndarray) -> float:
    h = torch.diag(torch.as_tensor(spectrum, dtype=torch.float64))
    d = len(spectrum)
    kwargs: dict[str, Any] = {"samples": 20_000}
    if spec.measure.uses_weights:
        kwargs["weights"] = torch.ones(d, dtype=torch.float64)
    if spec.measure.kind == "sparse_ascent":
        keep = max(1, int(d * (1 - spec.measure.sparsity)))
        mask = torch.zeros(d, dtype=torch.bool)
        mask[torch.as_tensor(np.argsort(-spectrum)[:keep])] = True
        kwargs["mask"] = mask
    return float(spec.implied_measure(h, **kwargs))


def characteristic_scale(spec: SharpnessSpec, spectrum: np.ndarray, per_coordinate: float = 20.0
                         ) -> float:
    """The factor c that makes E_μ[½vᵀ(cH)v] = per_coordinate·d for this spectrum."""
    measure = spec.measure
    d = len(spectrum)
    if not measure.is_random:
        return per_coordinate * 2 / float(spectrum.max())  # ½λ_max·c = per_coordinate
    a = measure.coordinate_scale(d)
    second = {"gaussian": a ** 2, "sphere": a ** 2 / d, "box": a ** 2 / 3}[measure.kind]
    if measure.adaptive:
        second *= (1 + measure.eta) ** 2
    mean_q = 0.5 * second * float(spectrum.sum())
    return per_coordinate * d / mean_q


@dataclass
class Explanation:
    spec: SharpnessSpec
    dim: int
    scale: float
    correlations: dict[str, float]
    scaling_exponent: float
    reshape_trend: float
    invariance_change: float
    curves: dict[str, Any] = field(default_factory=dict)

    penalty: Any = None  # metasam.family.monotone.PenaltyCheck

    @property
    def closest(self) -> str | None:
        """The reference that orders the spectra most like S, or ``None`` when none does
        (every rank correlation ≤ 0.3: S ignores them or orders against them)."""
        name = max(self.correlations, key=lambda k: _finite(self.correlations[k]))
        return name if _finite(self.correlations[name]) > 0.3 else None

    @property
    def scale_invariant(self) -> bool:
        return self.invariance_change < 0.05

    def sentences(self) -> list[str]:
        ranked = sorted(self.correlations.items(), key=lambda kv: -_finite(kv[1]))
        count = len(self.curves.get("family", []))
        listed = ", ".join(f"{REFERENCE_NAMES[k]} {v:.3f}" for k, v in ranked)
        out = []
        if self.penalty is not None and not self.penalty.ok:
            out.append(f"Not a penalty: raising one eigenvalue of a PSD Hessian can lower S (by "
                       f"up to {100 * self.penalty.worst_drop:.0f}%), so minimizing it can "
                       "reward sharpness.")
        if self.closest is not None:
            best, second = ranked[0], ranked[1]
            out.append(f"On {count} random spectra (d = {self.dim}) this bias orders Hessians "
                       f"most like {REFERENCE_NAMES[best[0]]} (Spearman {best[1]:.3f}), then "
                       f"{REFERENCE_NAMES[second[0]]} ({second[1]:.3f}); "
                       + ", ".join(f"{REFERENCE_NAMES[k]} {v:.3f}" for k, v in ranked[2:])
                       + ".")
        else:
            worst = min(self.correlations, key=lambda k: _finite(self.correlations[k], 1.0))
            opposed = (f"; it orders them most nearly opposite to {REFERENCE_NAMES[worst]}"
                       if _finite(self.correlations[worst], 1.0) < -0.3 else "")
            out.append(f"On {count} random spectra (d = {self.dim}) this bias orders Hessians "
                       f"like none of the references (Spearman {listed}){opposed}.")
        values = self.curves.get("scaled")
        if math.isfinite(self.scaling_exponent):
            k = self.scaling_exponent
            out.append(f"Scaling the Hessian by c multiplies it by about c^{k:.2f} "
                       "(trace and λ_max: c^1, ‖H‖_F²: c^2, det: c^d"
                       f" = c^{self.dim}).")
        elif values is not None and len(values):
            out.append("Scaling the Hessian by c (from e^−1 to e) takes it from "
                       f"{values[0]:.3g} to {values[-1]:.3g}: not a positive power of c "
                       f"({_sign_words(values)}).")
        out.append(self._reshape_sentence())
        if self.scale_invariant:
            out.append("It is invariant under layer-wise rescalings (diagonal T with det T = 1, "
                       f"H → THT): at most {100 * self.invariance_change:.1f}% change.")
        else:
            out.append("It is not invariant under layer-wise rescalings (diagonal T with "
                       f"det T = 1, H → THT): up to {100 * self.invariance_change:.0f}% change.")
        return out

    def _reshape_sentence(self) -> str:
        reshaped = self.curves.get("reshaped")
        head = "At a fixed trace, as the spectrum concentrates into fewer directions it"
        if reshaped is None or not len(reshaped) or not np.isfinite(reshaped).all():
            return f"{head} is not finite everywhere (overflow in φ or ψ)."
        first, last = float(reshaped[0]), float(reshaped[-1])
        if first > 0 and last > 0:
            trend = self.reshape_trend
            direction = ("grows" if trend > 0.05 else "shrinks" if trend < -0.05
                         else "barely moves")
            return (f"{head} {direction} (×{math.exp(trend):.3g} from flat to the most spiked "
                    "spectrum).")
        if math.isclose(first, last, rel_tol=1e-3, abs_tol=1e-12):
            return f"{head} stays at {first:.3g} ({_sign_words(reshaped)})."
        change = "rises" if last > first else "falls"
        return f"{head} {change} from {first:.3g} to {last:.3g} ({_sign_words(reshaped)})."


def _finite(value: float, default: float = -1.0) -> float:
    return value if math.isfinite(value) else default


def _sign_words(values: np.ndarray) -> str:
    if (values < 0).all():
        return "negative throughout"
    if (values > 0).all():
        return "positive throughout"
    return "it changes sign"


def explain(spec: SharpnessSpec, dim: int = 10, count: int = 200, seed: int = 0,
            scale: float | None = None) -> Explanation:
    family = spectra_family(count, dim, seed)
    typical = np.exp(np.log(family).mean(0))
    c = scale if scale is not None else characteristic_scale(spec, typical)
    family = family * c
    values = np.array([implied(spec, s) for s in family])
    refs = {name: np.array([reference_measures(s)[name] for s in family]) for name in REFERENCES}
    finite = np.isfinite(values)
    correlations = {name: float(stats.spearmanr(values[finite], ref[finite]).statistic)
                    for name, ref in refs.items()}

    base = typical * c
    factors = np.exp(np.linspace(-1.0, 1.0, 9))
    scaled = np.array([implied(spec, base * f) for f in factors])
    ok = np.isfinite(scaled) & (scaled > 0)
    exponent = float(np.polyfit(np.log(factors[ok]), np.log(scaled[ok]), 1)[0]) if ok.sum() > 2 \
        else math.nan

    alphas = np.linspace(0.0, 2.5, 11)
    shapes = [(np.arange(1, dim + 1, dtype=float) ** -a) for a in alphas]
    shapes = [s / s.sum() * base.sum() for s in shapes]
    reshaped = np.array([implied(spec, s) for s in shapes])
    trend = float(np.log(reshaped[-1] / reshaped[0])) if np.isfinite(reshaped).all() and \
        reshaped[0] > 0 and reshaped[-1] > 0 else math.nan

    rng = np.random.default_rng(seed + 1)
    changes = []
    reference = implied(spec, base)
    for _ in range(8):
        log_t = rng.normal(0.0, 0.4, dim)
        log_t -= log_t.mean()  # det T = 1
        moved = implied(spec, base * np.exp(2 * log_t))
        changes.append(abs(moved - reference) / max(abs(reference), 1e-300))
    curves = {"family": family, "values": values, "refs": refs, "factors": factors,
              "scaled": scaled, "alphas": alphas, "reshaped": reshaped,
              "shapes": shapes, "base": base}
    from metasam.family.monotone import check_penalty

    return Explanation(spec, dim, c, correlations, exponent, trend, float(max(changes)), curves,
                       penalty=check_penalty(spec))


def _plot_signed(ax: Any, xs: np.ndarray, values: np.ndarray, ref: int, label: str,
                 log_x: bool) -> None:
    """S relative to |S| at ``ref``, with its sign: a log axis when S stays positive, a
    symmetric-log axis (and a zero line) when it is negative or changes sign."""
    scale = abs(values[ref]) if np.isfinite(values[ref]) and values[ref] != 0 else 1.0
    ys = values / scale
    if log_x:
        ax.set_xscale("log")
    if np.all(ys > 0):
        ax.set_yscale("log")
        name = f"S ({label})"
    else:
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.axhline(0.0, color="grey", lw=0.8)
        name = f"S ({label}), signed: {_sign_words(values)}"
    ax.plot(xs, ys, "o-", lw=2.2, color="black", label=name)


def plot_explanation(result: Explanation, path: str | Path) -> Path:
    """:func:`explanation_figure`, saved as PNG."""
    return save_figure(explanation_figure(result), path)


def explanation_figure(result: Explanation) -> Any:
    """Two panels: S along scaled spectra (log-log, with the references), and S along reshaped
    spectra of fixed trace (each curve normalized to 1 at the flat spectrum)."""
    plt = pyplot()
    curves = result.curves
    label = result.spec.name or "spec"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    ax = axes[0]
    factors = curves["factors"]
    refs_scaled = {name: np.array([reference_measures(curves["base"] * f)[name]
                                   for f in factors]) for name in REFERENCES}
    _plot_signed(ax, factors, curves["scaled"], len(factors) // 2, label, log_x=True)
    for name, ys in refs_scaled.items():
        ax.plot(factors, ys / ys[len(factors) // 2], "--", lw=1.2,
                label=REFERENCE_NAMES[name])
    ax.set_xlabel("Hessian scale c (H → cH)")
    ax.set_ylabel("value relative to c = 1")
    ax.set_title("Scaled spectra")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    alphas = curves["alphas"]
    shapes = curves["shapes"]
    _plot_signed(ax, alphas, curves["reshaped"], 0, label, log_x=False)
    for name in REFERENCES:
        ys = np.array([reference_measures(s)[name] for s in shapes])
        ax.plot(alphas, ys / ys[0], "--", lw=1.2, label=REFERENCE_NAMES[name])
    ax.set_xlabel("spectrum decay α (λ_i ∝ i^−α, fixed trace)")
    ax.set_ylabel("value relative to the flat spectrum")
    ax.set_title("Reshaped spectra")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    title = f"What {label} measures (d = {result.dim})"
    if result.penalty is not None and not result.penalty.ok:
        title += " — not a penalty: S can fall as curvature rises"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def over_training(spec: SharpnessSpec) -> list[dict[str, Any]]:
    """A spec whose parameters vary, stretch by stretch: ``from``, ``to``, ρ and λ at the
    stretch's start and end (a ramp moves between them), whether the term is off there, and
    ``measures`` — the index of the stretch whose (φ, ψ) it measures with (a new one where φ's or
    ψ's phase changes; :func:`explain` each of those to see what it measures)."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for start, end, member in spec.over_training():
        finish = spec.at(max(start, end - 1e-12)) if spec.vary is not None else member
        key = json.dumps([member.phi.to_obj(), member.psi.to_obj()])
        entry: dict[str, Any] = {"from": start, "to": end, "off": member.is_plain}
        if not member.is_plain:
            entry.update(rho=[member.rho, finish.rho], lam=[member.lam, finish.lam],
                         measures=seen.setdefault(key, len(out)))
        out.append(entry)
    return out


def over_training_lines(spec: SharpnessSpec) -> list[str]:
    """:func:`over_training` as one line per stretch, for the command line."""
    lines = []
    for entry in over_training(spec):
        span = f"{100 * entry['from']:.0f}–{100 * entry['to']:.0f}% of training"
        if entry["off"]:
            lines.append(f"{span}: no sharpness term (plain steps)")
            continue
        values = []
        for key, symbol in (("rho", "ρ"), ("lam", "λ")):
            a, b = entry[key]
            values.append(f"{symbol} = {a:.4g}" if math.isclose(a, b, rel_tol=1e-9)
                          else f"{symbol} {a:.4g} → {b:.4g}")
        lines.append(f"{span}: {', '.join(values)}; measures as stretch "
                     f"{entry['measures'] + 1}")
    return lines
