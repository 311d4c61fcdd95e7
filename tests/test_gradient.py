"""The optimizer's gradient is the autograd gradient of L + λ·ρ²·ψ(mean φ(D_i)) with the sampled
perturbations held fixed, for scalar and vector φ and every measure."""

from __future__ import annotations

import pytest
import torch
from _util import Recorder, tiny_mlp
from torch.func import functional_call

from metasam import SharpnessSpec, UniversalSAM

X = torch.randn(12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
Y = torch.sin(X.sum(1, keepdim=True))

MLP_PHI = {"fn": "mlp", "weights": [[[0.7], [-0.4], [1.1]], [[0.5, -0.3, 0.8], [0.2, 0.9, -0.6]]],
           "biases": [[0.1, -0.2, 0.05], [0.0, 0.3]], "activation": "tanh", "input_scale": 0.5}

CASES = {
    # scalar φ
    "trace-gaussian-global": dict(measure="gaussian", rho=0.05, lam=0.7),
    "trace-gaussian-coordinate-n5": dict(measure={"kind": "gaussian", "scale": "coordinate"},
                                         rho=0.01, lam=0.3, n=5),
    "exp-box": dict(phi={"fn": "exp", "scale": -0.5}, psi="inverse_square",
                    measure={"kind": "box", "scale": "coordinate", "half_width": 0.02},
                    rho=1.0, lam=0.5, n=3),
    "poly-sphere-log": dict(phi={"fn": "polynomial", "coefficients": [2.0, 0.5, 0.1]},
                            psi="log", measure="sphere", rho=0.05, lam=0.2, n=4),
    "tanh-adaptive-gaussian": dict(phi={"fn": "tanh", "scale": 3.0}, psi={"fn": "power", "q": 3},
                                   measure={"kind": "gaussian", "adaptive": True, "eta": 0.1},
                                   rho=0.1, lam=0.4, n=2),
    "abs-power-root-sphere-coordinate": dict(
        phi={"fn": "abs_power", "p": 3.0}, psi={"fn": "root", "p": 3.0},
        measure={"kind": "sphere", "scale": "coordinate"}, rho=0.01, lam=0.5, n=6),
    "ascent": dict(measure="ascent", rho=0.05, lam=1.0),
    "ascent-softplus": dict(phi={"fn": "softplus", "scale": 2.0}, measure="ascent", rho=0.05,
                            lam=0.6),
    "adaptive-ascent": dict(measure={"kind": "adaptive_ascent", "eta": 0.05}, rho=0.3, lam=0.8),
    # vector φ
    "frob-gaussian": dict(phi=["identity", "square"], psi={"fn": "variance", "unbiased": True},
                          measure={"kind": "gaussian", "scale": "coordinate"}, rho=0.01,
                          lam=0.05, n=2),
    "frob-biased-n6-accumulate": dict(phi=["identity", "square"], psi="variance",
                                      measure="gaussian", rho=0.05, lam=0.05, n=6),
    "poly-psi-box-global": dict(phi=["identity", {"fn": "power", "p": 3}],
                                psi={"fn": "polynomial", "terms": [[1.0, [1, 0]],
                                                                   [0.3, [2, 1]]]},
                                measure="box", rho=0.05, lam=0.2, n=3),
    "mlp-sum-sphere": dict(phi=MLP_PHI, psi="sum", measure="sphere", rho=0.05, lam=0.3, n=2),
    "mlp-sum-gaussian-n4": dict(phi=MLP_PHI, psi="sum", measure="gaussian", rho=0.05, lam=0.3,
                                n=4),
    "mixed-blocks-adaptive-box": dict(phi=["identity", {"fn": "exp", "scale": -0.1}, MLP_PHI],
                                      psi={"fn": "polynomial", "terms": [[1.0, [1, 0, 0, 0]],
                                                                         [0.5, [0, 1, 1, 0]],
                                                                         [-0.2, [0, 0, 0, 2]]]},
                                      measure={"kind": "box", "adaptive": True},
                                      rho=0.05, lam=0.3, n=2),
}


def reference_gradient(model: torch.nn.Module, spec: SharpnessSpec,
                       perturbations: list[list[torch.Tensor]],
                       loss_of=lambda out: ((out - Y) ** 2).mean()) -> list[torch.Tensor]:
    """∇ of L(x) + λρ²ψ(mean_i φ((L(x + e_i) − L(x))/ρ²)) by autograd, e_i fixed."""
    names = [name for name, _ in model.named_parameters()]
    x = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def loss(params: list[torch.Tensor]) -> torch.Tensor:
        return loss_of(functional_call(model, dict(zip(names, params)), (X,)))

    l0 = loss(x)
    d = torch.stack([(loss([xi + ei for xi, ei in zip(x, e)]) - l0) / spec.rho**2
                     for e in perturbations])
    objective = l0 + spec.lam * spec.rho**2 * spec.psi(spec.phi(d).mean(0), spec.n)
    return list(torch.autograd.grad(objective, x))


def run_step(spec: SharpnessSpec, model: torch.nn.Module, **kwargs) -> tuple[Recorder, list]:
    params = list(model.parameters())
    recorder = Recorder(params, lambda: ((model(X) - Y) ** 2).mean())
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.0, seed=3, **kwargs)
    opt.step(recorder)
    return recorder, [p.grad.clone() for p in params]


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_autograd(case: str) -> None:
    spec = SharpnessSpec(**CASES[case])
    model = tiny_mlp()
    recorder, grads = run_step(spec, model)
    perturbations = recorder.perturbations()
    assert len(perturbations) == spec.n
    assert all(any(float(e.abs().max()) > 0 for e in pert) for pert in perturbations)
    expected = reference_gradient(model, spec, perturbations)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # the sharpness term changes the gradient (so the comparison is not just g0 against g0)
    plain = reference_gradient(model, spec.replace(lam=0.0), perturbations)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, plain)) > 1e-6


