"""A sharpness bias learned within one run: the family's parameters θ (λ, φ's and ψ's
coefficients) adapted online by hypergradient descent on the run's own validation split.

Every ``every`` steps the learner takes a validation batch (the trial's validation split,
never the test set), computes ∇L_val at the current weights (one forward and backward pass,
evaluation mode) and hands it to the optimizer as its probe direction; the step then records
⟨∇L_val, g0⟩, ⟨∇L_val, g_i⟩ and D_i, from which :func:`metasam.family.hypergradient.hypergradient`
gives ∂L_val/∂θ for that step. θ moves by Adam (λ in log space, so it stays positive and moves
by ratios; the others as they are) and is projected back into the penalty set
(:func:`~metasam.family.hypergradient.project`): every member visited is a penalty. The
optimizer trains with the new member from the next step on; the run ends with an ordinary spec
(``learner.spec``), which ``load_optimizer`` and ``explain`` take as any other.

    learn: {params: [lam, phi, psi], every: 4, lr: 0.05, val_batch: 128}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasam import _config
from metasam.errors import ConfigError
from metasam.family.hypergradient import hypergradient, parameters, project
from metasam.family.spec import SharpnessSpec

GROUPS = ("lam", "phi", "psi")


@dataclass(frozen=True)
class LearnSettings:
    """``learn: {params, every, lr, val_batch}`` of a training config."""

    params: tuple[str, ...] = _config.option(("lam", "phi", "psi"),
                                             _config.one_or_more(GROUPS, "parameter groups"),
                                             "which of θ adapt: lam, phi, psi")
    every: int = _config.option(4, _config.integer(1), "steps between hypergradient steps "
                                "(each costs a validation pass of val_batch examples)")
    lr: float = _config.option(0.05, _config.number(0.0, low_open=True),
                               "Adam's step size on θ (λ in log space)")
    val_batch: int = _config.option(128, _config.integer(1),
                                    "validation examples per hypergradient")

    def __post_init__(self) -> None:
        _config.validate(self)

    @classmethod
    def of(cls, data: Any) -> LearnSettings:
        """From a mapping, or its JSON text (``train --learn '{"every": 4}'``)."""
        if isinstance(data, str):
            import json

            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise ConfigError("learn", f"not JSON ({err})",
                                  '{"params": ["lam", "phi", "psi"], "every": K, ...}') from None
        return _config.section(cls, "{params: [lam, phi, psi], every: K, lr: A, val_batch: B}"
                               )("learn", data)

    def to_dict(self) -> dict[str, Any]:
        return {"params": list(self.params), "every": self.every, "lr": self.lr,
                "val_batch": self.val_batch}


def learnable(spec: SharpnessSpec, groups: tuple[str, ...]) -> list[str]:
    """θ's names in ``groups`` that move the step (a constant term of φ does not: φ' ignores
    it)."""
    names = []
    for name in parameters(spec):
        group = name.split("[")[0].split(".")[0]
        if group in groups and not name.endswith("].c0"):
            names.append(name)
    return names


@dataclass
class BiasLearner:
    """Adapts the optimizer's member during one run (see the module docstring)."""

    optimizer: Any                    # a UniversalSAM
    model: nn.Module
    val_x: Tensor
    val_y: Tensor
    settings: LearnSettings
    seed: int = 0
    steps: int = 0
    val_passes: int = 0               # validation forward/backward passes made
    hyper_steps: int = 0
    moved: float = 0.0                # the mean fraction of the proposed moves taken
    _m: dict[str, float] = field(default_factory=dict)
    _v: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.optimizer.spec
        if spec.vary is not None or spec.schedule is not None:
            raise ConfigError("learn", "a learned bias starts from a fixed member",
                              "a spec without vary and schedule")
        if spec.is_plain:
            raise ConfigError("learn", "the spec has no sharpness term to learn", "lam > 0")
        self.names = learnable(spec, self.settings.params)
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def spec(self) -> SharpnessSpec:
        return self.optimizer.spec

    def before_step(self) -> None:
        """On a hypergradient step: the validation gradient at the current weights becomes the
        optimizer's probe direction."""
        self.steps += 1
        if (self.steps - 1) % self.settings.every:
            self.optimizer.hyper_probe = None
            return
        n = self.val_y.shape[0]
        index = torch.randperm(n, generator=self._generator)[:self.settings.val_batch]
        index = index.to(self.val_y.device)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                loss = F.cross_entropy(self.model(self.val_x[index]), self.val_y[index])
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            self.model.train(training)
        self.optimizer.hyper_probe = [torch.zeros_like(p) if g is None else g.detach()
                                      for p, g in zip(params, grads, strict=True)]
        self.val_passes += 1

    def after_step(self) -> None:
        """The hypergradient of the step just taken, one Adam step on θ, the projection."""
        record = self.optimizer.last_probe
        self.optimizer.hyper_probe = None
        if record is None or not self.names:
            return
        spec = self.spec
        grads = hypergradient(spec, record.d, record.dots, record.dot0, record.lr, self.names)
        if not all(math.isfinite(g) for g in grads.values()):
            return
        values = parameters(spec)
        self.hyper_steps += 1
        t, lr, (b1, b2, eps) = self.hyper_steps, self.settings.lr, (0.9, 0.999, 1e-8)
        proposed = {}
        for name in self.names:
            g = grads[name] * values["lam"] if name == "lam" else grads[name]   # d/d log λ
            self._m[name] = b1 * self._m.get(name, 0.0) + (1 - b1) * g
            self._v[name] = b2 * self._v.get(name, 0.0) + (1 - b2) * g * g
            step = lr * (self._m[name] / (1 - b1**t)) / (math.sqrt(self._v[name] / (1 - b2**t))
                                                         + eps)
            proposed[name] = values[name] * math.exp(-step) if name == "lam" \
                else values[name] - step
        member, fraction = project(spec, proposed)
        self.moved += (fraction - self.moved) / self.hyper_steps
        if fraction > 0:
            self.optimizer.set_spec(member)

    def snapshot(self) -> dict[str, float]:
        """θ now, by name (for the per-epoch history)."""
        values = parameters(self.spec)
        return {name: values[name] for name in self.names}


