"""How members are named for people: a preset region's member as its preset with the tuned
fields (``sam ρ=0.071``), a universal member in the family's short notation. Display only: no
caller takes a name apart again (the structured :class:`~metasam.tuning.trials.Label` and the
spec carry the facts)."""

from __future__ import annotations

from typing import Any

from metasam.family import presets
from metasam.family.spec import SharpnessSpec


def describe_spec(spec: dict[str, Any]) -> str:
    """A compact one-line summary of a spec dict for tables (a preset region's member reads
    as the preset with its tuned fields)."""
    s = SharpnessSpec.from_dict(spec)
    if s.name in presets.NAMES:
        return tuned_preset_name(s) + schedule_text(s)
    phi = "+".join(_short_phi(b) for b in s.phi.to_obj())
    psi = s.psi.to_obj()["fn"]
    kind = s.measure.kind + ("*T" if s.measure.uses_weights and s.measure.is_random else "")
    rel = " rel" if s.lam_scale == "relative" else ""
    return (f"μ={kind} φ={phi} ψ={psi} n={s.n} ρ={s.rho:.3g} λ={s.lam:.3g}{rel}"
            + schedule_text(s))


def schedule_text(spec: SharpnessSpec) -> str:
    """`` [from 31%, every 4, reuse]`` for a scheduled member, `` (ρ 0→0.2)`` for one whose
    parameters vary over training, ``""`` otherwise."""
    vary = f" ({spec.vary.label()})" if spec.vary is not None else ""
    schedule = spec.schedule
    if schedule is None:
        return vary
    parts = []
    if schedule.start > 0:
        parts.append(f"from {schedule.start:.0%}")
    if schedule.every > 1:
        parts.append(f"every {schedule.every}" + (" reuse" if schedule.reuse else ""))
    if schedule.trigger is not None:
        parts.append(f"trigger {schedule.trigger:g}")
    return f" [{', '.join(parts)}]" + vary


def tuned_preset_name(spec: SharpnessSpec) -> str:
    """``sam`` for a preset at its defaults, ``sam ρ=0.071`` for a member of its region."""
    assert spec.name is not None
    default = presets.get(spec.name)
    changes = []
    if spec.rho != default.rho:
        changes.append(f"ρ={spec.rho:.3g}")
    if spec.lam != default.lam:
        changes.append(f"λ={spec.lam:.3g}")
    if spec.phi != default.phi and spec.name == "tilted_sam":
        changes.append(f"τ={spec.phi.to_obj()[0]['scale']:.3g}")
    return " ".join([spec.name, *changes])


def _short_phi(block: dict[str, Any]) -> str:
    if block["fn"] == "polynomial":
        terms = [f"{c:+.2g}t^{k}" for k, c in enumerate(block["coefficients"]) if c]
        return "(" + "".join(terms) + ")" if terms else "0"
    if block["fn"] == "mlp":
        return f"mlp{len(block['biases'][0])}"
    return block["fn"]
