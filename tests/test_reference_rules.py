"""Each preset reproduces the published/official update rule, step for step.

The references below are written from the papers and the official code's formulas
(docs/family.md §2), independently of metasam's generic machinery: each gets the gradients of
its own copy of the model and applies its own formula; random presets reuse the perturbations
metasam drew (read off the points where metasam's closure was called), deterministic ones
compute their own.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metasam import UniversalSAM, presets

HYPER = dict(lr=0.05, momentum=0.9, weight_decay=5e-4)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).double()


def batches(steps: int):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        yield (torch.randn(16, 10, generator=gen, dtype=torch.float64),
               torch.randint(0, 3, (16,), generator=gen))


def loss_and_grads(model, params, x, y):
    loss = F.cross_entropy(model(x), y)
    return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, params)]


def at(params, offsets):
    """Context: parameters moved by ``offsets``, restored from a copy afterwards."""
    class _At:
        def __enter__(self):
            self.saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, e in zip(params, offsets):
                    p.add_(e)

        def __exit__(self, *exc):
            with torch.no_grad():
                for p, s in zip(params, self.saved):
                    p.copy_(s)
    return _At()


def global_norm(tensors):
    return torch.sqrt(sum((t ** 2).sum() for t in tensors))


def recorded_step(opt, model, x, y) -> list[list[torch.Tensor]]:
    """One step of ``opt`` on the batch; returns the points its passes were made at (the
    unperturbed one first)."""
    params = list(model.parameters())
    points: list[list[torch.Tensor]] = []

    def closure():
        points.append([p.detach().clone() for p in params])
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    return points


def reference_step(reference, theirs, base, x, y, spec, perturbations, our_params) -> None:
    """One step of the reference model with ``reference``'s gradients and its own base
    optimizer, then our parameters checked against its, to 1e-10."""
    their_params = list(theirs.parameters())
    grads = reference(theirs, their_params, x, y, spec, perturbations)
    for p, g in zip(their_params, grads):
        p.grad = g.clone()
    base.step()
    for a, b in zip(our_params, their_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# --- the references ---------------------------------------------------------------------------

def sam_reference(model, params, x, y, spec, perturbations):
    _, g = loss_and_grads(model, params, x, y)
    norm = global_norm(g)
    e = [spec.rho * gi / (norm + 1e-12) for gi in g]
    with at(params, e):
        _, g1 = loss_and_grads(model, params, x, y)
    return g1


def asam_reference(model, params, x, y, spec, perturbations):
    eta = spec.measure.eta
    _, g = loss_and_grads(model, params, x, y)
    t = [p.detach().abs() + eta for p in params]
    norm = global_norm([ti * gi for ti, gi in zip(t, g)])
    e = [spec.rho * ti * ti * gi / (norm + 1e-12) for ti, gi in zip(t, g)]
    with at(params, e):
        _, g1 = loss_and_grads(model, params, x, y)
    return g1


def trace_reference(model, params, x, y, spec, perturbations):
    """Official ISAM "trace": g0 + λ·(1/n)Σ(g_i − g0)."""
    _, g0 = loss_and_grads(model, params, x, y)
    total = [torch.zeros_like(g) for g in g0]
    for e in perturbations:
        with at(params, e):
            _, gi = loss_and_grads(model, params, x, y)
        total = [t + (a - b) / len(perturbations) for t, a, b in zip(total, gi, g0)]
    return [g + spec.lam * t for g, t in zip(g0, total)]


def frob_reference(model, params, x, y, spec, perturbations):
    """Official FROSAM: g0 + λ/ρ²·(Σ L_i g_i − (Σ L_i)(1/n)Σ g_i)/(n − 1)."""
    n = len(perturbations)
    _, g0 = loss_and_grads(model, params, x, y)
    cross = [torch.zeros_like(g) for g in g0]
    grad_sum = [torch.zeros_like(g) for g in g0]
    loss_sum = 0.0
    for e in perturbations:
        with at(params, e):
            li, gi = loss_and_grads(model, params, x, y)
        loss_sum += li
        cross = [c + li * g for c, g in zip(cross, gi)]
        grad_sum = [s + g for s, g in zip(grad_sum, gi)]
    return [g + spec.lam / spec.rho**2 * (c / (n - 1) - loss_sum / (n - 1) * s / n)
            for g, c, s in zip(g0, cross, grad_sum)]


def det_reference(model, params, x, y, spec, perturbations):
    """Official ISAM "det": φ = exp(−D/2) averaged, then ψ'(s) = −2/s³."""
    n = len(perturbations)
    l0, g0 = loss_and_grads(model, params, x, y)
    cum = 0.0
    g_sum = [torch.zeros_like(g) for g in g0]
    for e in perturbations:
        with at(params, e):
            li, gi = loss_and_grads(model, params, x, y)
        diff = (li - l0) / spec.rho**2
        cum = cum + torch.exp(-diff / 2) / n
        scale = -0.5 * torch.exp(-diff / 2) / n
        g_sum = [s + scale * (a - b) for s, a, b in zip(g_sum, gi, g0)]
    return [g + spec.lam * (-2 / cum**3) * s for g, s in zip(g0, g_sum)]


