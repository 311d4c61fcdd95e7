"""What a step costs besides time: the operator counter against known sequences, and a
step's aten operators against the plain loops (CPU; on a GPU, the proxies of kernel launches)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from metasam import UniversalSAM
from metasam.optim.counting import OpCounter, PlainSAM, PlainSGD


def test_the_counter_counts_known_operators_and_host_reads():
    a, b = torch.randn(3), torch.randn(3)
    with OpCounter() as count:
        c = a + b                                  # add
        torch._foreach_mul_([a, b], 2.0)           # one foreach call, however many tensors
        value = float(c.sum())                     # sum, then a host read
        flag = bool((c > value).any())             # gt, any, a host read
        items = c.tolist()                         # a host read
    # float() and bool() read through aten's _local_scalar_dense; tolist reads the memory
    assert count.by_op == {"add": 1, "_foreach_mul_": 1, "sum": 1, "gt": 1, "any": 1,
                           "_local_scalar_dense": 2}
    assert count.host_reads == 3 and len(items) == 3 and isinstance(flag, bool)
    assert all("test_step_cost.py" in where for where in count.reads_at)
    # outside the block nothing is counted, and Tensor's methods are restored
    float(c.sum())
    assert count.host_reads == 3 and count.ops == 7


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def _ops(make) -> tuple[int, int]:
    model = _cnn()
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))

    def closure():
        for p in model.parameters():
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt = make(model)
    opt.step(closure)
    opt.step(closure)
    with OpCounter() as count:
        opt.step(closure)
    return count.ops, count.host_reads


def test_a_step_dispatches_about_what_a_plain_loop_does():
    """``sam`` within 1.15× the operators of a plain two-pass SAM, ``sgd`` within 1.10× of a
    plain SGD step, and no host read in a steady-state step."""
    def universal(name):
        return lambda m: UniversalSAM(m.parameters(), torch.optim.SGD, name, model=m, lr=1e-3,
                                      momentum=0.9, seed=0)

    plain_sgd, _ = _ops(lambda m: PlainSGD(m.parameters(), 1e-3))
    plain_sam, _ = _ops(lambda m: PlainSAM(m.parameters(), 1e-3))
    sgd, sgd_reads = _ops(universal("sgd"))
    sam, sam_reads = _ops(universal("sam"))
    assert sgd <= 1.10 * plain_sgd, (sgd, plain_sgd)
    assert sam <= 1.15 * plain_sam, (sam, plain_sam)
    assert (sgd_reads, sam_reads) == (0, 0)


def test_the_trainer_s_steps_read_nothing_back_and_cost_about_a_plain_loop():
    """Through ``Trial.train_epoch`` (digits, CNN; epochs of 2k and k steps differenced, so the
    epoch's own read-back and the first step cancel): no host read per steady-state step for
    any preset, and the operators per step within 1.10× (sgd) and 1.15× (sam) of the loop a
    user writes around the same model, loader and base optimizer."""
    from metasam import presets
    from metasam.training.config import TrainConfig
    from metasam.training.step_cost import step_cost

    base = TrainConfig(model="cnn", batch_size=32, epochs=3)
    for name in presets.NAMES:
        steps = 6 if name in ("sgd", "sam") else 2
        cost = step_cost(dataclasses.replace(base, preset=name), steps=steps)
        assert cost.host_reads == 0, (name, cost.reads_at)
        if name == "sgd":
            assert cost.ops <= 1.10 * cost.plain_ops, (cost.ops, cost.plain_ops)
        if name == "sam":
            assert cost.ops <= 1.15 * cost.plain_ops, (cost.ops, cost.plain_ops)
