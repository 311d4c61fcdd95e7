"""Hypergradients of a validation loss in the family's parameters, against ground truth:
autograd through one unrolled step of a small model (float64), finite differences of
L_val(w') in θ, and the optimizer's own dot products against ones computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metasam import SharpnessSpec, UniversalSAM, presets
from metasam.family.hypergradient import (
    beta,
    hypergradient,
    parameters,
    project,
    with_parameters,
)
from metasam.family.monotone import check_penalty

F64 = torch.float64


def _problem(seed: int = 0, n: int = 3):
    """Softmax regression: weights w (3×5), a training and a validation batch, n fixed
    perturbation directions; D_i and g_i, g0 at w."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 5, generator=g, dtype=F64) * 0.5
    x, y = torch.randn(16, 5, generator=g, dtype=F64), torch.randint(3, (16,), generator=g)
    xv, yv = torch.randn(32, 5, generator=g, dtype=F64), torch.randint(3, (32,), generator=g)
    rho = 0.1
    v = [torch.randn(3, 5, generator=g, dtype=F64) for _ in range(n)]
    v = [u / u.norm() for u in v]

    def loss(weights, xs=x, ys=y):
        return F.cross_entropy(xs @ weights.T, ys)

    def grad(weights):
        weights = weights.detach().requires_grad_(True)
        return torch.autograd.grad(loss(weights), weights)[0]

    l0 = loss(w)
    d = torch.stack([(loss(w + rho * u) - l0) / rho**2 for u in v])
    return w, d, grad(w), [grad(w + rho * u) for u in v], (xv, yv), loss


def _reference_beta(theta, d, lam_scale: str):
    """β_i written out for φ(t) = Σ c_k t^k, ψ(s) = t0·s + t1·s² (independently of metasam)."""
    c, t0, t1, lam = theta["c"], theta["t0"], theta["t1"], theta["lam"]
    phi = sum(c[k] * d**k for k in range(len(c)))
    dphi = sum(k * c[k] * d ** (k - 1) for k in range(1, len(c)))
    a = phi.mean()
    w = (t0 + 2 * t1 * a) * dphi
    scale = lam / len(d) if lam_scale == "absolute" else lam / w.abs().sum()
    return scale * w


@pytest.mark.parametrize("lam_scale", ["absolute", "relative"])
def test_the_hypergradient_is_autograd_through_the_unrolled_step(lam_scale: str) -> None:
    """L_val(w − η(g0 + Σβ_i(θ)(g_i − g0))) differentiated by autograd in λ, φ's coefficients
    and ψ's: the formula with ⟨∇L_val(w'), g_i − g0⟩ agrees to 1e-6 (relative)."""
    w, d, g0, gs, (xv, yv), loss = _problem()
    coefficients, terms, lam, eta = [0.0, 0.65, 0.84, 0.33], (1.0, 0.5), 0.4, 0.3
    spec = SharpnessSpec(phi={"fn": "polynomial", "coefficients": coefficients},
                         psi={"fn": "polynomial", "terms": [[terms[0], [1]], [terms[1], [2]]]},
                         n=3, rho=0.1, lam=lam, lam_scale=lam_scale)
    theta = {"c": torch.tensor(coefficients, dtype=F64, requires_grad=True),
             "t0": torch.tensor(terms[0], dtype=F64, requires_grad=True),
             "t1": torch.tensor(terms[1], dtype=F64, requires_grad=True),
             "lam": torch.tensor(lam, dtype=F64, requires_grad=True)}
    b = _reference_beta(theta, d, lam_scale)
    assert torch.allclose(b.detach(), beta(spec, d), rtol=1e-12, atol=0)
    step = g0 + sum(b[i] * (gs[i] - g0) for i in range(3))
    after = w - eta * step
    val = loss(after, xv, yv)
    truth = torch.autograd.grad(val, [theta["lam"], theta["c"], theta["t0"], theta["t1"]])
    at = after.detach().requires_grad_(True)
    v = torch.autograd.grad(loss(at, xv, yv), at)[0]
    names = ["lam", "phi[0].c1", "phi[0].c2", "phi[0].c3", "psi.t0", "psi.t1"]
    ours = hypergradient(spec, d, torch.stack([(v * gi).sum() for gi in gs]), (v * g0).sum(),
                         eta, names)
    expected = [truth[0], truth[1][1], truth[1][2], truth[1][3], truth[2], truth[3]]
    for name, e in zip(names, expected, strict=True):
        assert ours[name] == pytest.approx(float(e), rel=1e-6, abs=1e-12), name


