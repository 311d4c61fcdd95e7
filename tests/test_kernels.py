"""The step's device arithmetic alone (metasam.optim.kernels), against explicit formulas on
flattened vectors in float64 and torch's own clipping."""

from __future__ import annotations

import pytest
import torch

from metasam import SharpnessSpec, presets
from metasam.optim import kernels

SHAPES = [(3, 4), (5,), (2, 2, 2)]


def _tensors(seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in ts])


def test_total_norm_is_the_norm_of_the_concatenation() -> None:
    g = _tensors(0, torch.float32)
    got = kernels.total_norm(kernels.norms(g), torch.device("cpu"))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(float(_flat(g).norm()), rel=1e-6)
    mixed = [g[0], g[1].double()]   # two dtypes: one stack each
    assert float(kernels.total_norm(kernels.norms(mixed), torch.device("cpu"))) == \
        pytest.approx(float(_flat(mixed).norm()), rel=1e-6)


@pytest.mark.parametrize("on_device", [False, True])
def test_combine_is_the_weighted_sum(on_device: bool) -> None:
    g0, g1, g2, g3 = (_tensors(i) for i in range(4))
    beta = [0.3, -0.7, 1.9]
    c0 = 1.0 - sum(beta)
    expected = c0 * _flat(g0) + beta[0] * _flat(g1) + beta[1] * _flat(g2) + beta[2] * _flat(g3)
    final = [t.clone() for t in g3]
    coefficients = [torch.tensor(b, dtype=torch.float64) for b in beta] if on_device else beta
    c0_arg = torch.tensor(c0, dtype=torch.float64) if on_device else c0
    kernels.combine_gradients(final, g0, coefficients, c0_arg, raw=[g1, g2])
    assert torch.allclose(_flat(final), expected, rtol=0, atol=1e-12)
    # folded: buffers Σ_i φ_j'(D_i) g_i with their factors
    final = [t.clone() for t in g3]
    kernels.combine_gradients(final, g0, [beta[2]], c0, folded=[g1, g2],
                              folded_coefficients=[beta[0], beta[1]])
    assert torch.allclose(_flat(final), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="g0"):
        kernels.combine_gradients([t.clone() for t in g3], None, [1.0], 0.5)


def test_fold_adds_slope_times_gradient_and_ignores_a_non_finite_slope() -> None:
    g = _tensors(1)
    buffers = [[torch.zeros_like(t) for t in g] for _ in range(3)]
    kernels.fold_(buffers, g, torch.tensor([2.0, float("nan"), -0.5], dtype=torch.float64))
    assert torch.allclose(_flat(buffers[0]), 2.0 * _flat(g))
    assert torch.equal(_flat(buffers[1]), torch.zeros_like(_flat(g)))
    assert torch.allclose(_flat(buffers[2]), -0.5 * _flat(g))


@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_weight_scale_matches_the_spec_s_host_rule(scale: str) -> None:
    spec = SharpnessSpec.coerce({**presets.frob_sam().to_dict(), "lam": 0.7,
                                 "lam_scale": scale})
    for w in ([0.5, -1.5, 2.0], [0.0, 0.0, 0.0]):
        got = kernels.weight_scale(torch.tensor(w, dtype=torch.float64), spec.lam,
                                   scale == "relative")
        assert float(got) == pytest.approx(spec.weight_scale(w), rel=1e-15)


def test_guard_caps_the_sharpness_part_to_its_share_of_g0() -> None:
    g0, c = _tensors(2), _tensors(3)
    final = [a + 5.0 * b for a, b in zip(g0, c, strict=True)]
    g0_norm = _flat(g0).norm()
    out = kernels.apply_guard(final, g0, g0_norm, bound=0.5)
    share = float(5.0 * _flat(c).norm() / g0_norm)
    assert float(out[1]) == pytest.approx(share, rel=1e-12)
    assert float(out[0]) == pytest.approx(0.5 / share, rel=1e-12)
    part = _flat(final) - _flat(g0)
    assert float(part.norm()) == pytest.approx(0.5 * float(g0_norm), rel=1e-12)
    within = [a + 1e-3 * b for a, b in zip(g0, c, strict=True)]
    copy = [t.clone() for t in within]
    assert float(kernels.apply_guard(within, g0, g0_norm, bound=0.5)[0]) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(within, copy, strict=True))   # bit for bit


def test_clip_follows_torch_s_clip_grad_norm() -> None:
    for max_norm in (0.5, 1e6):
        params = [torch.nn.Parameter(t.clone()) for t in _tensors(4)]
        for p, g in zip(params, _tensors(5), strict=True):
            p.grad = g.clone()
        ours = [p.grad.clone() for p in params]
        norm = kernels.total_norm(kernels.norms(ours), torch.device("cpu"))
        factor = kernels.clip_(ours, norm, max_norm)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        assert all(torch.allclose(a, p.grad, rtol=1e-12, atol=0)
                   for a, p in zip(ours, params, strict=True))
        assert (float(factor) == 1.0) == (max_norm == 1e6)


