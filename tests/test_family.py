"""φ, ψ and μ on their own: exact derivatives, closed forms and sampling laws."""

from __future__ import annotations

import math

import pytest
import torch
from _util import assert_within_stderr, mean_and_stderr, random_spd

from metasam import Measure, SharpnessSpec
from metasam.family import MLPPhi, Phi, Psi
from metasam.family.implied import gaussian_moments
from metasam.family.phi import NAMED_PHI
from metasam.family.psi import NAMED_PSI

T = torch.linspace(-2.5, 3.0, 23, dtype=torch.float64)

PHI_BLOCKS = [{"fn": name} for name in NAMED_PHI] + [
    {"fn": "power", "p": 5}, {"fn": "abs_power", "p": 2.5}, {"fn": "exp", "scale": 0.3},
    {"fn": "tanh", "scale": 0.5}, {"fn": "softplus", "scale": 4.0},
    {"fn": "polynomial", "coefficients": [0.5, -1.0, 0.25, 0.1]},
    MLPPhi.random([5, 4, 2], torch.Generator().manual_seed(0), activation="tanh").to_obj(),
    MLPPhi.random([3, 3], torch.Generator().manual_seed(1), activation="softplus",
                  input_scale=0.3).to_obj(),
    MLPPhi.random([6, 1], torch.Generator().manual_seed(2), activation="sigmoid").to_obj(),
]


@pytest.mark.parametrize("block", PHI_BLOCKS, ids=lambda b: b["fn"])
def test_phi_derivative_matches_autograd(block) -> None:
    phi = Phi.from_obj([block, "identity"])
    t = T.clone().requires_grad_(True)
    values = phi(t)
    assert values.shape == (T.numel(), phi.dim)
    for j in range(phi.dim):
        (grad,) = torch.autograd.grad(values[:, j].sum(), t, retain_graph=True)
        torch.testing.assert_close(phi.derivative(T)[:, j], grad, rtol=1e-12, atol=1e-12)


def test_named_phi_values() -> None:
    t = torch.tensor([-1.5, 0.5, 2.0], dtype=torch.float64)
    expect = {
        "identity": t, "square": t ** 2, "exp": torch.exp(-t / 2),
        "tanh": torch.tanh(t), "softplus": torch.log1p(torch.exp(t)),
    }
    for name, want in expect.items():
        torch.testing.assert_close(Phi.from_obj(name)(t)[:, 0], want)
    torch.testing.assert_close(Phi.from_obj({"fn": "power", "p": 3})(t)[:, 0], t ** 3)
    torch.testing.assert_close(Phi.from_obj({"fn": "abs_power", "p": 1.5})(t)[:, 0],
                               t.abs() ** 1.5)


def test_mlp_phi_matches_torch_module() -> None:
    phi = MLPPhi.random([4, 3], torch.Generator().manual_seed(3), input_scale=0.7)
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for layer, w, b in zip([net[0], net[2]], phi.weights, phi.biases):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    t = T.float()
    torch.testing.assert_close(phi.value(t), net(0.7 * t[:, None]), rtol=1e-5, atol=1e-6)


PSI_CASES = [({"fn": n}, 1) for n in ("identity", "inverse_square", "log")] + [
    ({"fn": "sum"}, 3), ({"fn": "variance"}, 2), ({"fn": "variance", "unbiased": True}, 2),
    ({"fn": "power", "q": -1.5}, 1), ({"fn": "root", "p": 3.0}, 1),
    ({"fn": "polynomial", "terms": [[1.0, [1, 0, 2]], [-0.5, [0, 3, 1]], [2.0, [0, 0, 0]]]}, 3),
]


@pytest.mark.parametrize("obj,dim", PSI_CASES, ids=lambda c: str(c))
def test_psi_gradient_matches_autograd(obj, dim) -> None:
    psi = Psi.from_obj(obj)
    assert psi.dim in (None, dim)
    s = (torch.rand(7, dim, dtype=torch.float64) + 0.5).requires_grad_(True)
    (grad,) = torch.autograd.grad(psi(s, 5).sum(), s)
    torch.testing.assert_close(psi.grad(s.detach(), 5), grad, rtol=1e-12, atol=1e-12)