def test_the_online_approximation_matches_finite_differences_to_first_order() -> None:
    """With ∇L_val at w (before the step, as the online learner takes it) the hypergradient is
    within O(η) of the finite difference of L_val(w') in λ: closer as η shrinks."""
    w, d, g0, gs, (xv, yv), loss = _problem(seed=1)
    spec = SharpnessSpec(phi="identity", psi="identity", measure="gaussian", n=3, rho=0.1,
                         lam=0.7)
    at = w.detach().requires_grad_(True)
    v = torch.autograd.grad(loss(at, xv, yv), at)[0]
    errors = []
    for eta in (0.2, 0.05):
        def val(lam: float, eta: float = eta) -> float:
            b = beta(spec.replace(lam=lam), d)
            return float(loss(w - eta * (g0 + sum(b[i] * (gs[i] - g0) for i in range(3))),
                              xv, yv))
        fd = (val(0.7 + 1e-6) - val(0.7 - 1e-6)) / 2e-6
        ours = hypergradient(spec, d, torch.stack([(v * gi).sum() for gi in gs]),
                             (v * g0).sum(), eta, ["lam"])["lam"]
        errors.append(abs(ours - fd) / abs(fd))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.05, errors


def test_the_optimizer_reports_the_dot_products_of_its_own_passes() -> None:
    """UniversalSAM with a probe direction v records ⟨v, g0⟩ and ⟨v, g_i⟩ of the gradients of
    its passes, the loss differences D_i, and the step's learning rate."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    x, y = torch.randn(16, 5, dtype=F64), torch.randint(3, (16,))
    spec = SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0.0, 1.0, 0.5]}, n=2,
                         rho=0.05, lam=0.3, measure="gaussian")
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, lr=0.1, seed=4)
    probe = [torch.randn_like(p) for p in model.parameters()]
    seen = []

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        seen.append(([p.grad.clone() for p in model.parameters()], loss.detach()))
        return loss

    opt.hyper_probe = probe
    opt.step(closure)
    record = opt.last_probe
    dots = [sum(float((v * g).sum()) for v, g in zip(probe, grads, strict=True))
            for grads, _ in seen]
    assert record.dot0 == pytest.approx(dots[0], rel=1e-10)
    assert record.dots.tolist() == pytest.approx(dots[1:], rel=1e-10)
    losses = [float(loss) for _, loss in seen]
    assert record.d.tolist() == pytest.approx(
        [(value - losses[0]) / 0.05**2 for value in losses[1:]], rel=1e-9)
    assert record.lr == 0.1


def test_projection_keeps_every_visited_member_a_penalty() -> None:
    """Random large moves of φ's and ψ's coefficients and λ: what the projection returns is
    always a penalty with λ ≥ 0, and it takes the whole move when that is one."""
    spec = SharpnessSpec(phi={"fn": "polynomial", "coefficients": [0.0, 1.0, 0.3]}, n=2,
                         lam=0.5, lam_scale="relative")
    g = torch.Generator().manual_seed(0)
    whole = 0
    for _ in range(40):
        start = parameters(spec)
        proposed = {k: v + float(torch.randn((), generator=g)) for k, v in start.items()
                    if k != "phi[0].c0"}
        member, fraction = project(spec, proposed)
        assert member.lam >= 0 and check_penalty(member).ok
        if fraction == 1.0:
            whole += 1
            assert parameters(member) == pytest.approx({**start, **proposed})
        spec = member
    assert 0 < whole < 40   # some moves left the penalty set and were shortened


def test_parameters_round_trip_through_the_spec() -> None:
    spec = presets.get("frob_sam")
    values = parameters(spec)
    assert set(values) >= {"lam"} and with_parameters(spec, values).to_dict()["lam"] == spec.lam
    assert math.isclose(parameters(with_parameters(spec, {"lam": 0.25}))["lam"], 0.25)


# --- the bias learned within one run ----------------------------------------------------------

def _config(**learn):
    from metasam.training import TrainConfig

    return TrainConfig.from_dict({
        "dataset": "digits", "model": "cnn", "epochs": 2, "lr": 0.05, "batch_size": 64,
        "val_fraction": 0.2, "seed": 0, "subset": 0.4,
        "spec": {"phi": {"fn": "polynomial", "coefficients": [0.0, 1.0, 0.3]}, "n": 2,
                 "measure": "gaussian", "rho": 0.05, "lam": 0.5, "lam_scale": "relative"},
        **({"learn": learn} if learn else {})})


def test_a_learner_at_a_vanishing_rate_trains_as_the_fixed_member() -> None:
    """Its validation passes touch no weight, buffer or random stream of the run: with a step
    size of 1e-12 the weights end where the fixed member's do (to rounding of the moved θ)."""
    from metasam.training import Trial

    fixed, learned = Trial(_config()), Trial(_config(lr=1e-12, every=1, val_batch=32))
    fixed.train_epoch()
    learned.train_epoch()
    assert learned.learner.hyper_steps == learned.optimizer.steps > 0
    for a, b in zip(fixed.model.state_dict().values(), learned.model.state_dict().values(),
                    strict=True):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_the_learner_moves_against_the_hypergradient_and_counts_its_passes() -> None:
    """One hypergradient step by hand: a positive ⟨∇L_val, g_i − g0⟩ makes λ's hypergradient
    negative (a larger λ lowers L_val), so λ grows by Adam's first step, e^lr; every visited
    member of a whole run is a penalty, and the validation passes are counted."""
    from metasam.optim.universal_sam import ProbeRecord
    from metasam.training import Trial

    trial = Trial(_config(params=["lam"], lr=0.1, every=2, val_batch=32))
    before = trial.optimizer.spec.lam
    trial.optimizer.last_probe = ProbeRecord(0.0, torch.tensor([1.0, 1.0], dtype=F64),
                                             torch.tensor([0.4, 0.6], dtype=F64), 0.05)
    trial.learner.after_step()
    assert trial.optimizer.spec.lam == pytest.approx(before * math.exp(0.1), rel=1e-6)
    metrics = trial.train_epoch()
    specs = [SharpnessSpec.from_json(metrics["learned_spec"])]
    assert all(s.lam > 0 and check_penalty(s).ok for s in specs)
    steps = trial.optimizer.steps
    assert trial.learner.val_passes == (steps + 1) // 2
    assert metrics["learn_grad_evals"] == trial.learner.val_passes * 32 / 64


