"""Hessian sharpness estimates against the exact Hessian of small networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _util import assert_within_stderr
from torch.func import functional_call

from metasam import SharpnessSpec, presets
from metasam.sharpness import HessianOperator, estimate

X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(1))
BATCHES = [(X[:13], Y[:13]), (X[13:20], Y[13:20]), (X[20:], Y[20:])]  # unequal sizes


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).double()


def exact_hessian(model: torch.nn.Module) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat):
        parts, start = [], 0
        for s in shapes:
            parts.append(flat[start:start + s.numel()].reshape(s))
            start += s.numel()
        return F.cross_entropy(functional_call(model, dict(zip(names, parts)), (X,)), Y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return torch.autograd.functional.hessian(loss, flat)


@pytest.fixture(scope="module")
def model_and_hessian():
    model = network()
    return model, exact_hessian(model)


def test_hvp_over_unequal_batches_is_the_hessian_of_the_mean_loss(model_and_hessian) -> None:
    model, h = model_and_hessian
    op = HessianOperator(model, F.cross_entropy, BATCHES, chunk=7)
    torch.testing.assert_close(op.dense(), h, rtol=1e-10, atol=1e-12)
    assert op.products == op.dim
    op.chunk, op._batched = 5, False  # the one-probe-at-a-time fallback agrees
    v = torch.randn(3, op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), v @ h, rtol=1e-10, atol=1e-12)


def test_trace_frobenius_and_spec_measures_agree_within_their_standard_error(
        model_and_hessian) -> None:
    model, h = model_and_hessian
    custom = SharpnessSpec(phi=["identity", {"fn": "power", "p": 3}],
                           psi={"fn": "polynomial", "terms": [[1.0, [1, 0]], [0.2, [0, 1]]]},
                           measure={"kind": "sphere", "scale": "coordinate"}, name="custom")
    results = estimate(model, F.cross_entropy, BATCHES,
                       ["trace", "frob", "trace_sam", "frob_sam", custom], probes=2000, seed=3)
    targets = {"trace": float(torch.trace(h)), "frob": float((h ** 2).sum()),
               "trace_sam": float(presets.trace_sam().implied_measure(h)),
               "frob_sam": float(presets.frob_sam().implied_measure(h)),
               "custom": float(custom.implied_measure(h))}
    assert targets["trace_sam"] == pytest.approx(targets["trace"] / 2)
    for name, target in targets.items():
        est = results[name]
        assert est.probes == 2000
        assert_within_stderr(est.value, est.stderr, target, max_relative_stderr=0.06)


def test_top_eigenvalues_match_exactly(model_and_hessian) -> None:
    model, h = model_and_hessian
    exact = torch.linalg.eigvalsh(h).flip(0)
    results = estimate(model, F.cross_entropy, BATCHES, ["lmax", "top4"], lanczos_steps=60)
    assert results["lmax"].value == pytest.approx(float(exact[0]), rel=1e-9)
    torch.testing.assert_close(torch.tensor(results["top4"].extra["eigenvalues"],
                                            dtype=torch.float64), exact[:4], rtol=1e-8, atol=1e-10)
    assert max(results["top4"].extra["bounds"]) < 1e-6
    # the ascent presets' measure is ½λ_max by Lanczos
    sam = estimate(model, F.cross_entropy, BATCHES, ["sam"])["sam"]
    assert sam.value == pytest.approx(float(exact[0]) / 2, rel=1e-8)


def test_density_integrates_to_one_and_its_moments_match_traces_of_powers(
        model_and_hessian) -> None:
    model, h = model_and_hessian
    d = h.shape[0]
    result = estimate(model, F.cross_entropy, BATCHES, ["density"], density_runs=60,
                      density_steps=25, seed=2)["density"]
    grid = torch.tensor(result.extra["grid"], dtype=torch.float64)
    dens = torch.tensor(result.extra["density"], dtype=torch.float64)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)
    weights = torch.tensor(result.extra["weights"], dtype=torch.float64)
    torch.testing.assert_close(weights.sum(1), torch.ones(60, dtype=torch.float64))
    eig = torch.linalg.eigvalsh(h)
    for moment in result.extra["moments"]:
        k = moment["k"]
        target = float((eig ** k).sum()) / d
        assert_within_stderr(moment["value"], moment["stderr"], target, max_relative_stderr=0.25)
    # its nodes span the spectrum
    nodes = torch.tensor(result.extra["nodes"], dtype=torch.float64)[weights > 0]
    assert float(nodes.max()) == pytest.approx(float(eig.max()), rel=1e-6)


def test_estimates_do_not_depend_on_the_training_mode_and_the_mode_is_restored() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3)).double()
    model.train()
    for _ in range(3):  # give the running statistics non-trivial values
        model(X)
    model[3].eval()  # a submodule in its own mode
    in_train = estimate(model, F.cross_entropy, BATCHES, ["trace", "lmax"], probes=50, seed=1)
    assert model.training and model[1].training and not model[3].training
    stats = model[1].running_mean.clone()
    model.eval()
    in_eval = estimate(model, F.cross_entropy, BATCHES, ["trace", "lmax"], probes=50, seed=1)
    assert not model.training
    assert torch.equal(stats, model[1].running_mean)
    for name in in_train:
        assert in_train[name].value == in_eval[name].value
    # and it is the eval-mode Hessian: compare with the dense one computed in eval mode
    op = HessianOperator(model, F.cross_entropy, BATCHES)
    h = op.dense()
    assert in_eval["lmax"].value == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-8)
    # Hutchinson's trace against the dense one, within four of its own standard errors
    trace = in_eval["trace"]
    assert 0 < trace.stderr and abs(trace.value - float(torch.trace(h))) < 4 * trace.stderr


def test_unknown_measure_is_a_clear_error(model_and_hessian) -> None:
    model, _ = model_and_hessian
    with pytest.raises(ValueError, match="measures: unknown measure 'trce'; allowed: trace"):
        estimate(model, F.cross_entropy, BATCHES, ["trce"])


def test_explicit_batchnorm_computes_the_same_function_and_is_undone() -> None:
    from metasam.sharpness.hvp import explicit_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.BatchNorm2d(4, affine=False)).double()
    model.train()
    model(torch.randn(8, 2, 6, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
        with explicit_batchnorm(model):
            assert "forward" in vars(model[1]) and "forward" in vars(model[2])
            patched = model(x)
    torch.testing.assert_close(patched, reference, rtol=1e-12, atol=1e-12)
    assert "forward" not in vars(model[1]) and "forward" not in vars(model[2])


def test_trainer_logs_hessian_measures_and_the_cli_reads_a_checkpoint(tmp_path, capsys) -> None:
    import json

    from metasam.cli import main
    from metasam.training import train

    result = train({"dataset": "digits", "model": "mlp", "preset": "sam", "epochs": 2,
                    "sharpness_every": 1, "sharpness_measures": ["trace", "lmax"],
                    "sharpness_examples": 200, "sharpness_probes": 10,
                    "checkpoint_dir": str(tmp_path)})
    for epoch in result["history"]:
        assert epoch["hessian_trace"] > 0 and epoch["hessian_trace_se"] > 0
        assert epoch["hessian_lmax"] > 0
    assert main(["sharpness", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--measures",
                 "trace,lmax,density", "--examples", "200", "--probes", "10", "--json",
                 "--seed", "2", "--batch-size", "256",   # the last (2nd) epoch's, seed 0
                 "--density-runs", "3", "--density-steps", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    measures = out["measures"]
    assert out["examples"] == 200
    # the same examples, weights and seed as the last epoch's log: the same lmax
    assert measures["lmax"]["value"] == pytest.approx(result["history"][-1]["hessian_lmax"],
                                                      rel=1e-4)
    # with the log's probe seed (the run's seed + epoch): the same trace estimate and error
    assert measures["trace"]["value"] == pytest.approx(result["history"][-1]["hessian_trace"],
                                                       rel=1e-6)
    assert measures["trace"]["stderr"] == pytest.approx(
        result["history"][-1]["hessian_trace_se"], rel=1e-6)
    assert (tmp_path / "density.png").stat().st_size > 10_000
    assert measures["density"]["plot"] == str(tmp_path / "density.png")
