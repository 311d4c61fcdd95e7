"""The sharpness term the optimizer computes converges to each preset's measure, with the constants
family.md implies (at a minimum D_i = ½ v_iᵀHv_i), on quadratics with known H and on a small
network with its exact Hessian; SharpnessSpec.implied_measure agrees.

Targets (v per coordinate): Trace-SAM → ½ tr H; Frob-SAM (unbiased) → ¼‖H‖_F²;
Det-SAM with a box of half-width h large enough → det(H)·(h²/π)^d; sphere with φ = t^p and
ψ = s^(1/p) → ½ λ_max as p → ∞.
"""

from __future__ import annotations

import math

import pytest
import torch
from _util import Quadratic, assert_within_stderr, mean_and_stderr, random_spd
from torch.func import functional_call

from metasam import SharpnessSpec, UniversalSAM, presets


def sharpness_draws(model: torch.nn.Module, spec: SharpnessSpec, steps: int,
                    loss_fn=None, seed: int = 0) -> list:
    """Run ``steps`` optimizer steps that do not move the weights; return their StepInfos."""
    loss_fn = loss_fn or model
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.0, seed=seed)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    infos = []
    for _ in range(steps):
        opt.step(closure)
        infos.append(opt.last_step)
    return infos


H5 = random_spd(5, 1.0, 3.0, seed=1)


def test_trace_sam_converges_to_half_trace_on_a_quadratic() -> None:
    spec = presets.trace_sam()
    infos = sharpness_draws(Quadratic(H5), spec, steps=3000)
    target = 0.5 * float(torch.trace(H5))
    mean, se = mean_and_stderr([i.sharpness for i in infos])
    assert_within_stderr(mean, se, target, max_relative_stderr=0.02)
    assert float(spec.implied_measure(H5)) == pytest.approx(target, rel=1e-12)
    # the regularizer added to the loss is λρ² times the measure
    assert infos[0].regularizer == pytest.approx(spec.lam * spec.rho**2 * infos[0].sharpness)


def test_frob_sam_converges_to_quarter_squared_frobenius_on_a_quadratic() -> None:
    spec = presets.frob_sam()
    infos = sharpness_draws(Quadratic(H5), spec, steps=4000)
    target = 0.25 * float((H5 ** 2).sum())
    mean, se = mean_and_stderr([i.sharpness for i in infos])
    assert_within_stderr(mean, se, target, max_relative_stderr=0.04)
    assert float(spec.implied_measure(H5)) == pytest.approx(target, rel=1e-12)


@pytest.mark.parametrize("d", [2, 3])
def test_det_sam_converges_to_the_determinant_with_a_large_box(d: int) -> None:
    # eigenvalues ≥ λ_min and a box of half-width ≥ 4.3 standard deviations √(2/λ_min) of
    # exp(−vᵀHv/4) along every axis: the truncated mass (< 2e-5) is far below the tolerance
    low, high, half_width = (2.0, 4.0, 4.5) if d == 2 else (3.0, 6.0, 3.5)
    h = random_spd(d, low, high, seed=d)
    spec = presets.det_sam(half_width=half_width, n=12000 if d == 2 else 40000)
    (info,) = sharpness_draws(Quadratic(h), spec, steps=1)
    phi = torch.exp(-0.5 * torch.tensor(info.d, dtype=torch.float64))
    a, se_a = mean_and_stderr(phi)
    assert info.sharpness == pytest.approx(a ** -2, rel=1e-9)
    se = 2 * a ** -3 * se_a  # delta method for s ↦ s⁻²
    target = float(torch.linalg.det(h)) * (half_width**2 / math.pi) ** d
    assert_within_stderr(info.sharpness, se, target, max_relative_stderr=0.06)
    implied = spec.implied_measure(h, samples=400_000, seed=d)
    assert implied.method == "monte_carlo"
    assert_within_stderr(implied.value, implied.stderr, target, max_relative_stderr=0.03)


