"""fp16 with a GradScaler, and closures that accumulate micro-batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector

from metasam import UniversalSAM
from metasam.optim import accumulating_closure

SPECS = ["sgd", "sam", "asam", "frob_sam"]


def _problem(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    return model, torch.randn(64, 20), torch.randint(0, 5, (64,))


def _train(spec: str, *, fp16: bool = False, scaler: torch.amp.GradScaler | None = None,
           steps: int = 4, fail_call: int | None = None
           ) -> tuple[nn.Module, UniversalSAM, list]:
    model, x, y = _problem()
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, seed=1, lr=0.1,
                       momentum=0.9, scaler=scaler)
    calls = [0]
    infos = []
    for _ in range(steps):
        def closure() -> torch.Tensor:
            calls[0] += 1
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            if calls[0] == fail_call:
                loss = loss * math.inf  # an overflow in this pass only
            return opt.backward(loss)

        opt.step(closure)
        infos.append(opt.last_step)
    return model, opt, infos


@pytest.mark.parametrize("spec", SPECS)
def test_scaler_unscales_exactly(spec: str) -> None:
    """fp32 passes scaled by a power of two, unscaled once: the very same step as without a
    scaler (loss differences from unscaled losses, ε of the ascent norm scaled along)."""
    plain, _, plain_infos = _train(spec)
    scaled, opt, infos = _train(spec, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    assert torch.equal(parameters_to_vector(plain.parameters()),
                       parameters_to_vector(scaled.parameters()))
    assert [i.d for i in infos] == [i.d for i in plain_infos]
    assert [i.grad_norm for i in infos] == [i.grad_norm for i in plain_infos]
    assert opt.scaler.get_scale() == 2.0**12  # no overflow, growth interval not reached


@pytest.mark.parametrize("spec", ["sam", "frob_sam"])
def test_fp16_autocast_tracks_fp32(spec: str) -> None:
    model0, _, _ = _problem()
    start = parameters_to_vector(model0.parameters()).detach()
    fp32, _, _ = _train(spec)
    fp16, opt, infos = _train(spec, fp16=True, scaler=torch.amp.GradScaler("cpu"))
    a = parameters_to_vector(fp32.parameters()).detach()
    b = parameters_to_vector(fp16.parameters()).detach()
    assert all(i.skipped is None for i in infos)
    assert (b - a).norm() < 0.01 * (a - start).norm()


def test_overflow_skips_the_step_and_backs_off() -> None:
    model0, _, _ = _problem()
    start = parameters_to_vector(model0.parameters()).detach()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # fp16 gradients overflow
    model, opt, infos = _train("sam", fp16=True, scaler=scaler, steps=1)
    assert infos[0].skipped is not None and "fp16 overflow" in infos[0].skipped
    assert torch.equal(parameters_to_vector(model.parameters()), start)
    assert not opt.base_optimizer.state  # no momentum buffer from the skipped step
    assert scaler.get_scale() == 2.0**39 and opt.skipped_steps == 1


@pytest.mark.parametrize("spec", ["sam", "frob_sam"])
def test_overflow_in_a_perturbed_pass_skips_the_step(spec: str) -> None:
    """Only the second pass of the first step overflows: that step is skipped, the scale backs
    off once, and training goes on."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    model, opt, infos = _train(spec, scaler=scaler, steps=3, fail_call=2)
    assert infos[0].skipped is not None and "perturbation 1" in infos[0].skipped
    assert [i.skipped for i in infos[1:]] == [None, None]
    assert scaler.get_scale() == 2.0**11
    assert opt.skipped_steps == 1


def test_scaler_state_round_trips() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    _, opt, _ = _train("sam", fp16=True, scaler=scaler, steps=2)
    state = opt.state_dict()
    model, _, _ = _problem()
    other = UniversalSAM(model.parameters(), torch.optim.SGD, "sam", lr=0.1,
                         scaler=torch.amp.GradScaler("cpu"))
    other.load_state_dict(state)
    assert other.scaler.get_scale() == 2.0**38


