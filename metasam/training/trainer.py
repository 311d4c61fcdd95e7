"""One training run — one trial of a study — as a plain function, independent of Ray."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metasam.data import DeviceLoader, Splits, prepare_splits
from metasam.data.arrays import ArrayData
from metasam.errors import ConfigError, NonFiniteStepError
from metasam.family.spec import SharpnessSpec
from metasam.models import build_model
from metasam.optim import UniversalSAM
from metasam.optim.bases import base_class, base_settings
from metasam.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from metasam.training.config import EXECUTION_FIELDS, TrainConfig

Report = Callable[[dict[str, Any]], "bool | None"]



@dataclass(frozen=True)
class _Step:
    """What one training step leaves for the epoch's metrics, on the device."""

    loss: Tensor
    hits: Tensor
    size: int
    applied: Tensor | None          # None: judged on the host and applied
    sharpness: Tensor | None
    guard: Tensor | None            # (factor, ‖sharpness part‖/‖g0‖)


def _epoch_sums(steps: list[_Step], device: torch.device) -> dict[str, Any]:
    """train_loss and train_acc over the applied steps, the mean sharpness and, with a guard,
    the median and largest share and how often the guard scaled: one host read."""
    out: dict[str, Any] = {"train_loss": math.nan, "train_acc": 0.0}
    if not steps:   # every step skipped (fp16 overflow without end, on_nonfinite="skip")
        return out
    true = torch.ones((), dtype=torch.bool, device=device)
    none = torch.full((2,), math.nan, dtype=torch.float64, device=device)  # a missing value
    applied = torch.stack([s.applied if s.applied is not None else true for s in steps]
                          ).to(torch.float64)
    sizes = torch.tensor([s.size for s in steps], dtype=torch.float64, device=device) * applied
    sums = torch.stack([(torch.stack([s.loss for s in steps]).double() * sizes).sum(),
                        (torch.stack([s.hits for s in steps]).double() * applied).sum(),
                        sizes.sum()])
    sharpness = torch.stack([none[0] if s.sharpness is None else s.sharpness.double()
                             for s in steps])
    guard = torch.stack([none if s.guard is None else s.guard.double() for s in steps])
    host = torch.cat([sums, applied, sharpness, guard.reshape(-1)]).tolist()
    n = len(steps)
    (loss_sum, hit_sum, seen), kept = host[:3], host[3:3 + n]
    values, pairs = host[3 + n:3 + 2 * n], host[3 + 2 * n:]
    if seen:
        out["train_loss"], out["train_acc"] = loss_sum / seen, hit_sum / seen
    chosen = [v for k, v in zip(kept, values, strict=True) if k and not math.isnan(v)]
    if chosen:
        out["sharpness"] = sum(chosen) / len(chosen)
    guards = [(pairs[2 * i], pairs[2 * i + 1]) for i, k in enumerate(kept)
              if k and not math.isnan(pairs[2 * i])]
    if guards:   # with a guard: ‖sharpness part‖/‖g0‖ and how often the guard scaled it
        shares = sorted(share for _, share in guards)
        out["sharpness_share_median"] = shares[len(shares) // 2]
        out["sharpness_share_max"] = shares[-1]
        out["guarded_steps"] = sum(1 for factor, _ in guards if factor < 1.0)
    return out


def resolve_device(name: str) -> torch.device:
    """The device of a (validated) ``TrainConfig.device`` name on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA device",
                          "cpu, auto, or a CUDA device on a machine that has one")
    return device


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayData, device: torch.device, batch_size: int,
             precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``data``."""
    was_training = model.training
    model.eval()
    loader = DeviceLoader(data, batch_size, device, shuffle=False, channels_last=channels_last)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for x, y in loader:
        with autocast(device, precision):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(data)
    return {"loss": float(total_loss) / n, "acc": float(correct) / n}


def splits_of(config: TrainConfig) -> Splits:
    """The train / validation / test splits a config describes."""
    return prepare_splits(
        config.dataset, data_dir=config.data_dir, download=config.download,
        subset=config.subset, subset_mode=config.subset_mode, subset_seed=config.subset_seed,
        label_noise=config.label_noise, noise_seed=config.noise_seed,
        val_fraction=config.val_fraction, val_seed=config.val_seed, val_fold=config.val_fold,
        val_folds=config.val_folds, holdout=config.holdout, holdout_seed=config.holdout_seed,
        val_scope=config.val_scope)


def precision_of(config: TrainConfig) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: the forward passes' autocast of a config."""
    return "bf16" if config.bf16 else "fp16" if config.fp16 else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` (``"fp32"``: none) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def base_of(config: TrainConfig) -> dict[str, Any]:
    """The base optimizer a config trains with, as ``{"name": ..., **arguments}``."""
    return base_settings(config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                         momentum=config.momentum, nesterov=config.nesterov)


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig
               ) -> torch.optim.lr_scheduler.LRScheduler:
    from metasam.optim.lr_schedules import build_lr_schedule

    return build_lr_schedule(optimizer, config.schedule, epochs=config.epochs,
                             milestones=config.resolved_milestones(), gamma=config.gamma)


class Trial:
    """The state of one run: data, model, optimizer, schedule, loader and history.

    :func:`train` drives it; it is a class so that callers (Ray Tune, the benchmarks) can build
    the pieces once and inspect them.
    """

    def __init__(self, config: TrainConfig, splits: Splits | None = None) -> None:
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.splits = splits or splits_of(config)
        train_data = self.splits.train
        self.model = build_model(config.model, train_data.input_shape,
                                 train_data.num_classes).to(self.device)
        self.channels_last = config.channels_last and self.device.type == "cuda" and \
            len(train_data.input_shape) == 3
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        compiled = config.compile in ("model", "all")
        self.forward: nn.Module = torch.compile(self.model) if compiled else self.model
        spec = config.resolved_spec()
        self.loader = DeviceLoader(train_data, config.batch_size, self.device, shuffle=True,
                                   augment=config.resolved_augment(), seed=config.seed + 1,
                                   channels_last=self.channels_last)
        base, kwargs = base_class(base_of(config))
        if self.device.type == "cuda":
            # a fused base skips a non-finite step in its own kernel (torch's found_inf): no
            # copy of the weights and state per step (metasam.optim.finiteness)
            kwargs["fused"] = True
        self.precision = precision_of(config)
        scaler = torch.amp.GradScaler(self.device.type) if config.fp16 else None
        self.optimizer = UniversalSAM(
            self.model.parameters(), base, spec, model=self.model, bn_stats=config.bn_stats,
            seed=config.seed, max_grad_norm=config.max_grad_norm,
            on_nonfinite=config.on_nonfinite, scaler=scaler,
            total_steps=config.epochs * len(self.loader),
            compile=config.compile in ("step", "all"), **kwargs)
        self.scheduler = _scheduler(self.optimizer, config)
        self.learner = self._learner(config)
        self.epoch = 0
        self.grad_evals = 0
        self.elapsed = 0.0
        self.history: list[dict[str, Any]] = []

    @property
    def spec(self) -> SharpnessSpec:
        """The member the optimizer trains; assigning one is ``optimizer.set_spec``."""
        return self.optimizer.spec

    @spec.setter
    def spec(self, spec: SharpnessSpec | Any) -> None:
        self.optimizer.set_spec(spec)

    def _learner(self, config: TrainConfig) -> Any:
        """The bias learner of ``learn`` (None without): on the validation split only."""
        if config.learn is None:
            return None
        from metasam.training.learned import BiasLearner, LearnSettings

        val = self.splits.val
        if val is None or len(val) == 0:
            raise ConfigError("learn", "needs a validation split to learn on",
                              "val_fraction > 0 (never the test set)")
        if config.optimizer != "sgd" or config.fp16:
            raise ConfigError("learn", "the one-step hypergradient assumes an SGD step in fp32 "
                              "or bf16", "optimizer: sgd, without fp16")
        x = val.normalize(val.x).to(self.device)
        return BiasLearner(self.optimizer, self.forward, x, val.y.to(self.device),
                           LearnSettings.of(config.learn), seed=config.seed + 7)

    # --- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "epoch": self.epoch,
                "grad_evals": self.grad_evals, "elapsed": self.elapsed,
                "history": self.history, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "loader": self.loader.state_dict(),
                "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint", *,
                        new_spec: bool = False) -> None:
        """Restore a run's whole state (weights, optimizer and scheduler state, loader position,
        RNGs, history). The checkpoint must come from the same config; with ``new_spec`` its
        spec may differ (a population member continuing another's state with new parameters:
        the same member's structure, its parameters varying from here on)."""
        saved = state["config"]
        allowed = EXECUTION_FIELDS | ({"spec", "preset"} if new_spec else set())
        for key, value in self.config.to_dict().items():
            if key not in allowed and saved.get(key) != value:
                raise ConfigError(key, f"made with {key}={saved.get(key)!r}, this run has "
                                  f"{key}={value!r}", "another checkpoint_dir or the same "
                                  "config", source)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.grad_evals = state["grad_evals"]
        self.elapsed = state["elapsed"]
        self.history = list(state["history"])

    def save(self) -> None:
        path = self.config.checkpoint_path()
        if path is not None:
            save_checkpoint(path, self.state_dict())

    def try_resume(self) -> bool:
        path = self.config.checkpoint_path()
        if path is None or not self.config.resume or not path.is_file():
            return False
        self.load_state_dict(load_checkpoint(path), source=str(path))
        return True

    # --- one epoch --------------------------------------------------------------------------

    def _refresh_fisher_mask(self) -> None:
        measure = self.spec.measure
        if measure.kind != "sparse_ascent" or self.spec.is_plain:
            return
        if self.epoch % measure.refresh_epochs:
            return
        data = self.splits.train
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch)
        index = torch.randperm(len(data), generator=gen)[:measure.fisher_samples]
        x = data.normalize(data.x[index]).to(self.device)
        self.optimizer.update_fisher_mask(self.model, F.cross_entropy, x,
                                          data.y[index].to(self.device))

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training set; raises NonFiniteStepError on a non-finite step (at
        the latest when the epoch ends: the steps' verdicts are read then, see
        :mod:`metasam.optim.finiteness`).

        Per step the loop adds only the accuracy's three operators to the optimizer's; the
        losses, hits and sharpness values stay on the device and are summed once per epoch,
        with one host read."""
        self._refresh_fisher_mask()
        self.model.train()
        device, precision = self.device, self.precision
        steps: list[_Step] = []
        skipped_before = self.optimizer.skipped_steps
        lr = self.optimizer.param_groups[0]["lr"]
        for x, y in self.loader:
            hits: list[Tensor] = []

            def closure(x: Tensor = x, y: Tensor = y, out: list[Tensor] = hits) -> Tensor:
                # the optimizer sets every gradient to None before each pass
                with autocast(device, precision):
                    logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y)
                self.optimizer.backward(loss)  # scaled under fp16
                if not out:
                    out.append((logits.argmax(1) == y).sum())
                return loss

            passes_before = self.optimizer.grad_evals
            if self.learner is not None:
                self.learner.before_step()
            try:
                loss = self.optimizer.step(closure)
            finally:  # the passes a step really made, a failed one's included
                self.grad_evals += self.optimizer.grad_evals - passes_before
            if self.learner is not None:
                self.learner.after_step()
            info = self.optimizer.last_step
            if info is None or info.step != self.optimizer.steps or info.skipped_on_host:
                continue
            steps.append(_Step(loss, hits[0], y.shape[0], info.applied,
                               info.tensors.get("sharpness"), info.tensors.get("guard")))
        self.optimizer.check()
        self.scheduler.step()
        self.epoch += 1
        metrics: dict[str, Any] = {"epoch": self.epoch, **_epoch_sums(steps, device),
                                   "skipped_steps": self.optimizer.skipped_steps -
                                   skipped_before, "lr": lr}
        if self.learner is not None:   # θ at the end of the epoch, and what it cost
            metrics.update({f"learned:{k}": v for k, v in self.learner.snapshot().items()})
            metrics["learned_spec"] = json.dumps(self.optimizer.spec.to_dict())
            extra = self.learner.val_passes * self.config.learn["val_batch"] / \
                self.config.batch_size
            metrics["learn_grad_evals"] = extra
        return metrics

    def hessian_metrics(self) -> dict[str, float]:
        """The configured Hessian measures on the first training examples (fixed, un-augmented,
        eval mode), as ``hessian_NAME`` and ``hessian_NAME_se``."""
        from metasam.sharpness import estimate, evaluation_batches

        config = self.config
        batches = evaluation_batches(self.splits.train, config.sharpness_examples, 256,
                                     self.device)
        results = estimate(self.model, F.cross_entropy, batches, config.sharpness_measures,
                           probes=config.sharpness_probes, seed=config.seed + self.epoch,
                           lanczos_steps=20)
        out: dict[str, float] = {}
        for name, est in results.items():
            out[f"hessian_{name}"] = est.value
            out[f"hessian_{name}_se"] = est.stderr
        return out

    def evaluate(self, data: ArrayData) -> dict[str, float]:
        return evaluate(self.forward, data, self.device, self.config.eval_batch_size,
                        self.precision, self.channels_last)


def train(config: TrainConfig | dict[str, Any] | str, report: Report | None = None,
          ready: Callable[[Trial], None] | None = None) -> dict[str, Any]:
    """Run one training run and return its final metrics.

    ``ready(trial)`` is called once the data are loaded, the model built and a checkpoint (if
    any) restored, before the first epoch (``trial.epoch`` is where the run resumes).

    ``report(metrics)`` is called after every epoch with ``epoch``, ``train_loss``,
    ``train_acc``, ``val_loss``, ``val_acc`` (``test_*`` when ``test="epoch"``), ``lr``,
    ``grad_evals`` (forward/backward passes so far), ``steps`` and ``wall_time`` (seconds); a
    truthy return value stops the run early (status ``"stopped"``).

    The result holds the last epoch's metrics plus ``status`` (``completed``, ``diverged``,
    ``stopped``), ``reason``, ``best_val_acc``, ``best_epoch``, ``test_*`` (with ``test="final"``),
    ``passes_per_step``, ``spec`` and ``history``.

    Example::

        >>> from metasam.training import train
        >>> result = train({"dataset": "digits", "preset": "sam", "epochs": 2})
        >>> result["status"]
        'completed'
    """
    config = TrainConfig.coerce(config)
    trial = Trial(config)
    resumed = trial.try_resume()
    if ready is not None:
        ready(trial)
    status, reason = run_epochs(trial, config.epochs, report)
    return _summary(trial, status, reason, resumed)


def run_epochs(trial: Trial, until: int, report: Report | None = None
               ) -> tuple[str, str | None]:
    """Train ``trial`` epoch by epoch up to epoch ``until`` (evaluating, checkpointing and
    reporting as :func:`train` describes); returns (status, reason)."""
    config = trial.config
    status, reason = "completed", None
    while trial.epoch < until:
        start = time.perf_counter()
        try:
            metrics = trial.train_epoch()
        except NonFiniteStepError as err:
            status, reason = "diverged", str(err)
            trial.elapsed += time.perf_counter() - start
            break
        if not math.isfinite(metrics["train_loss"]):
            status, reason = "diverged", f"non-finite training loss in epoch {trial.epoch}"
        if trial.splits.val is not None:
            metrics.update({f"val_{k}": v for k, v in trial.evaluate(trial.splits.val).items()})
        if config.test == "epoch":
            metrics.update({f"test_{k}": v for k, v in trial.evaluate(trial.splits.test).items()})
        if config.sharpness_every and trial.epoch % config.sharpness_every == 0:
            metrics.update(trial.hessian_metrics())
        trial.elapsed += time.perf_counter() - start
        metrics.update(grad_evals=trial.grad_evals, steps=trial.optimizer.steps,
                       wall_time=trial.elapsed)
        trial.history.append(metrics)
        last = trial.epoch == config.epochs
        every = config.checkpoint_every
        if config.checkpoint_dir and ((every and trial.epoch % every == 0) or last):
            trial.save()
        if status != "completed":
            break
        if report is not None and report(dict(metrics)) and not last:
            status, reason = "stopped", f"stopped by the caller after epoch {trial.epoch}"
            break
    return status, reason


def _summary(trial: Trial, status: str, reason: str | None, resumed: bool) -> dict[str, Any]:
    config = trial.config
    result: dict[str, Any] = dict(trial.history[-1]) if trial.history else {"epoch": trial.epoch}
    result.update(status=status, reason=reason, resumed=resumed, epochs=trial.epoch,
                  passes_per_step=trial.spec.passes, spec=trial.spec.to_dict(),
                  data=trial.splits.description, wall_time=trial.elapsed)
    with_val = [h for h in trial.history if "val_acc" in h]
    if with_val:
        best = max(with_val, key=lambda h: h["val_acc"])
        result.update(best_val_acc=best["val_acc"], best_epoch=best["epoch"])
    if config.test == "final" and status != "diverged":
        result.update({f"test_{k}": v for k, v in trial.evaluate(trial.splits.test).items()})
    result["history"] = trial.history
    return result


def load_trained(checkpoint: str | Path, data_dir: str | None = None, device: str = "auto"
                 ) -> tuple[nn.Module, Splits, TrainConfig]:
    """The model of a training checkpoint (eval mode), its data splits and its config."""
    state = load_checkpoint(Path(checkpoint))
    changes: dict[str, Any] = {"device": device, "checkpoint_dir": None}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    config = TrainConfig.from_dict({**state["config"], **changes}, source=str(checkpoint))
    target = resolve_device(config.device)
    splits = splits_of(config)
    model = build_model(config.model, splits.train.input_shape, splits.train.num_classes)
    model.load_state_dict(state["model"])
    return model.to(target).eval(), splits, config