def test_sphere_power_measure_approaches_half_lambda_max() -> None:
    h = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    target = 0.5 * 4.0
    gaps = []
    for p in (2, 8, 32, 64):
        spec = SharpnessSpec(phi={"fn": "power", "p": p}, psi={"fn": "root", "p": p},
                             measure="sphere", rho=0.01, lam=1.0, n=5000)
        implied = spec.implied_measure(h)
        assert implied.method == "closed_form"
        gaps.append(target - implied.value)
        if p == 64:
            continue
        (info,) = sharpness_draws(Quadratic(h), spec, steps=1)
        powers = torch.tensor(info.d, dtype=torch.float64) ** p
        a, se_a = mean_and_stderr(powers)
        se = a ** (1 / p - 1) * se_a / p
        assert_within_stderr(info.sharpness, se, implied.value, max_relative_stderr=0.03)
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > 0
    assert gaps[3] < 0.07 * target
    # p = 2 closed form: E(½uᵀHu)² on the unit sphere = (2‖H‖² + (tr H)²)/(4 d(d + 2))
    second = (2 * float((h ** 2).sum()) + float(torch.trace(h)) ** 2) / (4 * 3 * 5)
    assert target - gaps[0] == pytest.approx(second ** 0.5, rel=1e-12)


# --- a small network at a minimum, with its exact Hessian ---------------------------------------

def _network_at_minimum():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(64, 2, generator=gen, dtype=torch.float64)
    y = torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:]) + 0.1 * torch.randn(64, 1, generator=gen,
                                                                            dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 1)).double()

    def loss_fn():
        return ((model(x) - y) ** 2).mean()

    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, history_size=50,
                            tolerance_grad=1e-9, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def unflatten(flat):
        parts, start = [], 0
        for s in shapes:
            parts.append(flat[start:start + s.numel()].reshape(s))
            start += s.numel()
        return dict(zip(names, parts))

    def flat_loss(flat):
        return ((functional_call(model, unflatten(flat), (x,)) - y) ** 2).mean()

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    grad = torch.autograd.functional.jacobian(flat_loss, flat)
    assert float(grad.norm()) < 1e-2, "LBFGS did not get near a minimum"
    hessian = torch.autograd.functional.hessian(flat_loss, flat)
    return model, loss_fn, hessian, grad


@pytest.fixture(scope="module")
def network():
    return _network_at_minimum()


# Near a minimum D = ½vᵀHv + vᵀg/ρ + O(ρ): the linear term has mean zero (trace unaffected) and
# adds ½‖g‖²/ρ² to ½Var(D) (per-coordinate v); the cross terms of vᵀg/ρ with the O(ρ) cubic term
# are O(‖g‖·‖∇³L‖), below 1e-5 of the measure here.


def test_trace_sam_on_a_network_converges_to_half_trace_of_its_exact_hessian(network) -> None:
    model, loss_fn, hessian, _ = network
    spec = presets.trace_sam()
    infos = sharpness_draws(model, spec, steps=3000, loss_fn=loss_fn, seed=1)
    target = 0.5 * float(torch.trace(hessian))
    mean, se = mean_and_stderr([i.sharpness for i in infos])
    assert_within_stderr(mean, se, target, max_relative_stderr=0.03)
    assert float(spec.implied_measure(hessian)) == pytest.approx(target, rel=1e-10)


def test_frob_sam_on_a_network_converges_to_quarter_frobenius_of_its_exact_hessian(
        network) -> None:
    model, loss_fn, hessian, grad = network
    spec = presets.frob_sam()
    infos = sharpness_draws(model, spec, steps=4000, loss_fn=loss_fn, seed=2)
    measure = 0.25 * float((hessian ** 2).sum())
    target = measure + 0.5 * float(grad.norm()) ** 2 / spec.rho**2
    assert target - measure < 0.01 * measure
    mean, se = mean_and_stderr([i.sharpness for i in infos])
    assert_within_stderr(mean, se, target, max_relative_stderr=0.05)
    assert float(spec.implied_measure(hessian)) == pytest.approx(measure, rel=1e-10)
