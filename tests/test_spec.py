"""SharpnessSpec: validation with one-line errors, JSON round trips, presets."""

from __future__ import annotations

import json

import pytest

from metasam import SharpnessSpec, SpecError, presets
from metasam.family import MLPPhi

MLP = MLPPhi.random([3, 2]).to_obj()

ROUND_TRIP = [presets.get(name) for name in presets.NAMES] + [
    SharpnessSpec(phi=["identity", {"fn": "power", "p": 3}, MLP],
                  psi={"fn": "polynomial", "terms": [[1.0, [1, 0, 0, 0]], [0.5, [0, 1, 1, 2]]]},
                  measure={"kind": "box", "adaptive": True, "eta": 0.1}, n=3, rho=0.2,
                  lam=0.03, d_clip=25.0),
    SharpnessSpec(phi={"fn": "tanh", "scale": 2.0}, psi={"fn": "root", "p": 4.0},
                  measure={"kind": "sphere", "scale": "coordinate"}, n=4),
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=lambda s: s.name or s.phi.to_obj()[0]["fn"])
def test_json_round_trip(spec: SharpnessSpec, tmp_path) -> None:
    again = SharpnessSpec.from_json(spec.to_json())
    assert again == spec and again.name == spec.name
    path = tmp_path / "spec.json"
    spec.to_json(path)
    assert SharpnessSpec.from_json(path) == spec
    assert SharpnessSpec.coerce(str(path)) == spec
    assert json.loads(path.read_text())["format"] == "metasam.sharpness_spec/1"


def test_presets_have_the_official_defaults() -> None:
    assert (presets.sam().rho, presets.sam().measure.kind) == (0.05, "ascent")
    asam = presets.asam()
    assert (asam.rho, asam.measure.kind, asam.measure.eta) == (0.5, "adaptive_ascent", 0.01)
    ssam = presets.ssam()
    assert (ssam.rho, ssam.measure.sparsity, ssam.measure.fisher_samples) == (0.1, 0.5, 16)
    trace = presets.trace_sam()
    assert (trace.rho, trace.lam, trace.n, trace.measure.scale) == (0.01, 1.0, 1, "coordinate")
    frob = presets.frob_sam()
    assert (frob.rho, frob.lam, frob.n, frob.psi.to_obj()) == (
        0.005, 0.005, 2, {"fn": "variance", "unbiased": True})
    det = presets.det_sam()
    assert (det.rho, det.lam, det.n, det.measure.kind, det.measure.half_width) == (
        1.0, 1.0, 1, "box", 0.01)
    assert presets.sgd().is_plain and presets.sgd().passes == 1
    assert frob.passes == 3
    assert presets.frob_sam(scale="global").measure.scale == "global"


BAD = [
    (dict(measure="gausian"),
     "measure.kind: unknown value 'gausian'; allowed: gaussian, sphere, box, ascent, "
     "adaptive_ascent, sparse_ascent"),
    (dict(phi=["identity", "square"], psi="variance", n=1),
     "n: the variance form of ψ needs n ≥ 2 samples, got 1; allowed: integers ≥ 2"),
    (dict(rho=0.0), "rho: out of range: 0.0; allowed: (0, inf)"),
    (dict(rho=-0.1), "rho: out of range: -0.1; allowed: (0, inf)"),
    (dict(lam=float("nan")), "lam: must be finite, got nan; allowed: [0, inf)"),
    (dict(phi="identity", psi="variance", n=2),
     "psi: takes 2 input(s) but φ has 1 output(s); allowed: a ψ of input size 1"),
    (dict(phi={"fn": "polynomial", "coefficients": [1.0, float("nan")]}),
     "phi[0].coefficients[1]: must be finite, got nan; allowed: finite numbers"),
    (dict(phi={"fn": "power", "p": 2.5}),
     "phi[0].p: expected a whole number, got 2.5; allowed: [1, 64]"),
    (dict(phi=["identity", {"fn": "expo"}]),
     "phi[1].fn: unknown φ function 'expo'; allowed: abs_power, exp, identity, power, softplus, "
     "square, tanh, polynomial, mlp"),
    (dict(phi={"fn": "exp", "sacle": 1.0}), "phi[0].sacle: unknown key; allowed: scale"),
    (dict(psi={"fn": "root", "p": 0.5}), "psi.p: out of range: 0.5; allowed: [1, 64]"),
    (dict(measure={"kind": "gaussian", "half_width": 2.0}),
     "measure.half_width: unknown key; allowed: kind, scale, adaptive, eta"),
    (dict(measure={"kind": "box", "scale": "radius"}),
     "measure.scale: unknown value 'radius'; allowed: global, coordinate"),
    (dict(measure="ascent", n=2),
     "n: the ascent measure is deterministic, so n must be 1, got 2; allowed: 1"),
    (dict(measure={"kind": "sparse_ascent", "sparsity": 1.0}),
     "measure.sparsity: out of range: 1.0; allowed: [0, 1)"),
    (dict(phi={"fn": "mlp", "weights": [[[1.0], [2.0]]], "biases": [[0.0]]}),
     "phi[0].biases[0]: length 1 does not match the 2 rows of weights[0]; allowed: length 2"),
    (dict(n=0), "n: out of range: 0; allowed: [1, 1e+06]"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_specs_fail_with_one_line_naming_field_and_allowed_values(kwargs, message) -> None:
    with pytest.raises(SpecError) as info:
        SharpnessSpec(**kwargs)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_errors_from_a_file_name_the_file(tmp_path) -> None:
    path = tmp_path / "best.json"
    data = presets.frob_sam().to_dict()
    data["measure"]["kind"] = "gaussianx"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match=rf"^{path}: measure.kind: unknown value 'gaussianx'"):
        SharpnessSpec.from_json(path)
    path.write_text("{not json")
    with pytest.raises(SpecError, match=rf"^{path}: json: invalid JSON at line 1"):
        SharpnessSpec.from_json(path)
    with pytest.raises(SpecError, match="file: cannot read"):
        SharpnessSpec.from_json(tmp_path / "missing.json")
    data = presets.sam().to_dict()
    data["lr"] = 0.1
    with pytest.raises(SpecError, match="^lr: unknown key; allowed: format, name, phi"):
        SharpnessSpec.from_dict(data)


def test_preset_overrides_are_validated() -> None:
    assert presets.det_sam(half_width=0.05, n=3).n == 3
    with pytest.raises(SpecError, match="^rhoo: unknown override for preset 'sam'"):
        presets.sam(rhoo=0.1)
    with pytest.raises(SpecError, match="^preset: unknown preset 'fro'"):
        presets.get("fro")


def test_surrogate_guard_clips_d() -> None:
    import torch

    spec = presets.det_sam(d_clip=10.0)
    value, weights, _ = spec.surrogate(torch.tensor([500.0], dtype=torch.float64))
    assert float(weights[0]) == pytest.approx(torch.exp(torch.tensor(10.0)).item())
    value, weights, _ = presets.det_sam().surrogate(torch.tensor([800.0], dtype=torch.float64))
    assert not torch.isfinite(weights).all()  # without the guard an overflow is visible
