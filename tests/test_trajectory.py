"""Parameters that vary over training (SharpnessSpec.vary): the values at each fraction of
training, the JSON round trip, and an optimizer step that is exactly the step of the member in
effect (a fresh optimizer of ``spec.at(k/T)`` loaded with the same state), float64."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_schedule import _closure, _flat, _problem

from metasam import SharpnessSpec, UniversalSAM, presets
from metasam.errors import SpecError
from metasam.family.monotone import check_over_training
from metasam.family.trajectory import Ramp, Trajectories


def test_ramp_values_against_their_closed_forms() -> None:
    linear = Ramp(0.0, 0.2)
    cosine = Ramp(0.2, 0.0, "cosine", begin=0.25, finish=0.75)
    for p in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        assert linear.at(p) == pytest.approx(0.2 * p, abs=1e-15)
        t = min(max((p - 0.25) / 0.5, 0.0), 1.0)
        assert cosine.at(p) == pytest.approx(0.2 - 0.2 * (1 - math.cos(math.pi * t)) / 2,
                                             abs=1e-15)


def test_phases_hold_from_their_start_to_the_next() -> None:
    v = Trajectories.from_obj({"lam": {"phases": [[0.0, 1.0], [0.3, 0.5], [0.8, 2.0]]}})
    assert [v.values_at(p)["lam"] for p in (0.0, 0.29, 0.3, 0.79, 0.8, 1.0)] == \
        [1.0, 1.0, 0.5, 0.5, 2.0, 2.0]
    assert v.breakpoints() == [0.0, 0.3, 0.8]


def test_a_varying_spec_round_trips_through_json_and_reads_as_its_end() -> None:
    spec = presets.frob_sam(vary={
        "rho": {"ramp": [0.001, 0.01], "shape": "cosine", "span": [0.1, 0.9]},
        "lam": {"phases": [[0.0, 0.0], [0.5, 0.01]]},
        "phi": {"phases": [[0.0, ["identity", "square"]], [0.5, ["identity", "square"]]]}})
    again = SharpnessSpec.from_json(spec.to_json())
    assert again == spec and again.name == "frob_sam"
    assert (spec.rho, spec.lam) == (0.01, 0.01)            # the values at the end
    assert spec.at(0.2).is_plain and spec.at(0.2).passes == 1   # λ = 0 in the first phase
    assert spec.at(0.6).lam == 0.01 and spec.at(0.6).vary is None
    assert [a for a, _, _ in spec.over_training()] == [0.0, 0.1, 0.5, 0.9]


@pytest.mark.parametrize("vary, field", [
    ({"n": {"ramp": [1, 2]}}, "vary.n"),
    ({"phi": {"ramp": [0, 1]}}, "vary.phi"),
    ({"rho": {"ramp": [0.1]}}, "vary.rho.ramp"),
    ({"rho": {"ramp": [-0.1, 0.1]}}, "vary.rho.ramp[0]"),
    ({"rho": {"ramp": [0.0, 0.1], "shape": "step"}}, "vary.rho.shape"),
    ({"rho": {"ramp": [0.0, 0.1], "span": [0.5, 0.5]}}, "vary.rho.span"),
    ({"lam": {"phases": [[0.1, 1.0]]}}, "vary.lam.phases[0][0]"),
    ({"lam": {"phases": [[0.0, 1.0], [0.5, 1.0], [0.4, 1.0]]}}, "vary.lam.phases[2][0]"),
    ({"phi": {"phases": [[0.0, "identity"], [0.5, "square"]]}}, "vary.phi"),
])
def test_bad_trajectories_name_their_field(vary, field) -> None:
    with pytest.raises(SpecError) as err:
        presets.sam(vary=vary)
    assert err.value.field.startswith(field), err.value.field


def test_an_optimizer_needs_the_length_of_training_to_vary() -> None:
    model, _ = _problem()
    with pytest.raises(ValueError, match="total_steps"):
        UniversalSAM(model.parameters(), torch.optim.SGD,
                     presets.sam(vary={"rho": {"ramp": [0.0, 0.1]}}), lr=0.1)


def _replay_against_members(spec: SharpnessSpec) -> UniversalSAM:
    """Each step of the varying optimizer equals, bit for bit, a step of a fresh optimizer of
    the member ``spec.at(k/T)`` loaded with the varying optimizer's state."""
    model, batches = _problem()
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    total = len(batches)
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, seed=3, total_steps=total,
                       **hyper)
    for k, batch in enumerate(batches):
        member = spec.at(k / total)
        twin_model = copy.deepcopy(model)
        twin = UniversalSAM(twin_model.parameters(), torch.optim.SGD, member, seed=3, **hyper)
        state = copy.deepcopy(opt.state_dict())
        if member.is_plain:
            twin.base_optimizer.load_state_dict(state["base"])
        else:
            twin.load_state_dict(state)
        twin.step(_closure(twin_model, twin, batch))
        opt.step(_closure(model, opt, batch))
        assert opt.last_step.passes == member.passes, k
        torch.testing.assert_close(_flat(model), _flat(twin_model), rtol=0, atol=0,
                                   msg=f"step {k}")
        if not member.is_plain:
            assert opt.last_step.regularizer == pytest.approx(
                member.lam * member.rho ** 2 * opt.last_step.sharpness, rel=1e-12)
    return opt


