"""A step judged on the device: a non-finite one is undone there (weights, the base optimizer's
state, LookSAM's direction, bit for bit), the error names its pass and step when the verdicts
are read, no later step is applied, and ``strict=True`` keeps the per-step check."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metasam import NonFiniteStepError, SharpnessSpec, UniversalSAM, presets
from metasam.optim.counting import OpCounter


def _setup(spec, bn: bool = True, base=torch.optim.SGD, poison_value: float = float("nan"),
           **kwargs):
    """A small model, its optimizer and a closure whose loss is multiplied by
    ``poison_value`` in the pass numbered ``poison["call"]``."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 8)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(8))
    layers += [torch.nn.Tanh(), torch.nn.Linear(8, 3)]
    model = torch.nn.Sequential(*layers)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    if base is torch.optim.SGD:
        kwargs = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, **kwargs}
    opt = UniversalSAM(model.parameters(), base, spec, model=model, seed=0, **kwargs)
    poison: dict[str, int | None] = {"call": None}
    calls = [0]

    def closure():
        calls[0] += 1
        loss = F.cross_entropy(model(x), y)
        if calls[0] == poison["call"]:
            loss = loss * poison_value
        return opt.backward(loss)

    return model, opt, closure, poison, calls


def _tensors(model, opt) -> list[torch.Tensor]:
    out = [t.detach().clone() for t in model.state_dict().values()]
    for state in list(opt.base_optimizer.state.values()) + list(opt.state.values()):
        out += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return out


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("preset", ["sgd", "sam", "frob_sam"])
def test_a_non_finite_step_is_undone_on_the_device_and_named_when_read(preset: str) -> None:
    model, opt, closure, poison, calls = _setup(preset, bn=False)
    passes = opt.spec.passes
    for _ in range(3):
        opt.step(closure)
    before = _tensors(model, opt)
    poison["call"] = calls[0] + passes          # the last pass of step 4
    with OpCounter() as count:
        opt.step(closure)                        # judged on the device: no error yet
        opt.step(closure)                        # not applied either: the failure is sticky
    assert count.host_reads == 0
    assert _same(before, _tensors(model, opt))
    last = f"perturbation {passes - 1} of {passes - 1}" if passes > 1 else "unperturbed pass"
    with pytest.raises(NonFiniteStepError, match=f"{last} of step 4") as info:
        opt.check()
    assert info.value.step == 4 and info.value.found_at == 5 and "\n" not in str(info.value)
    assert _same(before, _tensors(model, opt))
    opt.step(closure)                            # training goes on from the weights before
    opt.check()
    assert not _same(before, _tensors(model, opt))


def test_reading_a_step_s_field_surfaces_the_deferred_error() -> None:
    model, opt, closure, poison, calls = _setup("sam", bn=False)
    opt.step(closure)
    poison["call"] = calls[0] + 1
    opt.step(closure)
    with pytest.raises(NonFiniteStepError, match="unperturbed pass of step 2"):
        _ = opt.last_step.loss


def test_skip_mode_skips_on_the_device_and_counts_at_the_read() -> None:
    model, opt, closure, poison, calls = _setup("trace_sam", on_nonfinite="skip")
    for _ in range(2):
        opt.step(closure)
    before = _tensors(model, opt)
    poison["call"] = calls[0] + 2
    opt.step(closure)
    info = opt.last_step
    after_failed = _tensors(model, opt)
    # the weights and the momentum are untouched (the unperturbed pass's BatchNorm update
    # stays, as it always did): compare everything but the running statistics
    keep = [i for i, k in enumerate(model.state_dict()) if "running" not in k
            and "num_batches" not in k]
    n_model = len(model.state_dict())
    assert all(torch.equal(before[i], after_failed[i]) for i in keep)
    assert _same(before[n_model:], after_failed[n_model:])
    opt.step(closure)                 # under "skip" the next step is applied
    assert opt.skipped_steps == 1
    assert info.skipped is not None and "perturbation 1 of 1" in info.skipped
    assert info.loss != info.loss and opt.last_step.skipped is None


def test_looksam_direction_is_undone_with_the_weights() -> None:
    spec = SharpnessSpec.coerce({**presets.sam().to_dict(),
                                 "schedule": {"every": 2, "reuse": True}})
    model, opt, closure, poison, calls = _setup(spec, bn=False)
    for _ in range(4):
        opt.step(closure)
    before = _tensors(model, opt)
    assert any("reuse" in s for s in opt.state.values())
    poison["call"] = calls[0] + 2      # step 5 applies the term: its perturbed pass fails
    opt.step(closure)
    assert _same(before, _tensors(model, opt))
    with pytest.raises(NonFiniteStepError, match="step 5"):
        opt.check()


def test_strict_raises_at_the_step_with_one_read_per_step() -> None:
    model, opt, closure, poison, calls = _setup("sam", bn=False, strict=True)
    opt.step(closure)
    with OpCounter() as count:
        opt.step(closure)
    assert count.host_reads == 1
    before = _tensors(model, opt)
    poison["call"] = calls[0] + 2
    with pytest.raises(NonFiniteStepError, match="perturbation 1 of 1 of step 3"):
        opt.step(closure)
    assert _same(before, _tensors(model, opt))


def test_a_failed_first_step_creates_no_state() -> None:
    """The first step is judged on the host: no momentum buffer from a failed one."""
    model, opt, closure, poison, calls = _setup("sam", bn=False)
    poison["call"] = 1
    with pytest.raises(NonFiniteStepError, match="step 1"):
        opt.step(closure)
    assert not opt.base_optimizer.state


def test_deferred_and_strict_make_the_same_updates() -> None:
    runs = []
    for strict in (False, True):
        model, opt, closure, _, _ = _setup("frob_sam", strict=strict, max_grad_norm=0.5)
        for _ in range(5):
            opt.step(closure)
        runs.append(_tensors(model, opt))
    assert _same(*runs)


@pytest.mark.parametrize("base, kwargs", [
    (torch.optim.AdamW, {"lr": 1e-2}), (torch.optim.AdamW, {"lr": 1e-2, "fused": True}),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "fused": True})])
def test_any_base_optimizer_s_state_is_undone(base, kwargs) -> None:
    """AdamW's moments and its step counter, a fused SGD's momentum: all back as they were before
    the step (a fused base skips through torch's found_inf, the others are undone from a copy)."""
    model, opt, closure, poison, calls = _setup("sam", bn=False, base=base,
                                                poison_value=float("inf"), **kwargs)
    for _ in range(3):
        opt.step(closure)
    before = _tensors(model, opt)
    poison["call"] = calls[0] + 1
    opt.step(closure)
    assert _same(before, _tensors(model, opt))
    with pytest.raises(NonFiniteStepError, match="unperturbed pass of step 4"):
        opt.check()


def test_an_fp16_overflow_is_skipped_on_the_device_and_the_scale_backs_off() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, opt, closure, poison, calls = _setup("sam", bn=False, poison_value=float("inf"),
                                                scaler=scaler)
    for _ in range(2):
        opt.step(closure)
    before = _tensors(model, opt)
    poison["call"] = calls[0] + 2          # the perturbed pass of step 3 overflows
    with OpCounter() as count:
        opt.step(closure)
    assert count.host_reads == 0
    assert _same(before, _tensors(model, opt))
    info = opt.last_step
    opt.step(closure)                 # an overflow skips, never raises: training goes on
    assert info.skipped is not None and "fp16 overflow" in info.skipped and \
        "perturbation 1 of 1" in info.skipped
    assert opt.skipped_steps == 1 and scaler.get_scale() == 2.0**9
    assert opt.last_step.skipped is None