def test_orthogonal_part_is_orthogonal_to_g0_per_unit_of_its_norm() -> None:
    g0, c = _tensors(6), _tensors(7)
    final = [a + b for a, b in zip(g0, c, strict=True)]
    g0_norm = _flat(g0).norm()
    out = _flat(kernels.orthogonal_part(final, g0, g0_norm))
    fc, f0 = _flat(c), _flat(g0)
    expected = (fc - (fc @ f0) / (f0 @ f0) * f0) / f0.norm()
    assert torch.allclose(out, expected, atol=1e-12)
    assert abs(float(out @ f0)) < 1e-10


def test_ascent_directions_of_sam_asam_and_ssam() -> None:
    g, w = _tensors(8), _tensors(9)
    per_tensor = kernels.norms(g)
    sam = _flat(kernels.ascent_direction(g, w, per_tensor, eps=0.0))
    assert torch.allclose(sam, _flat(g) / _flat(g).norm(), atol=1e-14)
    t = _flat(w).abs() + 0.01
    asam = _flat(kernels.ascent_direction(g, w, per_tensor, adaptive_eta=0.01, eps=0.0))
    assert torch.allclose(asam, t * t * _flat(g) / (t * _flat(g)).norm(), atol=1e-14)
    masks = [(torch.rand(s, generator=torch.Generator().manual_seed(1)) > 0.5).double()
             for s in SHAPES]
    ssam = _flat(kernels.ascent_direction(g, w, per_tensor, masks=masks, eps=0.0))
    assert torch.allclose(ssam, _flat(masks) * _flat(g) / _flat(g).norm(), atol=1e-14)


def test_flat_buffers_group_by_dtype_and_view_each_tensor() -> None:
    ts = [torch.zeros(2, 3), torch.zeros(4, dtype=torch.float64), torch.zeros(5)]
    groups = kernels.flat_buffers(ts)
    assert [(g[0], g[1].dtype, g[1].numel()) for g in groups] == \
        [([0, 2], torch.float32, 11), ([1], torch.float64, 4)]
    members, flat, views = groups[0]
    flat.copy_(torch.arange(11.0))
    assert [tuple(v.shape) for v in views] == [(2, 3), (5,)]
    assert torch.equal(views[1], torch.arange(6.0, 11.0))     # views of the one buffer


def test_loss_differences_are_the_definition_for_one_loss_and_for_a_vector() -> None:
    loss0 = torch.tensor(0.5, dtype=torch.float32)
    losses = torch.tensor([0.75, 0.25, 0.5], dtype=torch.float32)
    d = kernels.loss_differences(losses, loss0, 0.5)
    assert d.dtype == torch.float64 and d.tolist() == [1.0, -1.0, 0.0]   # (L_i − L0)/ρ², exact
    assert float(kernels.loss_differences(losses[0], loss0, 0.5)) == 1.0


@pytest.mark.parametrize("spec", [presets.sam(), presets.trace_sam(n=3),
                                  presets.trace_sam(n=3, lam_scale="relative")],
                         ids=["sam", "trace", "trace-relative"])
def test_device_coefficients_equal_the_spec_s_host_twin(spec: SharpnessSpec) -> None:
    host = spec.coefficients
    assert host is not None   # affine φ and ψ: known on the host
    d = torch.randn(spec.n, dtype=torch.float64)   # constant weights: any D gives the same
    device = kernels.surrogate_coefficients(spec.surrogate(d), spec.lam,
                                            spec.lam_scale != "absolute", folded=True)
    assert [float(b) for b in device.beta] == pytest.approx(host.beta, rel=1e-15)
    assert float(device.g0) == pytest.approx(host.g0, abs=1e-15)
    assert [float(f) for f in device.folded] == pytest.approx(host.folded, rel=1e-15)
    # SAM's step is exactly g_1: β = [1], no g0
    if spec.n == 1:
        assert (host.beta, host.g0) == ([1.0], 0.0)


def test_a_member_with_non_affine_weights_has_no_host_coefficients() -> None:
    assert presets.frob_sam().coefficients is None and presets.sgd().coefficients is None


def test_keyed_buffers_are_remade_only_when_the_set_of_tensors_changes() -> None:
    made = []
    cache = kernels.KeyedBuffers(lambda ts: made.append(len(ts)) or [t.clone() for t in ts])
    a, b = _tensors(0), _tensors(1)
    first = cache.get(a)
    assert cache.get(a) is first and cache.get(list(a)) is first and made == [3]
    assert cache.get(b) is not first and made == [3, 3]
    cache.forget()
    cache.get(b)
    assert made == [3, 3, 3]
