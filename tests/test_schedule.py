"""The schedule of the sharpness term: a step with the term off is exactly a base-optimizer
step on g0 (LookSAM's reuse added), a step with it on is exactly today's UniversalSAM step, and
the passes are counted as made."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_optimizer import make_closure

from metasam import SharpnessSpec, UniversalSAM, presets
from metasam.errors import SpecError


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 3)).double()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=gen, dtype=torch.float64),
                torch.randint(0, 3, (16,), generator=gen)) for _ in range(10)]
    return model, batches


def _closure(model, optimizer, batch):
    return make_closure(optimizer, model, *batch)


def _flat(model) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _run_checked(spec: SharpnessSpec, expected_on: list[bool]) -> UniversalSAM:
    """Step a scheduled optimizer and, before each step, two twins from the same state: one
    plain (SGD with the same momentum buffers), one unscheduled UniversalSAM (same generators).
    Each step must equal the twin its schedule says."""
    model, batches = _problem()
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, seed=7,
                       total_steps=len(batches), **hyper)
    unscheduled = spec.replace(schedule=None)
    for step, (batch, on) in enumerate(zip(batches, expected_on)):
        twins = {}
        for name, twin_spec in (("off", presets.sgd()), ("on", unscheduled)):
            twin_model = copy.deepcopy(model)
            twin = UniversalSAM(twin_model.parameters(), torch.optim.SGD, twin_spec, seed=7,
                                **hyper)
            state = copy.deepcopy(opt.state_dict())
            if name == "off":  # a plain optimizer: the base optimizer's state only
                twin.base_optimizer.load_state_dict(state["base"])
            else:
                twin.load_state_dict(state)
            twin.step(_closure(twin_model, twin, batch))
            twins[name] = _flat(twin_model)
        opt.step(_closure(model, opt, batch))
        assert opt.last_step.passes == (1 + spec.n if on else 1), step
        if not (spec.schedule.reuse and not on):
            torch.testing.assert_close(_flat(model), twins["on" if on else "off"], rtol=0,
                                       atol=1e-12, msg=f"step {step}")
    return opt


def test_late_phase_starts_the_term_after_its_fraction() -> None:
    spec = presets.frob_sam(schedule={"start": 0.6})
    opt = _run_checked(spec, [False] * 6 + [True] * 4)
    assert opt.grad_evals == 6 * 1 + 4 * 3


def test_every_k_applies_the_term_on_every_kth_step_from_the_start() -> None:
    spec = presets.sam(schedule={"start": 0.2, "every": 3})
    # steps 0, 1 before the start (ceil(0.2 · 10) = 2); then on at 2, 5, 8
    expected = [i >= 2 and (i - 2) % 3 == 0 for i in range(10)]
    opt = _run_checked(spec, expected)
    assert opt.grad_evals == sum(2 if on else 1 for on in expected)


def test_lookSAM_reuse_adds_the_orthogonal_sharpness_component() -> None:
    """Off-steps: g0 + ‖g0‖·v, v the last full step's (c − proj_g0 c)/‖g0‖, c its sharpness
    part; computed here independently with autograd gradients."""
    spec = presets.sam(schedule={"every": 2, "reuse": True})
    model, batches = _problem()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.1, seed=7,
                       total_steps=len(batches))

    def grad_at(weights, batch):
        probe = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(weights, probe.parameters())
        loss = F.cross_entropy(probe(batch[0]), batch[1])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss,
                                                                     probe.parameters())])

    v = None
    for step, batch in enumerate(batches[:6]):
        w = _flat(model)
        g0 = grad_at(w, batch)
        if step % 2 == 0:  # SAM: the gradient at w + ρ g0/‖g0‖
            g1 = grad_at(w + 0.05 * g0 / (g0.norm() + 1e-12), batch)
            c = g1 - g0
            c_perp = c - (c @ g0) / (g0 @ g0) * g0
            v = c_perp / g0.norm()
            expected = w - 0.1 * g1
        else:
            expected = w - 0.1 * (g0 + g0.norm() * v)
        opt.step(_closure(model, opt, batch))
        torch.testing.assert_close(_flat(model), expected, rtol=0, atol=1e-10,
                                   msg=f"step {step}")
    assert opt.grad_evals == 3 * 2 + 3 * 1


def test_adaptive_trigger_follows_the_gradient_norm_statistics() -> None:
    """AE-SAM: the term when ‖g0‖² ≥ μ + c·σ after updating the EMAs; recomputed here."""
    spec = presets.sam(schedule={"trigger": 0.0, "decay": 0.5})
    model, batches = _problem()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.5, seed=7,
                       total_steps=len(batches))
    mean = var = None
    decisions = []
    for batch in batches:
        probe = copy.deepcopy(model)
        loss = F.cross_entropy(probe(batch[0]), batch[1])
        x = float(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, probe.parameters())))
        if mean is None:
            mean, var, on = x, 0.0, True
        else:
            mean = 0.5 * mean + 0.5 * x
            var = 0.5 * var + 0.5 * (x - mean) ** 2
            on = x >= mean + 0.0 * math.sqrt(var)
        opt.step(_closure(model, opt, batch))
        decisions.append(on)
        assert opt.last_step.passes == (2 if on else 1)
    assert any(decisions) and not all(decisions)  # the trigger did decide both ways


def test_schedule_is_part_of_the_spec() -> None:
    spec = presets.frob_sam(schedule={"start": 0.5, "every": 2, "reuse": True})
    assert SharpnessSpec.from_json(spec.to_json()) == spec
    assert spec != presets.frob_sam()
    assert presets.sam(schedule={"start": 0.0, "every": 1}).schedule is None  # always on
    for bad, field in (({"start": 1.0}, "schedule.start"), ({"every": 0}, "schedule.every"),
                       ({"every": 1, "reuse": True}, "schedule.reuse"),
                       ({"every": 2, "trigger": 1.0}, "schedule.trigger"),
                       ({"later": 1}, "schedule.later")):
        with pytest.raises(SpecError, match=field):
            presets.sam(schedule=bad)
    model, _ = _problem()
    with pytest.raises(ValueError, match="total_steps"):
        UniversalSAM(model.parameters(), torch.optim.SGD, presets.sam(schedule={"start": 0.5}),
                     lr=0.1)


def test_scheduled_state_round_trips() -> None:
    spec = presets.sam(schedule={"every": 2, "reuse": True})
    model, batches = _problem()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.1, seed=3,
                       total_steps=10)
    for batch in batches[:3]:
        opt.step(_closure(model, opt, batch))
    twin_model = copy.deepcopy(model)
    twin = UniversalSAM(twin_model.parameters(), torch.optim.SGD, spec, lr=0.1, seed=3,
                        total_steps=10)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for batch in batches[3:6]:
        opt.step(_closure(model, opt, batch))
        twin.step(_closure(twin_model, twin, batch))
    assert torch.equal(_flat(model), _flat(twin_model))


def test_trainer_counts_the_passes_of_a_scheduled_run() -> None:
    from metasam.training import train

    result = train({"dataset": "digits", "model": "mlp", "epochs": 2,
                    "spec": presets.sam(schedule={"start": 0.5}).to_dict()})
    steps = result["steps"]
    assert result["status"] == "completed"
    assert result["grad_evals"] == steps + steps // 2  # the second epoch pays 2 passes a step


def test_load_optimizer_passes_total_steps_to_a_late_phase_spec(tmp_path) -> None:
    import json

    from metasam import load_optimizer

    export = {"format": "metasam.optimizer/1", "spec": presets.sam(schedule={"start": 0.5})
              .to_dict(), "base_optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0,
                                             "weight_decay": 0.0, "nesterov": False}}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(export))
    model, _ = _problem()
    optimizer = load_optimizer(path, model.parameters(), total_steps=10)
    assert optimizer.total_steps == 10 and optimizer.spec.schedule.start == 0.5


# --- the tuned recipe: the optimizer and its learning-rate schedule --------------------------

def _export(schedule: str, epochs: int = 8, milestones=(2, 4, 6), vary=None) -> dict:
    spec = presets.get("sam").to_dict()
    if vary is not None:
        spec["vary"] = vary
    return {"format": "metasam.optimizer/1", "spec": spec, "batch_size": 64, "epochs": epochs,
            "base_optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                               "weight_decay": 0.0, "nesterov": False},
            "schedule": {"name": schedule, "epochs": epochs, "milestones": list(milestones),
                         "gamma": 0.2}}


def _lrs(scheduler, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` steps (the schedule read, never an update)."""
    import warnings

    out = []
    with warnings.catch_warnings():   # stepped without optimizer steps on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for _ in range(steps):
            out.append(scheduler.optimizer.param_groups[0]["lr"])
            scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "multistep", "constant"])
