"""UniversalSAM's contract beyond the update formula: state round trips, BatchNorm, non-finite
passes, clipping, autocast, schedulers, seeding and its errors."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from _util import Recorder, tiny_mlp
from test_gradient import X, Y, reference_gradient

from metasam import NonFiniteStepError, SharpnessSpec, UniversalSAM, presets


def classifier(bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 12)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(12))
    layers += [torch.nn.ReLU(), torch.nn.Linear(12, 3)]
    return torch.nn.Sequential(*layers)


def data(seed: int = 0, n: int = 32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def make_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def train(model, opt, steps, start=0):
    for k in range(start, start + steps):
        x, y = data(k)
        opt.step(make_closure(opt, model, x, y))


@pytest.mark.parametrize("preset", ["trace_sam", "frob_sam", "det_sam", "sam", "ssam"])
def test_state_dict_round_trip_resumes_bit_identically(preset: str) -> None:
    model = classifier(bn=True)
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, preset, model=model, lr=0.1,
                       momentum=0.9, seed=7)
    if preset == "ssam":
        opt.update_fisher_mask(model, F.cross_entropy, *data(99, n=16))
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, 3, start=3)
    uninterrupted = [p.detach().clone() for p in model.state_dict().values()]

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = classifier(bn=True)
    fresh.load_state_dict(saved["model"])
    opt2 = UniversalSAM(fresh.parameters(), torch.optim.SGD, preset, model=fresh, lr=0.1,
                        momentum=0.9, seed=123)  # the seed comes back from the state
    opt2.load_state_dict(saved["opt"])
    assert opt2.steps == 3
    train(fresh, opt2, 3, start=3)
    for a, b in zip(uninterrupted, fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_same_run_and_other_seed_other_run() -> None:
    runs = []
    for seed in (1, 1, 2):
        model = classifier()
        opt = UniversalSAM(model.parameters(), torch.optim.SGD, "trace_sam", lr=0.1, seed=seed)
        train(model, opt, 2)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("with_model", [True, False])
def test_batchnorm_running_stats_come_only_from_the_unperturbed_pass(with_model: bool) -> None:
    model = classifier(bn=True)
    reference = copy.deepcopy(model)
    x, y = data()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=3),
                       model=model if with_model else None, lr=0.1, seed=0)
    opt.step(make_closure(opt, model, x, y))
    reference(x)  # one training-mode forward at the unperturbed weights
    bn, ref_bn = model[1], reference[1]
    assert int(bn.num_batches_tracked) == 1
    assert torch.equal(bn.running_mean, ref_bn.running_mean)
    assert torch.equal(bn.running_var, ref_bn.running_var)


def test_batchnorm_official_mode_updates_in_every_pass() -> None:
    model = classifier(bn=True)
    x, y = data()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=3), model=model,
                       bn_stats="official", lr=0.1, seed=0)
    opt.step(make_closure(opt, model, x, y))
    assert int(model[1].num_batches_tracked) == 4


def test_nonfinite_loss_in_a_perturbed_pass_raises_naming_it_and_leaves_weights() -> None:
    model = classifier()
    x, y = data()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=2), lr=0.1,
                       momentum=0.9, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if len(calls) == 3:
            loss = loss * float("nan")
        loss.backward()
        return loss

    with pytest.raises(NonFiniteStepError, match="perturbation 2 of 2") as info:
        opt.step(closure)
    assert "\n" not in str(info.value) and "loss" in str(info.value)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    assert not opt.base_optimizer.state  # no momentum buffer was created


def test_nonfinite_gradient_is_skipped_when_configured() -> None:
    model = classifier()
    x, y = data()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, "trace_sam", lr=0.1, momentum=0.9,
                       seed=0, on_nonfinite="skip")
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        model[0].weight.grad[0, 0] = float("inf")
        return loss

    opt.step(closure)
    assert opt.skipped_steps == 1
    assert "unperturbed pass" in opt.last_step.skipped
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)
    opt.step(make_closure(opt, model, x, y))  # a healthy step still works afterwards
    assert opt.last_step.skipped is None and opt.skipped_steps == 1


def test_det_sam_overflow_is_reported_not_written_into_the_weights() -> None:
    model = classifier()
    x, y = data()
    # a huge box makes D = L(x + e) − L(x) enormous: e^D overflows float64
    opt = UniversalSAM(model.parameters(), torch.optim.SGD,
                       presets.det_sam(half_width=1e4), lr=0.1, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteStepError, match="sharpness surrogate|combined gradient"):
        opt.step(make_closure(opt, model, x, y))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_exception_in_a_perturbed_closure_restores_the_weights() -> None:
    model = classifier()
    x, y = data()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, "trace_sam", lr=0.1, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return make_closure(opt, model, x, y)()

    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_gradient_clipping_clips_the_combined_gradient() -> None:
    x, y = data()
    grads = {}
    for clip in (None, 0.05):
        model = classifier()
        opt = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=2, lam=0.05),
                           lr=0.0, seed=3, max_grad_norm=clip)
        opt.step(make_closure(opt, model, x, y))
        grads[clip] = [p.grad.clone() for p in model.parameters()]
    full = torch.sqrt(sum((g ** 2).sum() for g in grads[None]))
    assert float(full) > 0.05
    assert opt.last_step.grad_norm == pytest.approx(float(full))
    for a, b in zip(grads[0.05], grads[None]):
        torch.testing.assert_close(a, b * 0.05 / (full + 1e-6))


def test_bf16_autocast_closure_works_with_float32_master_weights() -> None:
    """Forward passes under bf16 autocast: losses come back in float32, the weights are restored
    exactly, and the update is g0 + (λ/n)Σw_i(g_i − g0) of the autocast passes."""
    model = tiny_mlp(dtype=torch.float32)
    spec = SharpnessSpec(phi=["identity", "square"], psi="variance", measure="gaussian",
                         rho=0.1, lam=0.5, n=2)
    xf, yf = X.float(), Y.float()

    def autocast_loss():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(xf)
        assert out.dtype == torch.bfloat16
        return ((out.float() - yf) ** 2).mean()

    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    recorder = Recorder(params, autocast_loss)
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.0, seed=1)
    opt.step(recorder)
    for a, b in zip(before, params):
        assert torch.equal(a, b)
    losses, grads = [], []
    for point in recorder.points:  # evaluate each pass again at exactly the recorded weights
        with torch.no_grad():
            for p, value in zip(params, point):
                p.copy_(value)
        loss = autocast_loss()
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, params))
    d = (torch.stack(losses[1:]).double() - losses[0].double()) / spec.rho**2
    weights = spec.surrogate(d).weights
    for k, p in enumerate(params):
        want = grads[0][k] + spec.lam / spec.n * sum(
            float(w) * (g[k] - grads[0][k]) for w, g in zip(weights, grads[1:]))
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)
    assert opt.last_step.d == pytest.approx(d.tolist())


def test_lr_scheduler_drives_the_base_optimizer() -> None:
    model = classifier()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, "sam", lr=0.2, seed=0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert opt.param_groups is opt.base_optimizer.param_groups
    x, y = data()
    opt.step(make_closure(opt, model, x, y))
    scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(make_closure(opt, model, x, y))
    for p, b in zip(model.parameters(), before):  # plain SGD: Δ = −lr·grad
        torch.testing.assert_close(p.detach(), b - 0.1 * p.grad)


def test_g0_survives_closures_that_reuse_gradient_buffers() -> None:
    """DDP-style closures write every pass's gradient into the same buffers: g0 must be a copy."""
    model = tiny_mlp()
    params = list(model.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    spec = presets.frob_sam(lam=0.05, rho=0.01)
    points = []

    def closure():
        points.append([p.detach().clone() for p in params])
        loss = ((model(X) - Y) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        for p, buf, g in zip(params, buffers, grads):
            buf.copy_(g)
            p.grad = buf
        return loss

    opt = UniversalSAM(params, torch.optim.SGD, spec, lr=0.0, seed=2)
    opt.step(closure)
    perts = [[a - b for a, b in zip(pt, points[0])] for pt in points[1:]]
    for p, want in zip(params, reference_gradient(model, spec, perts)):
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)


def test_constructor_and_step_errors_are_clear() -> None:
    model = classifier()
    with pytest.raises(TypeError, match="optimizer class"):
        UniversalSAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), "sam")
    with pytest.raises(ValueError, match="bn_stats.*allowed: freeze, official"):
        UniversalSAM(model.parameters(), torch.optim.SGD, "sam", bn_stats="off", lr=0.1)
    with pytest.raises(ValueError, match="on_nonfinite"):
        UniversalSAM(model.parameters(), torch.optim.SGD, "sam", on_nonfinite="warn", lr=0.1)
    with pytest.raises(ValueError, match="spec: unknown preset 'samm'; allowed: sgd, sam"):
        UniversalSAM(model.parameters(), torch.optim.SGD, "samm", lr=0.1)
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, "sam", lr=0.1)
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()