def test_scaler_must_be_a_grad_scaler() -> None:
    model, _, _ = _problem()
    with pytest.raises(TypeError, match="GradScaler"):
        UniversalSAM(model.parameters(), torch.optim.SGD, "sam", lr=0.1, scaler=object())


# --- gradient accumulation ---------------------------------------------------------------------

def _accumulated(spec: str, splits: list[int] | None, steps: int = 3
                 ) -> tuple[torch.Tensor, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x = torch.randn(60, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (60,))
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, model=model, seed=3, lr=0.2,
                       momentum=0.9)
    infos = []
    for _ in range(steps):
        if splits is None:
            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                return loss
        else:
            chunks = list(zip(x.split(splits), y.split(splits)))
            closure = accumulating_closure(opt, lambda b: F.cross_entropy(model(b[0]), b[1]),
                                           chunks)
        opt.step(closure)
        infos.append(opt.last_step)
    return parameters_to_vector(model.parameters()).detach(), infos


@pytest.mark.parametrize("spec", ["sam", "frob_sam", "det_sam"])
@pytest.mark.parametrize("splits", [[15, 15, 15, 15], [7, 23, 30]])
def test_accumulation_equals_one_big_batch(spec: str, splits: list[int]) -> None:
    whole, whole_infos = _accumulated(spec, None)
    parts, part_infos = _accumulated(spec, splits)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-10)
    for a, b in zip(part_infos, whole_infos):
        assert a.loss == pytest.approx(b.loss, abs=1e-12)
        assert a.d == pytest.approx(b.d, abs=1e-6)


def test_accumulation_of_unequal_chunks_is_weighted_by_size() -> None:
    """A plain mean of the chunk losses would differ: the check above would catch it, and this
    one shows that such a check can fail."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 2, (10,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    chunks = list(zip(x.split([2, 8]), y.split([2, 8])))
    loss = accumulating_closure(opt, lambda b: F.cross_entropy(model(b[0]), b[1]), chunks)()
    with torch.no_grad():
        whole = float(F.cross_entropy(model(x), y))
        unweighted = sum(float(F.cross_entropy(model(a), b)) for a, b in chunks) / 2
    assert float(loss) == pytest.approx(whole, abs=1e-12)
    assert abs(unweighted - float(loss)) > 1e-3


def test_accumulation_rejects_what_has_no_batch_dimension() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no micro-batches"):
        accumulating_closure(opt, lambda b: b, [])
    with pytest.raises(TypeError, match="micro-batch must be a tensor"):
        accumulating_closure(opt, lambda b: b, [("text",)])


# --- the trainer -----------------------------------------------------------------------------

def test_trainer_fp16_matches_fp32_and_checkpoints_the_scaler(tmp_path) -> None:
    from metasam.errors import ConfigError
    from metasam.training import train
    from metasam.training.checkpoint import load_checkpoint

    config = {"dataset": "digits", "model": "mlp", "preset": "frob_sam", "epochs": 2}
    fp32 = train(config)
    fp16 = train({**config, "fp16": True, "checkpoint_dir": str(tmp_path)})
    assert fp16["status"] == "completed"
    assert fp16["test_acc"] == pytest.approx(fp32["test_acc"], abs=0.02)
    assert fp16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.05)
    own = load_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]["universal_sam"]
    # the trained scaler's state, not a fresh one's: it backed off once per skipped step from
    # 2**16 (no growth in fewer than 2,000 steps) and counted the steps since its last back-off
    scaler, steps, skipped = own["scaler"], own["steps"], own["skipped_steps"]
    assert scaler["scale"] == 2.0**16 * 0.5**skipped
    assert 0 < scaler["_growth_tracker"] <= steps - skipped
    if skipped == 0:
        assert scaler["_growth_tracker"] == steps
    with pytest.raises(ConfigError, match="fp16"):
        train({**config, "fp16": True, "bf16": True})