def test_group_that_opts_out_is_not_perturbed_but_follows_the_formula() -> None:
    spec = SharpnessSpec(phi=["identity", "square"], psi="variance", measure="gaussian",
                         rho=0.05, lam=0.2, n=3)
    model = tiny_mlp()
    first, second = model[0], model[2]
    params = list(model.parameters())
    recorder = Recorder(params, lambda: ((model(X) - Y) ** 2).mean())
    opt = UniversalSAM([{"params": first.parameters()},
                        {"params": second.parameters(), "perturb": False, "lr": 0.0}],
                       torch.optim.SGD, spec, lr=0.0, seed=5)
    opt.step(recorder)
    perturbations = recorder.perturbations()
    for pert in perturbations:
        assert float(pert[0].abs().max()) > 0 and float(pert[1].abs().max()) > 0
        assert float(pert[2].abs().max()) == 0 and float(pert[3].abs().max()) == 0
    expected = reference_gradient(model, spec, perturbations)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)


def test_global_scale_has_unit_expected_norm_and_coordinate_scale_grows_with_d() -> None:
    model = tiny_mlp(width=32)
    d = sum(p.numel() for p in model.parameters())
    sq = {"global": [], "coordinate": []}
    for scale in sq:
        spec = SharpnessSpec(measure={"kind": "gaussian", "scale": scale}, rho=0.1, n=50)
        recorder, _ = run_step(spec, model)
        sq[scale] = [sum(float((e ** 2).sum()) for e in pert) / 0.1**2
                     for pert in recorder.perturbations()]
    mean_global = sum(sq["global"]) / 50
    mean_coordinate = sum(sq["coordinate"]) / 50
    # E‖v‖² = 1 (global) or d (coordinate); the χ²_d/d spread is √(2/d) per draw.
    assert abs(mean_global - 1.0) < 4 * (2 / d) ** 0.5 / 50**0.5
    assert abs(mean_coordinate / d - 1.0) < 4 * (2 / d) ** 0.5 / 50**0.5


def test_sparse_ascent_gradient_and_mask() -> None:
    spec = SharpnessSpec(phi=["identity", "square"], psi="sum", measure={
        "kind": "sparse_ascent", "sparsity": 0.6, "fisher_samples": 8}, rho=0.05, lam=0.5)
    model = tiny_mlp()
    params = list(model.parameters())
    recorder = Recorder(params, lambda: ((model(X) - Y) ** 2).mean())
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.0, seed=3)
    with pytest.raises(RuntimeError, match="update_fisher_mask"):
        opt.step(recorder)
    kept = opt.update_fisher_mask(model, lambda out, y: ((out - y) ** 2).mean(), X[:8], Y[:8])
    d = sum(p.numel() for p in params)
    assert kept == int(d * 0.4) / d
    recorder.points.clear()
    opt.step(recorder)
    (pert,) = recorder.perturbations()
    masks = [opt.state[p]["fisher_mask"] for p in params]
    assert all(bool((e[~m] == 0).all()) for e, m in zip(pert, masks))
    assert sum(int((e != 0).sum()) for e in pert) == int(d * 0.4)
    expected = reference_gradient(model, spec, [pert])
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)