def test_variance_psi_is_half_the_variance_and_unbiased_rescales() -> None:
    d = torch.tensor([1.0, 4.0, -2.0, 0.5], dtype=torch.float64)
    a = torch.stack([d.mean(), (d ** 2).mean()])
    biased = Psi.from_obj("variance")(a, 4)
    unbiased = Psi.from_obj({"fn": "variance", "unbiased": True})(a, 4)
    assert float(biased) == pytest.approx(0.5 * float(d.var(unbiased=False)))
    assert float(unbiased) == pytest.approx(0.5 * float(d.var(unbiased=True)))
    assert float(Psi.from_obj({"fn": "variance", "unbiased": True})(a, None)) == float(biased)
    assert set(NAMED_PSI) >= {"identity", "variance", "inverse_square", "root", "log", "sum"}


# --- μ: sampling laws -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gaussian", "sphere", "box"])
@pytest.mark.parametrize("scale", ["global", "coordinate"])
def test_random_measure_second_moments(kind: str, scale: str) -> None:
    d, draws = 40, 20000
    measure = Measure(kind, scale=scale, half_width=0.3)
    v = measure.sample(draws, d, generator=torch.Generator().manual_seed(0))
    sq = (v ** 2).sum(1)
    if scale == "global":
        expected_sq = 1.0
    else:
        expected_sq = {"gaussian": d, "sphere": d, "box": d * 0.3**2 / 3}[kind]
    mean, se = mean_and_stderr(sq)
    if kind == "sphere":
        torch.testing.assert_close(sq, torch.full_like(sq, expected_sq))
    else:
        assert_within_stderr(mean, se, expected_sq, max_relative_stderr=0.01)
    # isotropic: the second-moment matrix is (E‖v‖²/d)·I
    second = v.T @ v / draws
    torch.testing.assert_close(second, torch.eye(d, dtype=v.dtype) * expected_sq / d,
                               atol=6 * expected_sq / d / math.sqrt(draws) * 2, rtol=0)
    if kind == "box":
        bound = 0.3 if scale == "coordinate" else math.sqrt(3 / d)
        assert float(v.abs().max()) <= bound
        assert float(v.abs().max()) > 0.99 * bound


