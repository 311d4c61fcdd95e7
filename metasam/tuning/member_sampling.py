"""Sampling a member of a search space, define-by-run on an Optuna trial: the preset regions
(within learned boxes on a share of the trials), the universal family (φ, ψ, μ, ρ, λ, n; every
member checked and repaired into a sharpness penalty), the schedule of the sharpness term and
ramps of ρ and λ over training.
:class:`~metasam.tuning.space.SearchSpace` reads and validates the space; this module draws
from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metasam.family.measures import Measure
from metasam.family.monotone import repair_penalty
from metasam.family.spec import SharpnessSpec
from metasam.tuning import record
from metasam.tuning.regions import sample_region


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class RegionBoxes:
    """Ranges learned from prior studies (:mod:`metasam.meta.transfer`): per preset region,
    field → (low, high); a share ``share`` of the region trials (fixed by trial number) samples
    within them, the rest over the whole region."""

    boxes: dict[str, dict[str, tuple[float, float]]]
    share: float


def _suggest(trial: Any, name: str, r: Range) -> float:
    return trial.suggest_float(name, r.low, r.high, log=r.log)


def sample_search(search: dict[str, Any], trial: Any, boxes: RegionBoxes | None = None
                  ) -> tuple[SharpnessSpec, dict[str, Any]]:
    """Sample one member of the family (and training overrides) from an Optuna trial.

    Conditional structure: first the member (the universal family or a preset region); for the
    family, n only for random measures (and n ≥ 2 with the variance form), the adaptive flag
    only for random measures, φ's blocks per output, ψ among those whose input size matches
    φ's output count (with the variance form, φ = (p, p²) for one sampled p, so that ψ is the
    variance of p(D)). A universal member that would reward sharpness is repaired
    (:func:`~metasam.family.monotone.repair_penalty`) and the trial's ``repaired`` attribute
    says how.
    """
    members = search["members"]
    member = members[0] if len(members) == 1 else trial.suggest_categorical("member", members)
    train = {key: _suggest(trial, key, search[key]) for key in ("lr", "weight_decay")
             if key in search}
    if member != "universal":
        box = None
        if boxes is not None and member in boxes.boxes and _box_draw(trial) < boxes.share:
            box = boxes.boxes[member]
        spec = sample_region(member, search["region"], search["guard"], trial, box)
    else:
        spec, note = repair_penalty(_sample_universal(search, trial))
        if note and hasattr(trial, "set_user_attr"):
            trial.set_user_attr(record.REPAIRED, note)
    if search.get("schedule") is not None and not spec.is_plain:
        spec = spec.replace(schedule=_sample_schedule(search["schedule"], trial))
    if search.get("ramp") is not None and not spec.is_plain:
        vary = _sample_ramp(search["ramp"], spec, trial)
        if vary:
            spec = spec.replace(vary=vary)
    return spec, train


def _sample_ramp(space: dict[str, Any], spec: SharpnessSpec, trial: Any) -> dict[str, Any]:
    """Ramps of ρ and λ that end at the member's sampled values: per ramped field, whether to
    ramp (when optional), the start as a fraction of the end, and the shape."""
    vary: dict[str, Any] = {}
    for key, dims in space.items():
        if dims["optional"] and not trial.suggest_categorical(f"ramp_{key}", [True, False]):
            continue
        end = getattr(spec, key)
        start = _suggest(trial, f"ramp_{key}_start", dims["start"])
        shapes = dims["shape"]
        shape = shapes[0] if len(shapes) == 1 else trial.suggest_categorical(
            f"ramp_{key}_shape", shapes)
        vary[key] = {"ramp": [start * end, end], "shape": shape}
    return vary


def _box_draw(trial: Any) -> float:
    """A uniform draw fixed by the trial number: whether a trial samples within the boxes
    learned from prior studies (:attr:`RegionBoxes.share`) or over the whole region."""
    import random

    return random.Random(1_000_003 * int(getattr(trial, "number", 0)) + 17).random()


def _sample_schedule(space: dict[str, Any], trial: Any) -> dict[str, Any]:
    """A schedule of the sharpness term: late-phase start and every-k (with LookSAM's reuse
    where k > 1), each dimension only when the space gives it a range."""
    out: dict[str, Any] = {}
    if "start" in space:
        out["start"] = _suggest(trial, "schedule_start", space["start"])
    if "every" in space:
        every = space["every"]
        out["every"] = trial.suggest_int("schedule_every", int(every.low), int(every.high))
        if out["every"] > 1 and len(space["reuse"]) > 1:
            out["reuse"] = trial.suggest_categorical("schedule_reuse", space["reuse"])
        elif out["every"] > 1:
            out["reuse"] = space["reuse"][0]
    return out


def _sample_universal(search: dict[str, Any], trial: Any) -> SharpnessSpec:
    kind = trial.suggest_categorical("measure", search["kinds"])
    random_kind = kind in ("gaussian", "sphere", "box")
    measure: dict[str, Any] = {"kind": kind}
    if random_kind:
        measure["scale"] = "global"
        if len(search["adaptive"]) > 1:
            measure["adaptive"] = trial.suggest_categorical("adaptive", search["adaptive"])
        elif search["adaptive"][0]:
            measure["adaptive"] = True
    phi_space = search["phi"]
    m = trial.suggest_categorical("phi_outputs", phi_space["outputs"])
    # ψ among those that take m inputs; the variance form needs n ≥ 2 samples, which the
    # deterministic ascent measures do not have, so they choose from the rest (or "sum").
    choices = [p for p in search["psi"] if p[2] in (None, m)
               and (random_kind or p[1]["fn"] != "variance")]
    if not choices:
        choices = [("sum", {"fn": "sum"}, None)]
    name = f"psi_m{m}" if random_kind else f"psi_m{m}_ascent"
    label = trial.suggest_categorical(name, [p[0] for p in choices])
    psi = next(p[1] for p in choices if p[0] == label)
    if psi["fn"] == "variance" and phi_space["kind"] == "polynomial" and m == 2:
        (p,) = _sample_phi(phi_space, 1, trial)
        phi = [p, {"fn": "polynomial", "coefficients": _square(p["coefficients"])}]
    else:
        phi = _sample_phi(phi_space, m, trial)
    n = 1
    if random_kind:
        low, high = int(search["n"].low), int(search["n"].high)
        if psi["fn"] == "variance":
            n = trial.suggest_int("n_variance", max(2, low), max(2, high))
        else:
            n = trial.suggest_int("n", low, high)
    spec = SharpnessSpec(phi=phi, psi=psi, measure=Measure.from_obj(measure), n=n,
                         rho=_suggest(trial, "rho", search["rho"]),
                         lam=_suggest(trial, "lam", search["lam"]), d_clip=search["d_clip"],
                         lam_scale=search["lam_scale"], guard=search["guard"], name="universal")
    return spec


def _square(coefficients: list[float]) -> list[float]:
    """The coefficients of p(t)² from those of p(t)."""
    out = [0.0] * (2 * len(coefficients) - 1)
    for i, a in enumerate(coefficients):
        for j, b in enumerate(coefficients):
            out[i + j] += a * b
    return out


def _sample_phi(space: dict[str, Any], m: int, trial: Any) -> list[dict[str, Any]]:
    if space["kind"] == "polynomial":
        blocks = []
        for j in range(m):
            degree = trial.suggest_int(f"phi{j}_degree", int(space["degree"].low),
                                       int(space["degree"].high))
            coefficients = [0.0] + [
                _suggest(trial, f"phi{j}_c{k}", space["coefficients"])
                for k in range(1, degree + 1)]
            blocks.append({"fn": "polynomial", "coefficients": coefficients})
        return blocks
    width = trial.suggest_int("mlp_width", int(space["width"].low), int(space["width"].high))
    activation = trial.suggest_categorical("mlp_activation", space["activation"])
    scale = _suggest(trial, "mlp_input_scale", space["input_scale"])
    w = space["weights"]
    first = [[_suggest(trial, f"mlp_w1_{i}", w)] for i in range(width)]
    first_bias = [_suggest(trial, f"mlp_b1_{i}", w) for i in range(width)]
    second = [[_suggest(trial, f"mlp_w2_{j}_{i}", w) for i in range(width)] for j in range(m)]
    second_bias = [0.0] * m
    return [{"fn": "mlp", "weights": [first, second], "biases": [first_bias, second_bias],
             "activation": activation, "input_scale": scale}]