def replayed(start: SharpnessSpec, history: list[dict[str, Any]]) -> SharpnessSpec:
    """The trajectory a run learned, as a schedule to train again with: the start member, with
    each learned parameter as ``vary`` phases — its value at the end of epoch e in effect from
    epoch e + 1 (progress e/E) on. Replayed on the whole pool it undoes the learning's data
    cost (the validation split it set aside) at one more run (docs/results.md).

        >>> from metasam import presets
        >>> history = [{"learned:lam": 1.5}, {"learned:lam": 2.0}, {"learned:lam": 2.5}]
        >>> spec = replayed(presets.get("sam"), history)
        >>> [spec.at(p).lam for p in (0.0, 0.34, 0.7, 1.0)]
        [1.0, 1.5, 2.0, 2.0]
    """
    epochs = len(history)
    keys = sorted({k for h in history for k in h if k.startswith("learned:")})
    if not keys or epochs < 2:
        return start
    start_values = parameters(start)
    data = start.to_dict()
    data.pop("name", None)
    vary: dict[str, Any] = {}
    for key in keys:
        name = key.split(":", 1)[1]
        if name != "lam":   # φ's and ψ's phases replace whole blocks: λ is what is replayed
            continue
        values = [start_values[name]] + [float(h[key]) for h in history[:-1]]
        vary[name] = {"phases": [[e / epochs, v] for e, v in enumerate(values)]}
        data[name] = values[-1]
    if not vary:
        return start
    data["vary"] = vary
    return SharpnessSpec.from_dict(data)