def test_measure_sampling_is_seeded() -> None:
    m = Measure("gaussian")
    a = m.sample(3, 5, torch.Generator().manual_seed(1))
    b = m.sample(3, 5, torch.Generator().manual_seed(1))
    c = m.sample(3, 5, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- implied measures: closed forms against independent Monte Carlo ---------------------------

def test_gaussian_quadratic_form_moments_match_monte_carlo() -> None:
    k = random_spd(4, 0.2, 1.0, seed=4)
    moments = gaussian_moments(torch.linalg.eigvalsh(k), 4)
    assert moments[1] == pytest.approx(float(torch.trace(k)))
    assert moments[2] == pytest.approx(2 * float((k ** 2).sum()) + float(torch.trace(k)) ** 2)
    z = torch.randn(400_000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    q = ((z @ k) * z).sum(1)
    for order in (3, 4):
        mean, se = mean_and_stderr(q ** order)
        assert_within_stderr(mean, se, moments[order], max_relative_stderr=0.02)


SPECS_FOR_IMPLIED = {
    "trace-gaussian": dict(measure={"kind": "gaussian", "scale": "coordinate"}),
    "frob-gaussian-global": dict(phi=["identity", "square"], psi="variance", n=2,
                                 measure="gaussian"),
    "cubic-sphere": dict(phi=["identity", {"fn": "power", "p": 3}],
                         psi={"fn": "polynomial", "terms": [[1.0, [1, 0]], [0.5, [0, 1]]]},
                         measure={"kind": "sphere", "scale": "coordinate"}),
    "exp-gaussian": dict(phi={"fn": "exp", "scale": -0.5}, psi="inverse_square",
                         measure={"kind": "gaussian", "scale": "coordinate"}),
    "poly-adaptive-gaussian": dict(phi={"fn": "polynomial", "coefficients": [0.0, 1.0, 0.3]},
                                   measure={"kind": "gaussian", "adaptive": True, "eta": 0.2}),
    "square-adaptive-sphere": dict(phi="square", measure={"kind": "sphere", "adaptive": True}),
}


@pytest.mark.parametrize("case", sorted(SPECS_FOR_IMPLIED))
def test_implied_closed_form_matches_independent_monte_carlo(case: str) -> None:
    spec = SharpnessSpec(**SPECS_FOR_IMPLIED[case])
    h = random_spd(4, 0.3, 1.5, seed=6)
    weights = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64)
    exact = spec.implied_measure(h, weights=weights)
    assert exact.method == "closed_form"
    # independent Monte Carlo: sample v from the measure's law directly
    gen = torch.Generator().manual_seed(11)
    d, draws = 4, 400_000
    m = spec.measure
    if m.kind == "gaussian":
        v = torch.randn(draws, d, generator=gen, dtype=torch.float64)
        v = v * (1.0 if m.scale == "coordinate" else d ** -0.5)
    else:
        v = torch.randn(draws, d, generator=gen, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True) * (d ** 0.5 if m.scale == "coordinate" else 1.0)
    if m.adaptive:
        v = v * (weights.abs() + m.eta)
    q = 0.5 * ((v @ h) * v).sum(1)
    f = spec.phi(q)
    mean = f.mean(0)
    cov = torch.cov(f.T).reshape(f.shape[1], f.shape[1])
    grad = spec.psi.grad(mean, None)
    se = math.sqrt(float(grad @ cov @ grad) / draws)
    assert_within_stderr(float(spec.psi(mean, None)), se, exact.value, max_relative_stderr=0.02)


def test_implied_measure_of_ascent_measures_is_half_lambda_max() -> None:
    h = random_spd(5, 0.5, 3.0, seed=8)
    lam_max = float(torch.linalg.eigvalsh(h)[-1])
    assert float(SharpnessSpec(measure="ascent").implied_measure(h)) == pytest.approx(
        lam_max / 2)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    t = w.abs() + 0.01
    asam = SharpnessSpec(measure={"kind": "adaptive_ascent", "eta": 0.01})
    assert float(asam.implied_measure(h, weights=w)) == pytest.approx(
        float(torch.linalg.eigvalsh(t[:, None] * h * t[None, :])[-1]) / 2)
    mask = torch.tensor([True, False, True, True, False])
    ssam = SharpnessSpec(measure="sparse_ascent")
    assert float(ssam.implied_measure(h, mask=mask)) == pytest.approx(
        float(torch.linalg.eigvalsh(h[mask][:, mask])[-1]) / 2)
    with pytest.raises(ValueError, match="weights"):
        asam.implied_measure(h)


def test_implied_monte_carlo_reports_a_standard_error_that_covers_the_truth() -> None:
    # box measure with φ = identity: E[½vᵀHv] = ½·(a²/3)·tr H exactly
    h = random_spd(3, 0.5, 2.0, seed=9)
    spec = SharpnessSpec(measure={"kind": "box", "scale": "coordinate", "half_width": 0.5})
    value = spec.implied_measure(h, samples=100_000, seed=1)
    assert value.method == "monte_carlo" and value.samples == 100_000
    assert_within_stderr(value.value, value.stderr, 0.5 * 0.25 / 3 * float(torch.trace(h)),
                         max_relative_stderr=0.01)


@pytest.mark.parametrize("case", ["exp-inverse-square", "poly", "exp-positive-adaptive"])
def test_box_closed_form_on_diagonal_hessians_matches_independent_monte_carlo(case) -> None:
    specs = {
        "exp-inverse-square": SharpnessSpec(phi={"fn": "exp", "scale": -0.5},
                                            psi="inverse_square", measure={
                                                "kind": "box", "scale": "coordinate",
                                                "half_width": 1.5}),
        "poly": SharpnessSpec(phi=["identity", {"fn": "power", "p": 3}],
                              psi={"fn": "polynomial", "terms": [[1.0, [1, 0]], [0.3, [0, 1]]]},
                              measure={"kind": "box", "scale": "coordinate", "half_width": 0.7}),
        "exp-positive-adaptive": SharpnessSpec(phi={"fn": "exp", "scale": 0.2}, psi="log",
                                               measure={"kind": "box", "adaptive": True}),
    }
    spec = specs[case]
    eig = torch.tensor([2.0, 3.0, 0.5, 5.0], dtype=torch.float64)
    weights = torch.tensor([1.0, -2.0, 0.5, 0.1], dtype=torch.float64)
    exact = spec.implied_measure(torch.diag(eig), weights=weights)
    assert exact.method == "closed_form"
    gen = torch.Generator().manual_seed(3)
    m = spec.measure
    a = m.coordinate_scale(4)
    v = (torch.rand(400_000, 4, generator=gen, dtype=torch.float64) * 2 - 1) * a
    if m.adaptive:
        v = v * (weights.abs() + m.eta)
    f = spec.phi(0.5 * (v * v * eig).sum(1))
    mean = f.mean(0)
    cov = torch.cov(f.T).reshape(f.shape[1], f.shape[1])
    grad = spec.psi.grad(mean, None)
    se = math.sqrt(float(grad @ cov @ grad) / v.shape[0])
    assert_within_stderr(float(spec.psi(mean, None)), se, exact.value, max_relative_stderr=0.02)
