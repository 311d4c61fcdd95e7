"""A setting of the optimizer (or the trainer) assigned between steps takes effect from the next
step: the update after the assignment follows the new member's reference rule, the new seed's
draws, the new model's running statistics, the new non-finite policy — or the assignment is
refused in one line. Written against a step that caches what it reads (the assignment was
silently ignored)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_reference_rules import (
    HYPER,
    batches,
    frob_reference,
    make_model,
    recorded_step,
    reference_step,
    sam_reference,
    trace_reference,
)

from metasam import UniversalSAM, presets

# (the member built with, the member assigned after two steps, the reference of the second)
SWITCHES = {
    "sam-rho": (presets.sam(rho=0.05), presets.sam(rho=0.2), sam_reference),
    "trace-lam": (presets.trace_sam(n=3, lam=0.1), presets.trace_sam(n=3, lam=0.7),
                  trace_reference),
    "frob-lam-rho": (presets.frob_sam(n=4, lam=0.01), presets.frob_sam(n=4, lam=0.05, rho=0.1),
                     frob_reference),
}


@pytest.mark.parametrize("case", sorted(SWITCHES))
def test_an_assigned_spec_makes_the_next_update(case: str) -> None:
    before, after, reference = SWITCHES[case]
    ours = make_model()
    theirs = copy.deepcopy(ours)
    our_params = list(ours.parameters())
    opt = UniversalSAM(ours.parameters(), torch.optim.SGD, before, seed=4, **HYPER)
    base = torch.optim.SGD(theirs.parameters(), **HYPER)
    for step, (x, y) in enumerate(batches(5)):
        if step == 2:
            opt.spec = after
            assert opt.spec == after
        spec = before if step < 2 else after
        points = recorded_step(opt, ours, x, y)
        perturbations = [[a - b for a, b in zip(point, points[0])] for point in points[1:]]
        reference_step(reference, theirs, base, x, y, spec, perturbations, our_params)


def test_the_trials_spec_is_its_optimizers() -> None:
    from metasam.training.config import TrainConfig
    from metasam.training.trainer import Trial

    trial = Trial(TrainConfig.from_dict({"dataset": "digits", "model": "mlp", "epochs": 1,
                                         "spec": "sam", "device": "cpu"}))
    trial.spec = presets.sam(rho=0.2)
    assert trial.optimizer.spec.rho == 0.2
    assert trial.optimizer._active.rho == 0.2


def test_a_spec_of_another_structure_is_refused_naming_set_spec() -> None:
    opt = UniversalSAM(make_model().parameters(), torch.optim.SGD, presets.sam(), **HYPER)
    with pytest.raises(ValueError, match="set_spec"):
        opt.spec = presets.frob_sam()
    assert opt.spec == presets.sam()


def _draws(opt: UniversalSAM, model: torch.nn.Module, steps: int) -> list[list[torch.Tensor]]:
    """The perturbation of each step (Trace-SAM with n = 1: one random direction each)."""
    out = []
    for x, y in batches(steps):
        points = recorded_step(opt, model, x, y)
        out.append([a - b for a, b in zip(points[1], points[0])])
    return out


def test_an_assigned_seed_restarts_the_draws() -> None:
    spec = presets.trace_sam(n=1, lam=0.5)   # g0 kept: the unperturbed pass runs first
    model = make_model()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, seed=4, **HYPER)
    _draws(opt, model, 2)
    opt.seed = 7
    assert opt.seed == 7
    assigned = _draws(opt, model, 1)[0]
    fresh_model = make_model()
    fresh = UniversalSAM(fresh_model.parameters(), torch.optim.SGD, spec, seed=7, **HYPER)
    first = _draws(fresh, fresh_model, 1)[0]
    for a, b in zip(assigned, first):
        # the global radius normalizes one draw by its norm: same direction, same length
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    kept_model = make_model()     # without the assignment, the third draw is another one
    kept = UniversalSAM(kept_model.parameters(), torch.optim.SGD, spec, seed=4, **HYPER)
    assert not all(torch.equal(a, b) for a, b in zip(assigned, _draws(kept, kept_model, 3)[2]))


def test_an_assigned_model_has_its_running_statistics_kept() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 3))
    decoy = copy.deepcopy(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.sam(), model=decoy, lr=0.1)
    opt.model = model
    assert opt.model is model
    once = copy.deepcopy(model)
    once(x)                                # the unperturbed pass alone updates the statistics

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(model[1].running_mean, once[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(model[1].running_var, once[1].running_var, rtol=0, atol=0)


def _poisoned(opt: UniversalSAM, model: torch.nn.Module, x, y, poison: bool):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if poison:
            loss = loss * float("nan")
        return opt.backward(loss)
    return closure


@pytest.mark.parametrize("how", ["on_nonfinite", "scaler"])
def test_an_assigned_policy_skips_the_next_non_finite_step(how: str) -> None:
    model = make_model()
    x, y = next(iter(batches(1)))
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.sam(), seed=0,
                       on_nonfinite="raise", **HYPER)
    opt.step(_poisoned(opt, model, x, y, False))
    if how == "on_nonfinite":
        opt.on_nonfinite = "skip"
    else:
        opt.scaler = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(_poisoned(opt, model, x, y, True))
    assert opt.skipped_steps == 1          # raises NonFiniteStepError if the policy was cached
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="on_nonfinite.*allowed"):
        opt.on_nonfinite = "ignore"