def test_sam_with_rho_rising_from_zero_steps_as_each_members_sam() -> None:
    opt = _replay_against_members(presets.sam(vary={"rho": {"ramp": [0.0, 0.2]}}))
    assert opt.grad_evals == 1 + 9 * 2     # step 0 has ρ = 0: plain


def test_phases_of_lambda_and_phi_step_as_each_phases_member() -> None:
    poly = [{"fn": "polynomial", "coefficients": c} for c in ([0.0, 1.0], [0.0, 1.0, 0.5],
                                                               [0.0, 0.5, 0.2])]
    spec = SharpnessSpec(phi=poly[0], psi="identity", measure={"kind": "gaussian",
                                                               "scale": "global"},
                         n=2, rho=0.05, lam=0.5, lam_scale="relative",
                         vary={"lam": {"phases": [[0.0, 0.5], [0.3, 0.0], [0.6, 1.0]]},
                               "phi": {"phases": [[0.0, poly[0]], [0.5, poly[1]],
                                                  [0.8, poly[2]]]},
                               "rho": {"ramp": [0.02, 0.08], "shape": "cosine"}})
    opt = _replay_against_members(spec)
    assert opt.grad_evals == 3 * 3 + 3 * 1 + 4 * 3     # λ = 0 on steps 3, 4, 5


def test_every_phase_of_an_exported_schedule_is_checked_as_a_penalty() -> None:
    good = [{"fn": "polynomial", "coefficients": [0.0, 1.0]}]
    bad = [{"fn": "polynomial", "coefficients": [0.0, -1.0]}]
    spec = SharpnessSpec(phi=good, n=2, vary={"phi": {"phases": [[0.0, good], [0.5, bad]]}})
    checks = check_over_training(spec)
    assert [(at, c.ok) for at, c in checks] == [(0.0, True), (0.5, False)]


def test_the_trainer_and_load_optimizer_replay_a_varying_spec(tmp_path) -> None:
    """`metasam train --spec` / ``train``: the trainer passes the run's length, so SAM whose ρ
    rises from 0 makes its first step plain; ``load_optimizer`` asks for ``total_steps``."""
    import json

    from metasam import load_optimizer
    from metasam.training import train

    spec = presets.sam(vary={"rho": {"ramp": [0.0, 0.2]}})
    result = train({"dataset": "digits", "epochs": 2, "batch_size": 256, "model": "mlp",
                    "spec": spec.to_dict(), "num_threads": 1})
    assert SharpnessSpec.from_dict(result["spec"]) == spec
    assert result["grad_evals"] == 2 * result["steps"] - 1
    export = {"format": "metasam.optimizer/1", "spec": spec.to_dict(),
              "base_optimizer": {"name": "sgd", "lr": 0.1}}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(export))
    model, _ = _problem()
    with pytest.raises(ValueError, match="total_steps"):
        load_optimizer(str(path), model.parameters())
    opt = load_optimizer(str(path), model.parameters(), total_steps=10)
    assert opt.spec == spec and opt.total_steps == 10