def test_learning_needs_a_validation_split_and_sgd() -> None:
    from metasam.errors import ConfigError
    from metasam.training import TrainConfig, Trial

    with pytest.raises(ConfigError, match="validation split"):
        Trial(TrainConfig.from_dict({**_config(every=1).to_dict(), "val_fraction": 0.0}))
    with pytest.raises(ConfigError, match="sgd"):
        Trial(TrainConfig.from_dict({**_config(every=1).to_dict(), "optimizer": "adamw"}))
    with pytest.raises(ConfigError, match="learn.params"):
        _config(params=["rho"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_study_point_can_learn_its_bias_and_exports_the_member_it_ended_with(
        tmp_path, ray_cluster) -> None:
    """A space point `{preset: sam, learn: {...}}` runs as one trial that learns λ; the study's
    export is the member the run ended with (an ordinary spec, `learned.from` the start), and
    the study's cost counts the validation passes."""
    from _util import write_study

    from metasam.cli import main
    from metasam.decision.budget import study_cost
    from metasam.decision.export import best_optimizer
    from metasam.tuning import StudyConfig

    path = write_study(tmp_path, name="learns", trials=1, epochs=2, space={
        "points": [{"preset": "sam", "learn": {"params": ["lam"], "every": 2,
                                               "val_batch": 32}}]},
        scheduler={"type": "none"})
    data = __import__("yaml").safe_load(path.read_text())
    data["train"]["val_fraction"] = 0.2
    path.write_text(__import__("yaml").safe_dump(data))
    assert main(["tune", str(path), "--address", ray_cluster, "--quiet"]) == 0
    config = StudyConfig.from_yaml(path)
    exported = best_optimizer(config)
    assert exported["learned"]["from"]["name"] == "sam"
    assert exported["learned"]["settings"]["params"] == ["lam"]
    learned = SharpnessSpec.from_dict(exported["spec"])
    # the member the run ended with: the λ its learner reports at the last epoch when the same
    # run is trained here (the training is deterministic on a CPU)
    from metasam.training import TrainConfig, train
    from metasam.tuning.record import TrialRecord

    (trial,) = config.load_study().trials
    rec = TrialRecord.of(trial)
    history = train(TrainConfig.from_dict({**config.train.to_dict(), **rec.train,
                                           "spec": rec.spec}))["history"]
    assert learned.lam == pytest.approx(history[-1]["learned:lam"], rel=1e-6)
    assert history[0]["learned:lam"] != history[-1]["learned:lam"]   # it learned every epoch
    assert learned.rho == presets.get("sam").rho
    assert "(learned: lam)" in exported["label"]
    cost = study_cost(config)
    assert 1.0 < cost.tuning < 1.5     # one run plus its validation passes