def test_sgd_preset_is_plain_sgd_with_one_pass() -> None:
    x, y = data()
    model, plain = classifier(), classifier()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, "sgd", lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    calls = []
    for _ in range(3):
        closure = make_closure(opt, model, x, y)
        opt.step(lambda closure=closure: calls.append(1) or closure())
        sgd.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        sgd.step()
    assert len(calls) == 3 and opt.last_step.passes == 1
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_passes_are_counted_as_made() -> None:
    """StepInfo.passes and the optimizer's grad_evals count the closure calls a step really
    made: 1 + n normally (a skipped step too: finiteness is checked once, after the passes), 1
    for plain training or when nothing is perturbed."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    calls = [0]

    def run(optimizer, fail_at=None):
        def closure():
            calls[0] += 1
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if calls[0] == fail_at:
                loss = loss * float("nan")
            loss.backward()
            return loss
        calls[0] = 0
        optimizer.step(closure)
        return calls[0], optimizer.last_step.passes

    frob = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=3), lr=0.1,
                        on_nonfinite="skip")
    assert run(frob) == (4, 4)
    assert run(frob, fail_at=3) == (4, 4) and frob.last_step.skipped is not None
    assert frob.grad_evals == 8
    plain = UniversalSAM(model.parameters(), torch.optim.SGD, "sgd", lr=0.1)
    assert run(plain) == (1, 1)
    frozen = UniversalSAM([{"params": model.parameters(), "perturb": False}], torch.optim.SGD,
                          "sam", lr=0.1)
    assert run(frozen) == (1, 1) and frozen.grad_evals == 1
    state = frob.state_dict()
    again = UniversalSAM(model.parameters(), torch.optim.SGD, presets.frob_sam(n=3), lr=0.1)
    again.load_state_dict(state)
    assert again.grad_evals == 8