def det_closed_form_n1(model, params, x, y, spec, perturbations):
    """family.md: with n = 1 the Det-SAM update is g0 + λ·e^D·(g1 − g0)."""
    (e,) = perturbations
    l0, g0 = loss_and_grads(model, params, x, y)
    with at(params, e):
        l1, g1 = loss_and_grads(model, params, x, y)
    weight = torch.exp((l1 - l0) / spec.rho**2)
    return [a + spec.lam * weight * (b - a) for a, b in zip(g0, g1)]


CASES = {
    "sam": (presets.sam(), sam_reference),
    "asam": (presets.asam(), asam_reference),
    "trace_sam": (presets.trace_sam(), trace_reference),
    "trace_sam-n3": (presets.trace_sam(n=3, lam=0.1), trace_reference),
    "frob_sam": (presets.frob_sam(), frob_reference),
    "frob_sam-n4": (presets.frob_sam(n=4, lam=0.01), frob_reference),
    "det_sam": (presets.det_sam(), det_reference),
    "det_sam-closed-form": (presets.det_sam(half_width=0.2), det_closed_form_n1),
    "det_sam-n3": (presets.det_sam(n=3, half_width=0.1), det_reference),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preset_matches_its_reference_step_for_step(case: str) -> None:
    spec, reference = CASES[case]
    ours = make_model()
    theirs = copy.deepcopy(ours)
    our_params = list(ours.parameters())
    opt = UniversalSAM(ours.parameters(), torch.optim.SGD, spec, seed=4, **HYPER)
    base = torch.optim.SGD(theirs.parameters(), **HYPER)
    moved = 0.0
    for x, y in batches(5):
        points = recorded_step(opt, ours, x, y)
        perturbations = [[a - b for a, b in zip(point, points[0])] for point in points[1:]]
        assert len(perturbations) == spec.n
        reference_step(reference, theirs, base, x, y, spec, perturbations, our_params)
        moved = max(moved, max(float((a.detach() - p0).abs().max()) for a, p0 in zip(our_params,
                                                                            points[0])))
    assert moved > 1e-4
    # and the rule is not plain SGD: its update differs from SGD's on the same batches
    plain = make_model()
    sgd = torch.optim.SGD(plain.parameters(), **HYPER)
    for x, y in batches(5):
        sgd.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        sgd.step()
    difference = max(float((a - b).detach().abs().max())
                     for a, b in zip(our_params, plain.parameters()))
    assert difference > 1e-9


def test_ssam_matches_the_official_fisher_mask_and_update() -> None:
    spec = presets.ssam(fisher_samples=16)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    our_params, their_params = list(ours.parameters()), list(theirs.parameters())
    opt = UniversalSAM(ours.parameters(), torch.optim.SGD, spec, seed=4, **HYPER)
    base = torch.optim.SGD(theirs.parameters(), **HYPER)
    gen = torch.Generator().manual_seed(9)
    pool_x = torch.randn(16, 10, generator=gen, dtype=torch.float64)
    pool_y = torch.randint(0, 3, (16,), generator=gen)
    for step, (x, y) in enumerate(batches(4)):
        if step % 2 == 0:  # refresh the mask on a schedule
            kept = opt.update_fisher_mask(ours, F.cross_entropy, pool_x, pool_y)
            # official SSAM-F: Σ squared batch-1 gradients, keep the top int(d·(1 − s))
            fisher = [torch.zeros_like(p) for p in their_params]
            for i in range(16):
                _, g = loss_and_grads(theirs, their_params, pool_x[i:i + 1], pool_y[i:i + 1])
                fisher = [f + gi ** 2 for f, gi in zip(fisher, g)]
            flat = torch.cat([f.reshape(-1) for f in fisher])
            keep = int(flat.numel() * (1 - spec.measure.sparsity))
            mask_flat = torch.zeros_like(flat)
            mask_flat[torch.topk(flat, keep).indices] = 1.0
            masks, start = [], 0
            for p in their_params:
                masks.append(mask_flat[start:start + p.numel()].reshape(p.shape))
                start += p.numel()
            assert kept == pytest.approx(keep / flat.numel())
            for p, m in zip(our_params, masks):
                assert torch.equal(opt.state[p]["fisher_mask"], m.bool())

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(ours(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        _, g = loss_and_grads(theirs, their_params, x, y)
        norm = global_norm(g)
        e = [spec.rho * gi / (norm + 1e-12) * m for gi, m in zip(g, masks)]
        with at(their_params, e):
            _, g1 = loss_and_grads(theirs, their_params, x, y)
        for p, gi in zip(their_params, g1):
            p.grad = gi
        base.step()
        for a, b in zip(our_params, their_params):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
