"""UniversalSAM: SAM-train against any member of the (φ, ψ, μ) sharpness family."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metasam.errors import NonFiniteStepError
from metasam.family.spec import SharpnessSpec, scalar_dtype
from metasam.optim import kernels
from metasam.optim.batchnorm import RunningStatsGuard
from metasam.optim.distributed import AUTO, Sync, local_module
from metasam.optim.fisher import fisher_scores, top_fraction_mask
from metasam.optim.hooks import base_step, hooked
from metasam.optim.kernels import combine_gradients, grad_or_zero, norms, per_device, total_norm
from metasam.optim.perturbations import PerturbationSampler
from metasam.optim.verdicts import Record, Rollback, StepInfo, Verdicts, culprit, ids, skipped_info

BN_MODES = ("freeze", "official")
NONFINITE_MODES = ("raise", "skip")


class Check(NamedTuple):
    """A value a pass produced that must be finite, and what to call it if it is not."""

    pass_name: str   # "unperturbed pass", "perturbation 2 of 4", "sharpness surrogate"
    what: str        # "loss", "gradient", ...
    value: Tensor


@dataclass
class _FirstPass:
    """What the unperturbed pass leaves for the rest of the step."""

    loss: Tensor
    params: list[Tensor]            # every parameter with a gradient
    perturbed: list[Tensor]         # those of groups with ``perturb=True``
    perturbed_norms: list[Tensor]   # ‖g0‖ per perturbed parameter
    per_tensor: list[Tensor]        # ‖g0‖ per parameter
    # [loss, ‖g0‖ per parameter] stacked, when all live on the loss's device: a plain step's
    # values to check, without computing the global norm unless it is needed
    parts: Tensor | None
    _grad_norm: Tensor | None = None
    _checks: list[Check] | None = None

    @property
    def grad_norm(self) -> Tensor:
        """‖g0‖ over every parameter (float64; scaled under fp16), computed once when asked."""
        if self._grad_norm is None:
            if self.parts is not None:
                self._grad_norm = torch.linalg.vector_norm(self.parts[1:], dtype=torch.float64)
            else:
                self._grad_norm = total_norm(self.per_tensor, self.loss.device)
        return self._grad_norm

    @property
    def checks(self) -> list[Check]:
        """Every value of the step to check for finiteness so far (the passes append theirs)."""
        if self._checks is None:
            self._checks = [Check("unperturbed pass", "loss", self.loss),
                            Check("unperturbed pass", "gradient", self.grad_norm)]
        return self._checks

    @property
    def loss_check(self) -> list[Check]:
        """The check of the loss alone (a plain step checks the gradient's norm at the end)."""
        return [Check("unperturbed pass", "loss", self.loss)]


@dataclass
class _Probes:
    """What the perturbed passes leave: their losses and the gradients kept for combining."""

    raw_mode: bool
    losses: list[Tensor] = field(default_factory=list)
    raw: list[list[Tensor]] = field(default_factory=list)
    acc: list[list[Tensor]] = field(default_factory=list)
    last_grad_norm: Tensor | None = None   # ‖g_n‖, of the last perturbed pass
    dots: list[Tensor] = field(default_factory=list)   # ⟨v, g_i⟩ with the hyper probe v


@dataclass(frozen=True)
class ProbeRecord:
    """What a step tells a hypergradient (:mod:`metasam.family.hypergradient`): ⟨v, g0⟩ and
    ⟨v, g_i⟩ for the probe direction v (``UniversalSAM.hyper_probe``), the loss differences
    D_i, and the learning rate of the base step (its first group's)."""

    dot0: float
    dots: Tensor
    d: Tensor
    lr: float


class UniversalSAM(torch.optim.Optimizer):
    r"""Sharpness-aware training with any (φ, ψ, μ) sharpness measure (docs/family.md §2).

    Each :meth:`step` calls ``closure`` once at the current weights x and once at each
    x + ρv_i, i = 1..n, then steps the base optimizer with

    .. math:: g_0 + \frac{\lambda}{n}\sum_i w_i\,(g_i - g_0),\qquad
              w_i = \sum_j \partial_j\psi(A)\,\varphi_j'(D_i),\quad
              D_i = \frac{L(x+\rho v_i) - L(x)}{\rho^2},

    the gradient of L + λ·ρ²·ψ((1/n)Σφ(D_i)) with the v_i held fixed. The base optimizer shares
    ``param_groups`` with this wrapper, so learning-rate schedulers work as usual.

    Args:
        params: parameters or parameter groups. A group with ``"perturb": False`` is never
            perturbed (its gradient still follows the formula above).
        base_optimizer: an optimizer *class*, e.g. ``torch.optim.SGD``.
        spec: a :class:`~metasam.SharpnessSpec`, a preset name (``"frob_sam"``), a dict or a
            JSON file.
        model: the model, used to keep normalization layers' running statistics out of the
            perturbed passes; without it a global module hook does the same.
        bn_stats: ``"freeze"`` (default: only the unperturbed pass updates BatchNorm running
            statistics) or ``"official"`` (every pass does, as the official code).
        seed: seed of the perturbation generators (default: drawn from torch's global RNG).
        max_grad_norm: clip the combined gradient to this global norm before the base step.
        on_nonfinite: ``"raise"`` (default) a :class:`~metasam.errors.NonFiniteStepError` naming
            the pass, or ``"skip"`` the step; either way the weights stay as before the step.
            The error surfaces when the step's verdict is read (see *Host reads* below).
        process_group: the data-parallel group the ranks agree over (see below): ``"auto"``
            (default) the default group when ``torch.distributed`` is initialized with more than
            one rank, ``None`` never synchronize, or a process group.
        scaler: a ``torch.amp.GradScaler`` for fp16 mixed precision (see below).
        total_steps: the number of steps training will take; needed by a spec whose
            ``schedule`` starts the sharpness term after a fraction of training, or whose
            parameters ``vary`` over training (step k, from 0, is at progress k/total_steps).
        strict: judge every step on the host before its base step (one device→host read per
            step; the error of a non-finite step raised by the step itself).
        compile: run the step's device arithmetic — the ascent direction, and the combine,
            guard and norm after the passes — through ``torch.compile`` (fused kernels; the
            passes are the closure's, compile the model for those). The first steps compile.
        **base_kwargs: arguments of the base optimizer (``lr``, ``momentum``, ...).

    Example::

        model = torchvision.models.resnet18(num_classes=10)
        optimizer = UniversalSAM(model.parameters(), torch.optim.SGD, "frob_sam",
                                 model=model, lr=0.1, momentum=0.9, weight_decay=5e-4)
        for inputs, targets in loader:
            def closure():
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                return loss
            loss = optimizer.step(closure)

    The closure must do one forward and backward pass on the *same* batch each time it is called
    (use the same augmentation draw); for bf16 autocast, run the forward inside the closure under
    ``torch.autocast``. A closure may accumulate several micro-batches (see
    :func:`~metasam.optim.accumulating_closure`).

    **fp16 with a GradScaler.** Pass ``scaler=torch.amp.GradScaler(device_type)``, run the
    forward under ``torch.autocast(device_type, dtype=torch.float16)`` and call
    ``optimizer.backward(loss)`` (the scaled backward) in the closure, returning the *unscaled*
    loss. Every one of the 1 + n passes is scaled by the same factor, so the loss differences
    D_i come from unscaled losses and the combined gradient is unscaled once; when any pass
    overflows (a non-finite loss or gradient) the step is skipped with the weights and the base
    optimizer's state untouched, and the scaler backs off. The optimizer calls the scaler's
    ``unscale_`` and ``update`` itself, once per step: do not call ``scaler.step`` or
    ``scaler.update``. The scaler's state is part of :meth:`state_dict`. With a scaler, a
    non-finite pass always skips the step (``on_nonfinite`` is not consulted), as
    ``GradScaler.step`` does.

    For SSAM (``sparse_ascent``) call :meth:`update_fisher_mask` before the first step and on
    its schedule.

    **Host reads.** A steady-state step reads nothing back from the device: its finiteness is
    judged on the device, where a non-finite step is undone (weights, the base optimizer's
    state; :mod:`metasam.optim.verdicts`). The verdicts are read together — by
    :meth:`check`, by reading a :attr:`last_step` field, ``skipped_steps`` or
    :meth:`state_dict`, and every 1024 steps — and a :class:`~metasam.errors.NonFiniteStepError`
    surfaces then, naming the failed step; no step after it was applied. Judged on the host,
    one read each: the first step (and one that creates optimizer state), every step with
    ``strict=True``, and AE-SAM's trigger (it decides the passes). With a GradScaler the steps
    are judged on the device too (an overflow is a skipped step; the scaler backs off there).
    A fused base optimizer (``fused=True``) skips through torch's ``found_inf``; any other is
    undone from two copies of the weights and its state (for SGD with momentum, four times the
    weights' memory); ``strict=True`` needs neither.

    With ``DistributedDataParallel`` (construct the optimizer after ``init_process_group``),
    the gradients are averaged by DDP and the optimizer averages each pass's loss over the
    group, takes rank 0's perturbation seed (when ``seed`` is not given; a given seed must be
    the same on every rank) and sums SSAM's Fisher scores over the group (computed on the module
    inside the DDP wrapper): every rank makes the single-process step
    of the global batch, and the replicas stay identical. Each step costs 1 + n gradient
    all-reduces (one per pass) plus 1 + n scalar ones.
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer],
                 spec: SharpnessSpec | str | dict[str, Any] = "sam", *,
                 model: nn.Module | None = None, bn_stats: str = "freeze",
                 seed: int | None = None, max_grad_norm: float | None = None,
                 on_nonfinite: str = "raise", process_group: Any = AUTO,
                 scaler: torch.amp.GradScaler | None = None, total_steps: int | None = None,
                 strict: bool = False, compile: bool = False, **base_kwargs: Any) -> None:
        if not (isinstance(base_optimizer, type) and
                issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError("base_optimizer must be an optimizer class such as torch.optim.SGD, "
                            f"got {base_optimizer!r}")
        if bn_stats not in BN_MODES:
            raise ValueError(f"bn_stats: unknown value {bn_stats!r}; allowed: "
                             f"{', '.join(BN_MODES)}")
        if on_nonfinite not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite: unknown value {on_nonfinite!r}; allowed: "
                             f"{', '.join(NONFINITE_MODES)}")
        if max_grad_norm is not None and not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
            raise ValueError(f"max_grad_norm: must be a positive number, got {max_grad_norm!r}")
        self._spec = SharpnessSpec.coerce(spec)
        super().__init__(params, {"perturb": True})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._model = model
        self.bn_stats = bn_stats
        self.max_grad_norm = max_grad_norm
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {scaler!r}")
        self._on_nonfinite = on_nonfinite
        self.strict = bool(strict)
        self._kernels = CompiledKernels() if compile else kernels
        self._scaler = scaler
        self._verdicts = Verdicts(*self._verdict_policy())
        self._rollback = Rollback()
        self._state_key: tuple[int, ...] = ()   # the tensors the last step left (ids)
        if total_steps is not None and (isinstance(total_steps, bool) or
                                        not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps: expected a positive whole number, got "
                             f"{total_steps!r}")
        if self.spec.schedule is not None and self.spec.schedule.start > 0 and \
                total_steps is None:
            raise ValueError("total_steps: the spec's schedule starts the sharpness term at "
                             f"{self.spec.schedule.start:g} of training; allowed: "
                             "UniversalSAM(..., total_steps=epochs * steps_per_epoch)")
        if self.spec.vary is not None and total_steps is None:
            raise ValueError("total_steps: the spec's parameters vary over training "
                             f"({', '.join(self.spec.vary.names)}); allowed: "
                             "UniversalSAM(..., total_steps=epochs * steps_per_epoch)")
        self.total_steps = total_steps
        self._trigger_stats: tuple[float, float] | None = None  # EMA of ‖g0‖² and its variance
        self._unscaled = False
        self._sync = Sync.resolve(process_group)
        if seed is None:
            seed = self._sync.seed(int(torch.randint(0, 2**62, (1,)).item()))
        self._seed = int(seed)
        self.steps = 0
        # A direction v (one tensor per parameter, e.g. a validation gradient): each step with
        # a sharpness term then records ⟨v, g0⟩, ⟨v, g_i⟩ and D_i in ``last_probe``.
        self.hyper_probe: list[Tensor] | None = None
        self.last_probe: ProbeRecord | None = None
        self.grad_evals = 0  # forward/backward passes made by all steps so far
        self._step_passes = 0
        self.last_step: StepInfo | None = None
        self._sampler = PerturbationSampler(self._seed)
        self._constant_weights: dict[str, tuple[list[float], list[float]]] = {}
        self._active = self.spec   # the member this step makes (spec.at(progress) with vary)
        self._active_values: dict[str, Any] | None = None
        self._constants = self._host_coefficients(self.spec)
        self._bn_guard = RunningStatsGuard(model)
        self._x0: tuple[tuple[int, ...], list[Tensor]] = ((), [])   # the weights at x, kept

    # --- settings a step depends on: assigning one takes effect from the next step ---------

    @property
    def spec(self) -> SharpnessSpec:
        """The member trained; assigning one is :meth:`set_spec` (and refuses what it
        refuses)."""
        return self._spec

    @spec.setter
    def spec(self, spec: SharpnessSpec | Any) -> None:
        self.set_spec(spec)

    @property
    def seed(self) -> int:
        """The seed of the random measure's draws; assigning one restarts the draws from it."""
        return self._seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._seed = int(seed)
        self._sampler = PerturbationSampler(self._seed)

    @property
    def model(self) -> nn.Module | None:
        """The module whose batch-norm running statistics the perturbed passes keep
        (``bn_stats="freeze"``) and whose Fisher scores SSAM-F reads."""
        return self._model

    @model.setter
    def model(self, model: nn.Module | None) -> None:
        self._model = model
        self._bn_guard = RunningStatsGuard(model)

    @property
    def on_nonfinite(self) -> str:
        """``"raise"`` or ``"skip"``: what a step with a non-finite value does. Assigning one
        first reads the verdicts of the steps made under the policy in force."""
        return self._on_nonfinite

    @on_nonfinite.setter
    def on_nonfinite(self, mode: str) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite: unknown value {mode!r}; allowed: "
                             f"{', '.join(NONFINITE_MODES)}")
        self._verdicts.settle()
        self._on_nonfinite = mode
        self._verdicts.policy, self._verdicts.prefix = self._verdict_policy()

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler of fp16 training, or None; with one, a non-finite step is an
        overflow and skipped (as ``GradScaler.step`` does) whatever ``on_nonfinite`` says."""
        return self._scaler

    @scaler.setter
    def scaler(self, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {scaler!r}")
        self._verdicts.settle()
        self._scaler = scaler
        self._verdicts.policy, self._verdicts.prefix = self._verdict_policy()

    def _verdict_policy(self) -> tuple[str, str]:
        if self._scaler is not None:
            return "skip", "fp16 overflow (the loss scale backed off): "
        return self._on_nonfinite, ""

    # --- public helpers ---------------------------------------------------------------------

    def set_spec(self, spec: SharpnessSpec | Any) -> None:
        """Train with ``spec`` from the next step on: the same structure (measure, n, φ's and
        ψ's functions), other parameters — what a bias learned during the run changes
        (:mod:`metasam.training.learned`)."""
        spec = SharpnessSpec.coerce(spec)
        if (spec.n, spec.measure, spec.vary) != (self.spec.n, self.spec.measure, None):
            raise ValueError("set_spec: the new member must keep n and the measure, without "
                             "vary")
        self._spec = spec
        self._active = spec
        self._active_values = None
        self._constants = self._host_coefficients(spec)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("perturb", True)
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    def backward(self, loss: Tensor) -> Tensor:
        """``loss.backward()``, scaled by the optimizer's GradScaler when it has one; returns
        ``loss`` (unscaled), so a closure can end with ``return optimizer.backward(loss)``."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return loss

    @torch.no_grad()
    def update_fisher_mask(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                           inputs: Tensor, targets: Tensor) -> float:
        """Recompute SSAM-F's mask from per-example squared gradients on ``inputs``.

        The trainer passes ``spec.measure.fisher_samples`` random training examples every
        ``spec.measure.refresh_epochs`` epochs. In data-parallel training each rank passes its
        own examples and the scores are summed over the group.
        Returns the fraction of coordinates kept.
        """
        params = self._perturbable()
        scores = self._sync.sum_(fisher_scores(params, local_module(model), loss_fn, inputs,
                                               targets))
        masks = top_fraction_mask(scores, self.spec.measure.sparsity)
        for p, mask in zip(params, masks, strict=True):
            self.state[p]["fisher_mask"] = mask
        if not masks:
            return 0.0
        # one host read for the whole mask, not one per tensor
        kept = int(torch.stack([m.sum() for m in masks]).sum())
        return kept / max(1, sum(m.numel() for m in masks))

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus the generators, step counters and Fisher masks
        (the pending verdicts are read first)."""
        self._verdicts.settle()
        index = {id(p): i for i, p in enumerate(self._all_params())}
        masks = {index[id(p)]: s["fisher_mask"] for p, s in self.state.items()
                 if "fisher_mask" in s}
        generators = self._sampler.state_dict()
        reuse = {index[id(p)]: s["reuse"] for p, s in self.state.items() if "reuse" in s}
        own = {"seed": self.seed, "steps": self.steps, "skipped_steps": self.skipped_steps,
               "grad_evals": self.grad_evals, "generators": generators, "fisher_masks": masks,
               "reuse": reuse, "trigger_stats": self._trigger_stats}
        if self.scaler is not None:
            own["scaler"] = self.scaler.state_dict()
        return {"base": self.base_optimizer.state_dict(), "universal_sam": own}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "base" not in state_dict or "universal_sam" not in state_dict:
            raise ValueError("not a UniversalSAM state_dict (keys 'base' and 'universal_sam' "
                             "expected)")
        self._verdicts.pending.clear()
        self._rollback.forget()
        self._state_key = ()
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        own = state_dict["universal_sam"]
        self._seed = int(own["seed"])
        self.steps = int(own["steps"])
        self.skipped_steps = int(own.get("skipped_steps", 0))
        self.grad_evals = int(own.get("grad_evals", 0))
        self._sampler = PerturbationSampler(self._seed, own["generators"])
        params = self._all_params()
        for i, mask in own.get("fisher_masks", {}).items():
            p = params[int(i)]
            self.state[p]["fisher_mask"] = mask.to(p.device)
        for i, v in own.get("reuse", {}).items():
            p = params[int(i)]
            self.state[p]["reuse"] = v.to(p.device)
        stats = own.get("trigger_stats")
        self._trigger_stats = tuple(stats) if stats is not None else None  # type: ignore[assignment]
        if self.scaler is not None and own.get("scaler"):
            self.scaler.load_state_dict(own["scaler"])

    # --- the step ---------------------------------------------------------------------------

    def step(self, closure: Callable[[], Tensor | float] | None = None) -> Tensor:  # type: ignore[override]
        """One sharpness-aware step; returns the loss at the unperturbed weights (its mean
        over the process group in data-parallel training).

        Phases: the unperturbed pass (g0), the n perturbed passes (g_i, D_i), combining them
        into the gradient of the surrogate, and the base optimizer's step on it — applied, or
        undone on the device when a value of the step is not finite (module
        :mod:`metasam.optim.verdicts`)."""
        if closure is None:
            raise TypeError("UniversalSAM.step needs a closure that zeroes the gradients, runs "
                            "forward and backward on one batch and returns the loss")
        return hooked(self, self._step, closure)

    step.hooked = True  # type: ignore[attr-defined]  # torch's wrapper: see hooks.hooked

    def check(self) -> None:
        """Read the verdicts of the steps made so far (one host read): raises
        :class:`~metasam.errors.NonFiniteStepError` for the first non-finite step under
        ``on_nonfinite="raise"``, counts the skipped ones under ``"skip"``. The trainer calls it
        at the end of every epoch."""
        self._verdicts.settle()

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because a value was not finite (``"skip"``, fp16 overflows)."""
        self._verdicts.settle()
        return self._verdicts.skipped

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._verdicts.skipped = int(value)

    @torch.no_grad()
    def _step(self, closure: Callable[[], Tensor | float]) -> Tensor:
        self._begin_step()
        self.last_probe = None
        first = self._unperturbed_pass(closure)
        dot0 = self._probe_dot(first.params)
        if self._active.is_plain or not first.perturbed:
            self._finish(first.params, first.loss, first.loss_check, None,
                         StepInfo(self.steps, self._step_passes), first=first)
            return first.loss
        schedule = self._active.schedule
        if schedule is not None and not self._term_applies(schedule, first):
            self._plain_step(first, reuse=schedule.reuse)
            return first.loss
        keep_g0 = (self._constants is None or self._constants[1] != 0.0
                   or self._active.guard is not None
                   or (schedule is not None and schedule.reuse))
        g0 = [p.grad.clone() for p in first.params] if keep_g0 else None
        probes = self._perturbed_passes(closure, first)
        if dot0 is not None and len(probes.dots) == len(probes.losses):
            d = (torch.stack(probes.losses).double() - first.loss.double()) / self._active.rho**2
            self.last_probe = ProbeRecord(float(dot0), torch.stack(probes.dots).double().cpu(),
                                          d.detach().cpu(), float(self.param_groups[0]["lr"]))
        self._combine_and_apply(first, probes, g0)
        return first.loss

    def _probe_dot(self, params: list[Tensor]) -> Tensor | None:
        """⟨v, current gradients⟩ over the parameters, with v = ``hyper_probe`` (None: off)."""
        if self.hyper_probe is None:
            return None
        every = [p for g in self.param_groups for p in g["params"]]
        probe = dict(zip(map(id, every), self.hyper_probe, strict=True))
        return sum((probe[id(p)].to(torch.float64) * grad_or_zero(p).to(torch.float64)).sum()
                   for p in params)

    # --- the phases of a step ---------------------------------------------------------------

    def _begin_step(self) -> None:
        self.steps += 1
        if self.spec.vary is not None:
            self._enter_member()
        for group in self.param_groups:  # zero_grad(set_to_none=True), minus its profiler op
            for p in group["params"]:
                p.grad = None
        # Every pass's gradients carry the scaler's factor until _finish unscales the result
        # (exactly: the factor is a power of two); only the norm's ε needs it meanwhile.
        self._unscaled = False
        self._step_passes = 0
        if len(self._verdicts.pending) >= Verdicts.LIMIT:
            self._verdicts.settle()

    def _unperturbed_pass(self, closure: Callable[[], Tensor | float]) -> _FirstPass:
        """The pass at x: the loss, g0 (left in ``.grad``) and the checks of both."""
        loss = self._call(closure, detach=True)
        active = [(p, g["perturb"]) for g in self.param_groups for p in g["params"]
                  if p.grad is not None]
        per_tensor = norms([p.grad for p, _ in active])
        same = all(n.device == loss.device for n in per_tensor)
        parts = torch.stack([loss, *per_tensor]) if per_tensor and same else None
        return _FirstPass(loss, [p for p, _ in active], [p for p, flag in active if flag],
                          [per_tensor[i] for i, (_, flag) in enumerate(active) if flag],
                          per_tensor, parts)

    def _perturbed_passes(self, closure: Callable[[], Tensor | float],
                          first: _FirstPass) -> _Probes:
        """The passes at x + ρv_i, i = 1..n (weights restored after each). All but the last
        pass's gradient are kept: raw when n − 1 ≤ m, else folded into m buffers
        Σ_i φ_j'(D_i)·g_i (on the device); the last one stays in ``.grad``."""
        spec, params, perturbed = self._active, first.params, first.perturbed
        n, rho = spec.n, spec.rho
        sdtype = scalar_dtype(first.loss.device)
        x0 = self._weights_at_x(perturbed)
        direction = None if spec.measure.is_random else self._ascent_direction(
            perturbed, first.perturbed_norms)
        probes = _Probes(raw_mode=n - 1 <= spec.phi.dim)
        checks = first.checks
        guard = self._bn_guard if self.bn_stats == "freeze" else None
        try:
            if guard is not None:
                guard.__enter__()
            for i in range(n):
                v = direction if direction is not None else self._sampler.sample(
                    spec.measure, perturbed, x0)
                torch._foreach_add_(perturbed, v, alpha=rho)
                for p in params:
                    p.grad = None
                try:
                    loss_i = self._call(closure)
                finally:
                    torch._foreach_copy_(perturbed, x0)
                grads_i = [grad_or_zero(p) for p in params]
                dot = self._probe_dot(params)
                if dot is not None:
                    probes.dots.append(dot)
                name = f"perturbation {i + 1} of {n}"
                probes.last_grad_norm = total_norm(norms(grads_i), first.loss.device)
                checks += [Check(name, "loss", loss_i),
                           Check(name, "gradient", probes.last_grad_norm)]
                probes.losses.append(loss_i)
                if i == n - 1:
                    break
                if probes.raw_mode:
                    probes.raw.append([g.clone() for g in grads_i])
                    continue
                d_i = (loss_i.to(sdtype) - first.loss.to(sdtype)) / rho**2
                slopes = spec.phi.derivative(spec.clip(d_i.reshape(1)))[0]
                if not probes.acc:
                    probes.acc = [[torch.zeros_like(g) for g in grads_i]
                                  for _ in range(spec.phi.dim)]
                kernels.fold_(probes.acc, grads_i, slopes)
        except BaseException:
            self.zero_grad(set_to_none=True)
            raise
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)
        return probes

    def _combine_and_apply(self, first: _FirstPass, probes: _Probes,
                           g0: list[Tensor] | None) -> None:
        """D_i, the surrogate's weights, the combined gradient g0 + c·Σ w_i(g_i − g0) (built in
        ``.grad``, with the coefficients on the device unless every weight is a known
        constant), the guard, and the base optimizer's step on it."""
        spec, params, loss0 = self._active, first.params, first.loss
        n, rho = spec.n, spec.rho
        sdtype = scalar_dtype(loss0.device)
        checks = first.checks
        d = (torch.stack(probes.losses).to(sdtype) - loss0.to(sdtype)) / rho**2
        surrogate = spec.surrogate(d)
        value = surrogate.value.reshape(())
        checks += [Check("sharpness surrogate", "ψ(mean φ(D))", value),
                   Check("sharpness surrogate", "weights", surrogate.weights.sum())]
        if self._constants is not None:   # known on the host: the reference order, bit for bit
            beta, coefficient_g0, folded = self._constants
        else:
            scale = kernels.weight_scale(surrogate.weights, spec.lam,
                                         spec.lam_scale != "absolute")
            beta_t = surrogate.weights * scale
            beta = list(beta_t.unbind(0))
            coefficient_g0 = 1.0 - beta_t.sum()
            folded = [] if probes.raw_mode else list((surrogate.psi_grad * scale).unbind(0))
        final = [p.grad for p in params]  # holds g_n
        info = StepInfo(self.steps, self._step_passes,
                        {"sharpness": value, "d": d, "weights": surrogate.weights},
                        regularizer_factor=spec.lam * rho**2)
        exact_last = (isinstance(coefficient_g0, float) and coefficient_g0 == 0.0 and n == 1
                      and isinstance(beta[-1], float) and beta[-1] == 1.0
                      and spec.guard is None)
        # When the update is exactly g_n, its norm was computed with the last pass's checks.
        norm, factor = self._kernels.finish_gradient(
            final, g0, beta, coefficient_g0, raw=probes.raw if probes.raw_mode else None,
            folded=None if probes.raw_mode else probes.acc, folded_coefficients=folded,
            guard=spec.guard, g0_norm=first.grad_norm if spec.guard is not None else None,
            known_norm=probes.last_grad_norm if exact_last else None)
        if factor is not None:
            info.tensors["guard"] = factor
        reuse = None
        if spec.schedule is not None and spec.schedule.reuse:
            assert g0 is not None
            reuse = kernels.orthogonal_part(final, g0, first.grad_norm)
        self._finish(params, loss0, checks, norm, info, reuse=reuse)

    # --- the schedule of the sharpness term ----------------------------------------------------

    def _term_applies(self, schedule: Any, first: _FirstPass) -> bool:
        """Whether this step applies the sharpness term (docs/family.md §3.4). AE-SAM's trigger
        reads ‖g0‖ on the host: it decides how many passes the step makes."""
        index = self.steps - 1  # of this step, from 0
        start = math.ceil(schedule.start * self.total_steps) if schedule.start > 0 else 0
        if schedule.trigger is not None:
            # AE-SAM: EMAs of ‖g0‖² (unscaled under fp16) and of its squared deviation
            scale = 1.0 if self.scaler is None else self.scaler.get_scale()
            x = float(first.grad_norm) ** 2 / scale ** 2
            if not math.isfinite(x):
                return False  # a plain step, whose checks report the problem
            if self._trigger_stats is None:
                self._trigger_stats = (x, 0.0)
                return index >= start
            d = schedule.decay
            mean = d * self._trigger_stats[0] + (1 - d) * x
            var = d * self._trigger_stats[1] + (1 - d) * (x - mean) ** 2
            self._trigger_stats = (mean, var)
            return index >= start and x >= mean + schedule.trigger * math.sqrt(var)
        return index >= start and (index - start) % schedule.every == 0

    def _plain_step(self, first: _FirstPass, reuse: bool) -> None:
        """A step without the sharpness term: the base optimizer on g0 (one pass), plus, with
        ``reuse``, the last full step's sharpness component orthogonal to g0, rescaled to
        ‖g0‖ (LookSAM)."""
        params, norm = first.params, first.grad_norm
        stored = [self.state[p].get("reuse") for p in params] if reuse else []
        if stored and all(v is not None for v in stored):
            grads = [p.grad for p in params]
            torch._foreach_add_(grads, torch._foreach_mul(stored, per_device(norm, stored)))
            norm = total_norm(norms(grads), first.loss.device)
        self._finish(params, first.loss, first.loss_check, norm,
                     StepInfo(self.steps, self._step_passes))

    # --- applying a step ------------------------------------------------------------------------

    def _finish(self, params: list[Tensor], loss0: Tensor, checks: list[Check],
                norm: Tensor | None, info: StepInfo, reuse: list[Tensor] | None = None,
                first: _FirstPass | None = None) -> None:
        """Check the gradient about to be applied, clip it if asked, step the base optimizer:
        judged on the device (the step skipped or undone there if not finite) or — a step
        whose state is new, or under ``strict`` — on the host before the base step.

        ``norm`` is the combined gradient's norm as computed, i.e. still scaled under fp16;
        ``None`` for a plain step, whose gradient is g0 (``first``)."""
        changed = self._changed_tensors()
        on_host = self.strict or ids(changed) != self._state_key
        parts = None if (first is None or on_host or self.max_grad_norm is not None
                         or self.scaler is not None) else first.parts
        if norm is None and parts is None:
            assert first is not None
            norm = first.grad_norm
        if self.scaler is not None:
            assert norm is not None
            norm = self._unscale(params, checks, norm)
        info.tensors["loss"] = loss0
        if parts is not None:   # a plain step: [loss, ‖g0‖ per tensor] as they are
            info.tensors["grad_parts"] = parts
            names = (("unperturbed pass", "loss"),) + \
                (("combined gradient", "gradient"),) * (parts.numel() - 1)
            record = Record(self.steps, names, parts, info)
        else:
            assert norm is not None
            checks = checks + [Check("combined gradient", "gradient", norm)]
            info.tensors["grad_norm"] = norm
            if on_host:
                self._finish_on_host(params, checks, norm, info, reuse)
                return
            record = Record(self.steps, tuple((c.pass_name, c.what) for c in checks),
                            torch.stack([c.value for c in checks]), info)
        ok = self._verdicts.judge(record)
        info.applied = ok
        info.settle = self._verdicts.settle
        self.last_step = info
        if self.max_grad_norm is not None:
            assert norm is not None
            kernels.clip_([p.grad for p in params], norm, self.max_grad_norm)
        # A fused base optimizer skips on the device itself (torch's found_inf; the first
        # step, which creates its state, was judged on the host); any other is undone.
        fused = reuse is None and getattr(self.base_optimizer, "_step_supports_amp_scaling",
                                          False)
        if fused:
            self.base_optimizer.found_inf = ok.logical_not().float()  # type: ignore[attr-defined]
            try:
                base_step(self.base_optimizer)
            finally:
                del self.base_optimizer.found_inf  # type: ignore[attr-defined]
        else:
            self._rollback.save(changed)
            base_step(self.base_optimizer)
            if reuse is not None:
                self._store_reuse(params, reuse)
        if self.scaler is not None:
            self.scaler.update()   # backs off on the overflow unscale_ found, on the device
        if ids(self._changed_tensors()) != self._state_key:
            # the step created state (rare past the first step): judge it now, drop the new
            # state if it failed, and keep the new set for the next steps
            if not fused:
                self._rollback.keep_if(ok)
            kept = set(self._state_key)
            try:
                self._verdicts.settle()
            except NonFiniteStepError:
                self._drop_state_not_in(kept)
                raise
            finally:
                if info.skipped is not None:
                    self._drop_state_not_in(kept)
                self._state_key = ids(self._changed_tensors())
            return
        if not fused:
            self._rollback.keep_if(ok)

    def _finish_on_host(self, params: list[Tensor], checks: list[Check], norm: Tensor,
                        info: StepInfo, reuse: list[Tensor] | None) -> None:
        """The step judged on the host (one read), the base step only when it is finite."""
        self._verdicts.settle()
        host = torch.stack([c.value.to(norm.device, torch.float64) for c in checks]).tolist()
        failed = culprit(tuple((c.pass_name, c.what) for c in checks), host)
        if failed is not None:
            self._fail(*failed)
            return
        self.last_step = info
        if self.max_grad_norm is not None:
            kernels.clip_([p.grad for p in params], norm, self.max_grad_norm)
        base_step(self.base_optimizer)
        if reuse is not None:
            self._store_reuse(params, reuse)
        if self.scaler is not None:
            self.scaler.update()
        self._state_key = ids(self._changed_tensors())

    def _store_reuse(self, params: list[Tensor], reuse: list[Tensor]) -> None:
        """LookSAM's direction of this step into the state (in place once it exists, so the
        rollback undoes it with the weights)."""
        stored = [self.state[p].get("reuse") for p in params]
        if all(v is not None and v.shape == r.shape for v, r in zip(stored, reuse, strict=True)):
            torch._foreach_copy_(stored, reuse)
            return
        for p, v in zip(params, reuse, strict=True):
            self.state[p]["reuse"] = v

    def _changed_tensors(self) -> list[Tensor]:
        """Every tensor a base step may change: the trainable weights, the base optimizer's
        state tensors and LookSAM's direction."""
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        out = list(params)
        base_state = self.base_optimizer.state
        for p in params:
            state = base_state.get(p)
            if state:
                out.extend(v for v in state.values() if isinstance(v, Tensor))
            own = self.state.get(p)
            if own and "reuse" in own:
                out.append(own["reuse"])
        return out

    def _drop_state_not_in(self, kept: set[int]) -> None:
        """Remove the state tensors a step that was not applied created."""
        for states in (self.base_optimizer.state, self.state):
            for p in list(states):
                for k in [k for k, v in states[p].items()
                          if isinstance(v, Tensor) and id(v) not in kept and k != "fisher_mask"]:
                    del states[p][k]
                if not states[p]:
                    del states[p]

    # --- internals ----------------------------------------------------------------------------

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _perturbable(self) -> list[Tensor]:
        return [p for g in self.param_groups if g["perturb"] for p in g["params"]
                if p.requires_grad]

    def _enter_member(self) -> None:
        """The member of this step, ``spec.at(progress)`` for a spec whose parameters vary
        (the same object while the values stay the same), and its g0 coefficient."""
        progress = (self.steps - 1) / self.total_steps  # type: ignore[operator]
        values = self.spec.vary.values_at(progress)  # type: ignore[union-attr]
        if values != self._active_values:
            self._active_values = values
            self._active = self.spec.at(progress)
            self._constants = self._host_coefficients(self._active)

    def _host_coefficients(self, spec: SharpnessSpec
                           ) -> tuple[list[float], float, list[float]] | None:
        """(β_i, the coefficient 1 − λ·Σw of g0 — 0 for SAM, so g0 needs no copy —, the
        folded buffers' factors) as floats when every weight is a known constant (SAM,
        Trace-SAM, ...), else None; the weights are computed once per (φ, ψ, n)."""
        if spec.is_plain or not spec.constant_weights:
            return None
        key = _weights_key(spec)
        if key not in self._constant_weights:
            zero = torch.zeros(spec.n, dtype=torch.float64)
            surrogate = spec.surrogate(zero)
            self._constant_weights[key] = (surrogate.weights.tolist(),
                                           surrogate.psi_grad.reshape(-1).tolist())
        weights, psi_grad = self._constant_weights[key]
        scale = spec.weight_scale(weights)
        return ([scale * w for w in weights], 1.0 - scale * sum(weights),
                [scale * g for g in psi_grad])

    def _weights_at_x(self, perturbed: list[Tensor]) -> list[Tensor]:
        """A copy of the weights before the perturbed passes, into buffers kept between steps
        (one foreach copy, no new tensors per step)."""
        key = tuple(id(p) for p in perturbed)
        if self._x0[0] != key:
            self._x0 = (key, [torch.empty_like(p) for p in perturbed])
        buffers = self._x0[1]
        torch._foreach_copy_(buffers, perturbed)
        return buffers

    def _call(self, closure: Callable[[], Tensor | float], detach: bool = False) -> Tensor:
        """One pass; its loss as a 0-dim tensor (the unperturbed one detached, as returned)."""
        self._step_passes += 1
        self.grad_evals += 1
        with torch.enable_grad():
            loss = closure()
        value = torch.as_tensor(loss)
        if detach and value.requires_grad:
            value = value.detach()
        return self._sync.mean(value if value.dim() == 0 else value.reshape(()))

    def _ascent_direction(self, perturbed: list[Tensor], per_tensor: list[Tensor]
                          ) -> list[Tensor]:
        """SAM's g/‖g‖, ASAM's T²g/‖Tg‖ or SSAM's m⊙g/‖g‖ (docs/family.md §2)."""
        measure = self.spec.measure
        masks = None
        if measure.kind == "sparse_ascent":
            masks = [self.state[p].get("fisher_mask") for p in perturbed]
            if any(m is None for m in masks):
                raise RuntimeError("the sparse_ascent (SSAM) measure needs a Fisher mask: call "
                                   "optimizer.update_fisher_mask(model, loss_fn, inputs, "
                                   "targets) before the first step")
        # the gradients are still scaled under fp16: ε is not
        return self._kernels.ascent_direction([p.grad for p in perturbed], perturbed, per_tensor,
                                        adaptive_eta=measure.eta if measure.kind ==
                                        "adaptive_ascent" else None, masks=masks,
                                        eps=1e-12 if self.scaler is None
                                        else self._loss_scale() * 1e-12)

    def _unscale(self, params: list[Tensor], checks: list[Check],
                 norm: Tensor) -> Tensor:
        """The scaler's one ``unscale_`` of the step; returns the unscaled ``norm``.

        A non-finite value among ``checks`` (a loss) is planted into a gradient first, without a
        host sync, so that the scaler records the overflow (adding 0 leaves it unchanged)."""
        assert self.scaler is not None
        if checks and params:
            finite = torch.stack([torch.isfinite(t).all() for _, _, t in checks]).all()
            first = params[0].grad.view(-1)[:1]
            first.add_(torch.where(finite, 0.0, math.nan).to(first.device, first.dtype))
        self.scaler.unscale_(self)
        self._unscaled = True
        return norm / self._loss_scale()   # a power of two: exact

    def _loss_scale(self) -> Tensor:
        """The scaler's loss scale of this step's passes (float64, on the device; a power of
        two), read without a host sync."""
        assert self.scaler is not None
        scale = self.scaler._get_scale_async()
        assert scale is not None, "the closure scales its loss: optimizer.backward(loss)"
        return scale.double()

    def _fail(self, pass_name: str, detail: str) -> None:
        if self.scaler is not None:
            self._overflow(pass_name, detail)
            return
        self.zero_grad(set_to_none=True)
        if self.on_nonfinite == "raise":
            raise NonFiniteStepError(pass_name, detail, self.steps)
        self._verdicts.skipped += 1
        self.last_step = skipped_info(self.steps, self._step_passes,
                                      f"non-finite {detail} in the {pass_name}")

    def _overflow(self, pass_name: str, detail: str) -> None:
        """fp16: skip the step as ``GradScaler.step`` does, and let the scaler back off."""
        assert self.scaler is not None
        if not self._unscaled:
            params = self._all_params()
            if params:  # make sure the scaler sees the overflow, wherever it happened
                params[0].grad = torch.full_like(params[0], math.nan)
                self.scaler.unscale_(self)
        scale = self.scaler.get_scale()
        self.scaler.update()
        self.zero_grad(set_to_none=True)
        self._verdicts.skipped += 1
        self.last_step = skipped_info(
            self.steps, self._step_passes,
            f"fp16 overflow: non-finite {detail} in the {pass_name} at loss scale "
            f"{scale:g} (now {self.scaler.get_scale():g})")


class CompiledKernels:
    """:func:`kernels.ascent_direction` and :func:`kernels.finish_gradient` through
    ``torch.compile``, each one whole graph (no break, no host read: tested), compiled on
    first use. Not ``fullgraph=True``: under a dispatch mode (an operator or FLOP counter)
    torch.compile runs a function eagerly, which ``fullgraph`` refuses. Not
    ``mode="reduce-overhead"``: its CUDA graphs would overwrite the returned norm on the next
    replay while a pending verdict still holds it, and the gradients they read are new
    tensors every pass."""

    def __init__(self) -> None:
        self.ascent_direction = torch.compile(kernels.ascent_direction, dynamic=False)
        self.finish_gradient = torch.compile(kernels.finish_gradient, dynamic=False)


def _weights_key(spec: SharpnessSpec) -> str:
    return json.dumps([spec.phi.to_obj(), spec.psi.to_obj(), spec.n])


# The combine kernel is importable from here too.
__all__ = ["Check", "ProbeRecord", "StepInfo", "UniversalSAM", "combine_gradients"]
