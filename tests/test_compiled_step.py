"""``compile=True``: the step's device arithmetic through torch.compile (inductor on a CPU)
makes the eager step's updates, and a varying member does not recompile it per step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metasam import SharpnessSpec, UniversalSAM, presets

pytestmark = pytest.mark.slow   # inductor compiles C++ kernels: tens of seconds


def _run(spec, compile: bool, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    opt = UniversalSAM(model.parameters(), torch.optim.SGD, spec, lr=0.1, momentum=0.9,
                       seed=0, compile=compile, total_steps=steps)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    opt.check()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("spec", [
    presets.sam(), presets.asam(), presets.frob_sam(),
    SharpnessSpec.coerce({**presets.det_sam().to_dict(), "guard": 0.5}),
])
def test_the_compiled_step_makes_the_eager_updates(spec) -> None:
    """Same updates within 1e-6 relative (inductor may reorder float32 sums)."""
    torch._dynamo.reset()
    eager, compiled = _run(spec, False), _run(spec, True)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_a_member_whose_weights_vary_compiles_once() -> None:
    """Frob-SAM's weights are device tensors: every step runs the same graph, unbroken."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    _run(presets.frob_sam(), True, steps=6)
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])   # whole graphs
