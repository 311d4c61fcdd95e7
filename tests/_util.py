"""Shared test helpers: small models, recording closures, Monte-Carlo tolerances, and tiny
studies (their files, the CLI, waiting for their trials)."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn


class Quadratic(nn.Module):
    """L(x) = ½ (x − c)ᵀ H (x − c): exact Hessian H."""

    def __init__(self, h: Tensor, x0: Tensor | None = None, center: Tensor | None = None):
        super().__init__()
        d = h.shape[0]
        self.register_buffer("h", h.clone())
        self.register_buffer("center", torch.zeros(d, dtype=h.dtype) if center is None
                             else center.clone())
        self.x = nn.Parameter(torch.zeros(d, dtype=h.dtype) if x0 is None else x0.clone())

    def forward(self) -> Tensor:
        z = self.x - self.center
        return 0.5 * z @ self.h @ z


def random_spd(d: int, low: float, high: float, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(low, high, d, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T


def tiny_mlp(dtype: torch.dtype = torch.float64, seed: int = 0, width: int = 4,
             inputs: int = 2, outputs: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, outputs)).to(dtype)


class Recorder:
    """A closure over ``loss_fn`` that records the parameters at every call."""

    def __init__(self, params: list[Tensor], loss_fn: Callable[[], Tensor]):
        self.params = params
        self.loss_fn = loss_fn
        self.points: list[list[Tensor]] = []

    def __call__(self) -> Tensor:
        self.points.append([p.detach().clone() for p in self.params])
        for p in self.params:
            p.grad = None
        loss = self.loss_fn()
        loss.backward()
        return loss

    def perturbations(self) -> list[list[Tensor]]:
        """e_i = x_i − x_0 for the perturbed calls of the last step."""
        x0 = self.points[0]
        return [[pi - p0 for pi, p0 in zip(point, x0)] for point in self.points[1:]]


def assert_within_stderr(estimate: float, stderr: float, target: float, *, sigmas: float = 4.0,
                         max_relative_stderr: float = 0.05) -> None:
    """The estimate agrees with the target within ``sigmas`` standard errors, and the standard
    error is small enough for the comparison to mean something."""
    assert math.isfinite(estimate) and math.isfinite(stderr)
    assert stderr <= max_relative_stderr * abs(target), (
        f"standard error {stderr:.3g} too large against target {target:.6g}")
    assert abs(estimate - target) <= sigmas * stderr, (
        f"estimate {estimate:.6g} ± {stderr:.3g} is {abs(estimate - target) / stderr:.1f} "
        f"standard errors from {target:.6g}")


def mean_and_stderr(values: list[float] | Tensor) -> tuple[float, float]:
    t = torch.as_tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True) / math.sqrt(t.numel()))


# --- tiny studies -----------------------------------------------------------------------------

SPACE = {
    "presets": ["sgd", "sam"],
    "search": {
        "measure": {"kinds": ["gaussian", "ascent"], "adaptive": [False]},
        "phi": {"polynomial": {"outputs": [1, 2], "degree": [1, 2],
                               "coefficients": [0.1, 1.0]}},
        "psi": ["identity", "sum", "variance"],
        "rho": [0.01, 0.2], "lam": [0.01, 0.5], "n": [1, 2],
    },
}


def write_study(folder: Path, name: str = "tiny", trials: int = 6, epochs: int = 3,
                space: dict | None = None, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(space or SPACE))
    study = {"name": name, "search_space": "space.yaml",
             "train": {"dataset": "digits", "model": "mlp", "epochs": epochs, "lr": 0.05,
                       "batch_size": 32},
             "metric": "val_acc", "trials": trials, "concurrency": extra.pop("concurrency", 2),
             "resources": {"cpu": 1, "gpu": 0},
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
             "sampler": {"type": "tpe", "startup_trials": 3},
             "heartbeat": {"interval": 1, "grace": 4},
             "race": extra.pop("race", False), **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def metasam_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metasam", *args]


def assert_complete_and_unique(config):
    from metasam.tuning.storage import census, load_study

    study = load_study(config.storage, config.name)
    state = census(study)
    assert state.finished == config.trials
    assert state.running == 0 and state.waiting == 0
    keys = Counter()
    for t in state.counted:
        keys[(t.user_attrs.get("label"), t.user_attrs.get("spec"), t.user_attrs.get("train"))] += 1
    assert max(keys.values()) == 1, "a configuration ran twice"
    return state


# Deadlines, not waits: each test polls for the event it needs and returns as soon as it
# happens; the deadline only bounds a hang. Generous, because CI shares a 2-core machine with
# Ray's own processes and a study's trials can take minutes there.
DEADLINE_EVENT = 240     # s: until a running study has finished a few trials
DEADLINE_PROCESS = 400   # s: until a `metasam tune` process has finished a whole tiny study


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; ``timeout`` is a generous deadline (a shared 2-core
    machine can be slow), never a fixed wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def finished_trials(config) -> int:
    from metasam.tuning.storage import StudyNotFoundError, census, load_study

    try:
        return census(load_study(config.storage, config.name)).finished
    except StudyNotFoundError:
        return 0




# --- the by-hand cluster recipe (docs/cluster.md) ---------------------------------------------

def by_hand_recipe() -> list[list[str]]:
    """The commands of docs/cluster.md's by-hand recipe, split into words (comments dropped)."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    block = text.split("<!-- by-hand -->", 1)[1].split("<!-- /by-hand -->", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return [shlex.split(line) for line in lines
            if line and not line.startswith(("#", "```"))]
