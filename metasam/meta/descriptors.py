"""Task descriptors: cheap numbers, computed once per study, that say which prior tasks a new
task resembles.

Size and shape (training examples, classes, input size, model parameters), a label-noise /
limited-data signal (the train−validation accuracy gap of plain SGD after a short run: noisy
labels are memorized, so the gap opens), the gradient-noise scale at initialization
(B_simple = tr Σ / ‖g‖², from per-batch gradients: how much one batch's gradient says about the
full one) and tr H, ‖H‖_F² at initialization (:mod:`metasam.sharpness`). Deterministic for a
seed on CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

FEATURES = ("log_examples", "classes", "log_input", "log_params", "gap", "log_noise_scale",
            "log_trace", "log_frob")


@dataclass(frozen=True)
class TaskDescriptor:
    examples: int
    classes: int
    input_size: int
    params: int
    gap: float           # SGD train − validation accuracy after the short run
    noise_scale: float   # gradient-noise scale at initialization
    trace: float         # tr H at initialization
    frob: float          # ‖H‖_F² at initialization

    def vector(self) -> list[float]:
        """The features compared between tasks (logs of the scale-like ones)."""
        return [math.log(self.examples), float(self.classes), math.log(self.input_size),
                math.log(self.params), self.gap, math.log(max(self.noise_scale, 1e-12)),
                math.log(max(abs(self.trace), 1e-12)), math.log(max(self.frob, 1e-12))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskDescriptor:
        return cls(**data)


def describe_task(train: Any, *, seed: int = 0, epochs: int = 2, batches: int = 8,
                  examples: int = 512, probes: int = 10) -> TaskDescriptor:
    """The descriptor of the task a :class:`~metasam.training.TrainConfig` trains on (its data
    and model), from ``epochs`` of plain SGD and measurements at initialization."""
    from metasam.sharpness import estimate, evaluation_batches
    from metasam.training import Trial

    config = train.replace(preset="sgd", spec=None, epochs=epochs, seed=seed, test="none",
                           checkpoint_dir=None, sharpness_every=0)
    trial = Trial(config)
    data = trial.splits.train
    model = trial.model
    fixed = evaluation_batches(data, examples, 128, trial.device)
    hessian = estimate(model, F.cross_entropy, fixed, ["trace", "frob"], probes=probes,
                       seed=seed)
    noise = _noise_scale(model, data, trial.device, config.batch_size, batches, seed)
    for _ in range(epochs):
        metrics = trial.train_epoch()
    val = trial.evaluate(trial.splits.val) if trial.splits.val is not None else None
    gap = metrics["train_acc"] - (val["acc"] if val is not None else metrics["train_acc"])
    return TaskDescriptor(examples=len(data), classes=data.num_classes,
                          input_size=math.prod(data.input_shape),
                          params=sum(p.numel() for p in model.parameters()),
                          gap=float(gap), noise_scale=noise,
                          trace=hessian["trace"].value, frob=hessian["frob"].value)


def _noise_scale(model: torch.nn.Module, data: Any, device: torch.device, batch_size: int,
                 count: int, seed: int) -> float:
    """B_simple = tr Σ / ‖g‖² with Σ the per-example gradient covariance, estimated from
    ``count`` random batches: E‖g_B − g‖² = tr Σ / B."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    was_training = model.training
    model.eval()  # no BatchNorm statistics touched, no dropout
    for _ in range(count):
        index = torch.randperm(len(data), generator=gen)[:batch_size]
        x = data.normalize(data.x[index]).to(device)
        loss = F.cross_entropy(model(x), data.y[index].to(device))
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            loss, [p for p in model.parameters() if p.requires_grad])]).double())
    model.train(was_training)
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    spread = ((stacked - mean) ** 2).sum(1).mean() * count / max(1, count - 1)
    return float(batch_size * spread / mean.pow(2).sum().clamp_min(1e-30))