def test_the_recipe_rebuilds_the_trainers_schedule(schedule: str) -> None:
    """Per epoch, the recipe's learning rates are the ones metasam's trainer used; per step
    (3 steps an epoch), they agree with them at every epoch boundary."""
    import warnings

    from metasam.optim.loading import load_recipe
    from metasam.training import TrainConfig
    from metasam.training.trainer import _scheduler

    p = torch.nn.Parameter(torch.zeros(2))
    config = TrainConfig(epochs=8, lr=0.1, schedule=schedule, milestones=[2, 4, 6], gamma=0.2)
    trainer_lrs = _lrs(_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))],
                                                  lr=0.1), config), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # nothing differs from the tuned run: no warning
        recipe = load_recipe(_export(schedule), [p])
    assert not recipe.per_step and recipe.epochs == 8 and recipe.notes == []
    assert _lrs(recipe.scheduler, 8) == pytest.approx(trainer_lrs, rel=1e-12)
    per_step = load_recipe(_export(schedule), [torch.nn.Parameter(torch.zeros(2))],
                           steps_per_epoch=3)
    assert per_step.per_step and per_step.optimizer.total_steps == 24
    assert _lrs(per_step.scheduler, 24)[::3] == pytest.approx(trainer_lrs, rel=1e-12)


def test_the_recipe_says_what_it_assumes_away_from_the_tuned_run() -> None:
    from metasam.optim.loading import RecipeWarning, load_recipe

    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.warns(RecipeWarning) as caught:
        recipe = load_recipe(_export("multistep"), [p], epochs=16, batch_size=128)
    assert len(caught) == 2 and len(recipe.notes) == 2
    assert "tuned for 8 epochs" in recipe.notes[0] and "16" in recipe.notes[0]
    assert "batch size 64" in recipe.notes[1] and "128" in recipe.notes[1]
    lrs = _lrs(recipe.scheduler, 16)       # milestones 2, 4, 6 of 8 → 4, 8, 12 of 16
    assert lrs[3] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.02)
    assert lrs[12] == pytest.approx(0.1 * 0.2 ** 3)
    # a schedule of ρ over training needs the run's length: given by steps_per_epoch
    ramp = _export("cosine", vary={"rho": {"ramp": [0.0, 0.05]}})
    varied = load_recipe(ramp, [torch.nn.Parameter(torch.zeros(2))], steps_per_epoch=5)
    assert varied.optimizer.total_steps == 40
