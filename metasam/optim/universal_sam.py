"""UniversalSAM: SAM-train against any member of the (φ, ψ, μ) sharpness family.

The class is bookkeeping: its settings, its state and the order of a step's phases. The passes
are :mod:`metasam.optim.passes`, the arithmetic :mod:`metasam.optim.kernels`, applying a step
or not :mod:`metasam.optim.step_guard`, fp16 :mod:`metasam.optim.scaling` (docs/optimizer.md).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from metasam.family.spec import SharpnessSpec
from metasam.optim import fisher, kernels, passes, state
from metasam.optim.batchnorm import RunningStatsGuard
from metasam.optim.distributed import AUTO, Sync, local_module
from metasam.optim.finiteness import SURROGATE
from metasam.optim.hooks import hooked
from metasam.optim.kernels import KeyedBuffers, combine_gradients
from metasam.optim.passes import Check, FirstPass, PerturbedPasses, ProbeRecord
from metasam.optim.perturbations import PerturbationSampler
from metasam.optim.scaling import LossScaling
from metasam.optim.settings import NONFINITE_MODES, check_arguments, check_choice
from metasam.optim.step_guard import StepGuard
from metasam.optim.step_info import StepInfo


class UniversalSAM(torch.optim.Optimizer):
    r"""Sharpness-aware training with any (φ, ψ, μ) sharpness measure (docs/family.md §2).

    Each :meth:`step` calls ``closure`` at the weights x and at each x + ρv_i, i = 1..n, and
    steps the base optimizer with the gradient of L + λ·ρ²·ψ((1/n)Σφ(D_i)),
    D_i = (L(x+ρv_i) − L(x))/ρ², the v_i held fixed. docs/optimizer.md has the arguments in
    full, fp16, host reads and data parallelism.

    Args:
        params: parameters or groups; a group with ``"perturb": False`` is never perturbed.
        base_optimizer: an optimizer *class*, e.g. ``torch.optim.SGD``.
        spec: a :class:`~metasam.SharpnessSpec`, a preset name, a dict or a JSON file.
        model: the model (batch-norm statistics kept out of the perturbed passes; SSAM-F).
        bn_stats, seed, max_grad_norm, on_nonfinite, process_group, scaler, total_steps,
        strict, compile: see docs/optimizer.md; the properties of the same names.
        **base_kwargs: arguments of the base optimizer (``lr``, ``momentum``, ...).

    Example::

        optimizer = UniversalSAM(model.parameters(), torch.optim.SGD, "frob_sam",
                                 model=model, lr=0.1, momentum=0.9, weight_decay=5e-4)
        for inputs, targets in loader:
            def closure():
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                return loss
            loss = optimizer.step(closure)
    """

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer],
                 spec: SharpnessSpec | str | dict[str, Any] = "sam", *,
                 model: nn.Module | None = None, bn_stats: str = "freeze",
                 seed: int | None = None, max_grad_norm: float | None = None,
                 on_nonfinite: str = "raise", process_group: Any = AUTO,
                 scaler: torch.amp.GradScaler | None = None, total_steps: int | None = None,
                 strict: bool = False, compile: bool = False, **base_kwargs: Any) -> None:
        spec = SharpnessSpec.coerce(spec)
        check_arguments(base_optimizer, bn_stats, on_nonfinite, max_grad_norm, total_steps, spec)
        super().__init__(params, {"perturb": True})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.bn_stats, self.max_grad_norm = bn_stats, max_grad_norm
        self.strict, self.total_steps = bool(strict), total_steps
        self._kernels = kernels.CompiledKernels() if compile else kernels
        self._scaling = None if scaler is None else LossScaling(scaler)
        self._on_nonfinite = on_nonfinite
        self._guard = StepGuard(self, on_nonfinite, self._scaling)
        self._trigger_stats: tuple[float, float] | None = None  # EMA of ‖g0‖² and its variance
        self._sync = Sync.resolve(process_group)
        if seed is None:
            seed = self._sync.seed(int(torch.randint(0, 2**62, (1,)).item()))
        self.seed = seed   # the draws' generators
        self.steps = 0
        self.grad_evals = 0  # forward/backward passes made by all steps so far
        self._step_passes = 0
        # A direction v (one tensor per parameter, e.g. a validation gradient): each step with
        # a sharpness term then records ⟨v, g0⟩, ⟨v, g_i⟩ and D_i in ``last_probe``.
        self.hyper_probe: list[Tensor] | None = None
        self.last_probe: ProbeRecord | None = None
        self.last_step: StepInfo | None = None
        self._spec = self._active = spec   # _active: the member this step makes (vary)
        self._active_values: dict[str, Any] | None = None
        self.model = model
        self._x0 = KeyedBuffers(lambda ps: [torch.empty_like(p) for p in ps])  # weights at x

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
        return self._sampler.seed

    @seed.setter
    def seed(self, seed: int) -> None:
        self._sampler = PerturbationSampler(int(seed))

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
        check_choice("on_nonfinite", mode, NONFINITE_MODES)
        self._on_nonfinite = mode
        self._guard.set_policy(mode, self._scaling)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler of fp16 training, or None; with one, a non-finite step is an
        overflow and skipped (as ``GradScaler.step`` does) whatever ``on_nonfinite`` says."""
        return None if self._scaling is None else self._scaling.scaler

    @scaler.setter
    def scaler(self, scaler: torch.amp.GradScaler | None) -> None:
        self._scaling = None if scaler is None else LossScaling(scaler)
        self._guard.set_policy(self._on_nonfinite, self._scaling)

    # --- public helpers ---------------------------------------------------------------------

    def set_spec(self, spec: SharpnessSpec | Any) -> None:
        """Train with ``spec`` from the next step on: the same structure (measure, n, φ's and
        ψ's functions), other parameters — what a bias learned during the run changes
        (:mod:`metasam.training.learned`)."""
        spec = SharpnessSpec.coerce(spec)
        if (spec.n, spec.measure, spec.vary) != (self.spec.n, self.spec.measure, None):
            raise ValueError("set_spec: the new member must keep n and the measure, without "
                             "vary")
        self._spec = self._active = spec
        self._active_values = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        param_group.setdefault("perturb", True)
        if hasattr(self, "base_optimizer"):
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)

    def backward(self, loss: Tensor) -> Tensor:
        """``loss.backward()``, scaled by the optimizer's GradScaler when it has one; returns
        ``loss`` (unscaled), so a closure can end with ``return optimizer.backward(loss)``."""
        if self._scaling is not None:
            return self._scaling.backward(loss)
        loss.backward()
        return loss

    @torch.no_grad()
    def update_fisher_mask(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                           inputs: Tensor, targets: Tensor) -> float:
        """Recompute SSAM-F's mask from per-example squared gradients on ``inputs`` (the
        trainer passes ``spec.measure.fisher_samples`` training examples every
        ``refresh_epochs`` epochs; summed over the process group); returns the fraction kept."""
        return fisher.refresh_masks(self._perturbable(), self.state, self._sync.sum_,
                                    local_module(model), loss_fn, inputs, targets,
                                    self.spec.measure.sparsity)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus the generators, step counters and Fisher masks
        (the pending verdicts are read first)."""
        self._guard.verdicts.settle()
        params = self._all_params()
        masks, reuse = (state.by_index(self.state, params, k) for k in ("fisher_mask", "reuse"))
        generators = self._sampler.state_dict()
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
        self._guard.forget()
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        own = state_dict["universal_sam"]
        self.steps = int(own["steps"])
        self._guard.verdicts.skipped = int(own.get("skipped_steps", 0))
        self.grad_evals = int(own.get("grad_evals", 0))
        self._sampler = PerturbationSampler(int(own["seed"]), own["generators"])
        state.restore(self.state, self._all_params(), "fisher_mask", own.get("fisher_masks", {}))
        state.restore(self.state, self._all_params(), "reuse", own.get("reuse", {}))
        stats = own.get("trigger_stats")
        self._trigger_stats = tuple(stats) if stats is not None else None  # type: ignore[assignment]
        if self.scaler is not None and own.get("scaler"):
            self.scaler.load_state_dict(own["scaler"])

    # --- the step ---------------------------------------------------------------------------

    def step(self, closure: Callable[[], Tensor | float] | None = None) -> Tensor:  # type: ignore[override]
        """One sharpness-aware step: the unperturbed pass (g0), the n perturbed passes (g_i,
        D_i), their combination and the guarded base step on it; returns the loss at x (its
        mean over the process group in data-parallel training)."""
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
        self._guard.verdicts.settle()

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because a value was not finite (``"skip"``, fp16 overflows)."""
        self._guard.verdicts.settle()
        return self._guard.verdicts.skipped

    @torch.no_grad()
    def _step(self, closure: Callable[[], Tensor | float]) -> Tensor:
        self._begin_step()
        first = passes.unperturbed_pass(lambda: self._call(closure, detach=True),
                                        self.param_groups)
        dot0 = self._probe_dot(first.params)
        spec, schedule = self._active, self._active.schedule
        if spec.is_plain or not first.perturbed:
            self._guard.apply(first.params, first.loss, first.loss_check,
                              StepInfo(self.steps, self._step_passes), first=first)
        elif schedule is not None and not self._term_applies(schedule, first):
            self._plain_step(first, reuse=schedule.reuse)
        else:
            coefficients = spec.coefficients
            keep_g0 = (coefficients is None or coefficients.g0 != 0.0
                       or spec.guard is not None or (schedule is not None and schedule.reuse))
            g0 = [p.grad.clone() for p in first.params] if keep_g0 else None
            probes = self._perturbed_passes(closure, first)
            d = kernels.loss_differences(torch.stack(probes.losses), first.loss, spec.rho)
            self.last_probe = passes.probe_record(dot0, probes, d, self.param_groups[0]["lr"])
            self._combine_and_apply(first, probes, g0, d)
        return first.loss

    def _begin_step(self) -> None:
        self.steps += 1
        self.last_probe = None
        if self.spec.vary is not None:
            self._enter_member()
        for group in self.param_groups:  # zero_grad(set_to_none=True), minus its profiler op
            for p in group["params"]:
                p.grad = None
        self._step_passes = 0
        self._guard.begin()

    def _enter_member(self) -> None:
        """The member of this step, ``spec.at(progress)`` for a spec whose parameters vary
        (the same object while the values stay the same)."""
        progress = (self.steps - 1) / self.total_steps  # type: ignore[operator]
        values = self.spec.vary.values_at(progress)  # type: ignore[union-attr]
        if values != self._active_values:
            self._active_values = values
            self._active = self.spec.at(progress)

    def _perturbed_passes(self, closure: Callable[[], Tensor | float],
                          first: FirstPass) -> PerturbedPasses:
        """The n perturbed passes, with running statistics kept under ``bn_stats="freeze"``
        and the gradients cleared when a pass raises."""
        spec, perturbed = self._active, first.perturbed
        x0 = self._x0.get(perturbed)
        torch._foreach_copy_(x0, perturbed)
        if spec.measure.is_random:
            draw = functools.partial(self._sampler.sample, spec.measure, perturbed, x0)
        else:
            direction = passes.ascent_direction(self._kernels, spec.measure, first,
                                                self.state, self._scaling)
            draw = functools.partial(list, direction)
        keep = self._bn_guard if self.bn_stats == "freeze" else contextlib.nullcontext()
        try:
            with keep:
                return passes.perturbed_passes(lambda: self._call(closure), first, spec, x0,
                                               draw, self._probe_dot)
        except BaseException:
            self.zero_grad(set_to_none=True)
            raise

    def _combine_and_apply(self, first: FirstPass, probes: PerturbedPasses,
                           g0: list[Tensor] | None, d: Tensor) -> None:
        """The surrogate's weights, the combined gradient g0 + c·Σ w_i(g_i − g0) (built in
        ``.grad``, with the coefficients on the device unless every weight is a known
        constant), the guard, and the guarded base step on it."""
        spec = self._active
        surrogate = spec.surrogate(d)
        value = surrogate.value.reshape(())
        checks = first.checks
        checks += [Check(SURROGATE, "ψ(mean φ(D))", value),
                   Check(SURROGATE, "weights", surrogate.weights.sum())]
        c = spec.coefficients or kernels.surrogate_coefficients(
            surrogate, spec.lam, spec.lam_scale != "absolute", not probes.raw_mode)
        final = [p.grad for p in first.params]  # holds g_n
        info = StepInfo(self.steps, self._step_passes,
                        {"sharpness": value, "d": d, "weights": surrogate.weights},
                        regularizer_factor=spec.lam * spec.rho**2)
        # When the update is exactly g_n, its norm was computed with the last pass's checks.
        exact_last = (isinstance(c.g0, float) and c.g0 == 0.0 and spec.n == 1
                      and isinstance(c.beta[-1], float) and c.beta[-1] == 1.0
                      and spec.guard is None)
        norm, factor = self._kernels.finish_gradient(
            final, g0, c.beta, c.g0, raw=probes.raw if probes.raw_mode else None,
            folded=None if probes.raw_mode else probes.folded, folded_coefficients=c.folded,
            guard=spec.guard, g0_norm=first.grad_norm if spec.guard is not None else None,
            known_norm=probes.last_grad_norm if exact_last else None)
        if factor is not None:
            info.tensors["guard"] = factor
        reuse = None
        if spec.schedule is not None and spec.schedule.reuse:
            assert g0 is not None
            reuse = kernels.orthogonal_part(final, g0, first.grad_norm)
        self._guard.apply(first.params, first.loss, checks, info, norm=norm, reuse=reuse)

    def _term_applies(self, schedule: Any, first: FirstPass) -> bool:
        """Whether this step applies the sharpness term (docs/family.md §3.4). AE-SAM's trigger
        reads ‖g0‖ on the host: it decides how many passes the step makes."""
        index = self.steps - 1  # of this step, from 0
        if schedule.trigger is None:
            return schedule.periodic(index, self.total_steps)
        scale = 1.0 if self.scaler is None else self.scaler.get_scale()
        x = float(first.grad_norm) ** 2 / scale ** 2   # unscaled under fp16
        applies, self._trigger_stats = schedule.triggered(index, self.total_steps, x,
                                                          self._trigger_stats)
        return applies

    def _plain_step(self, first: FirstPass, reuse: bool) -> None:
        """A step without the sharpness term: the base optimizer on g0 (one pass), plus, with
        ``reuse``, LookSAM's stored direction rescaled to ‖g0‖."""
        params, norm = first.params, first.grad_norm
        stored = [self.state[p].get("reuse") for p in params] if reuse else []
        if stored and all(v is not None for v in stored):
            kernels.add_reused_([p.grad for p in params], stored, norm)
            norm = kernels.total_norm(kernels.norms([p.grad for p in params]), first.loss.device)
        self._guard.apply(params, first.loss, first.loss_check,
                          StepInfo(self.steps, self._step_passes), norm=norm)

    # --- internals ----------------------------------------------------------------------------

    def _probe_dot(self, params: list[Tensor]) -> Tensor | None:
        return passes.probe_dot(self.hyper_probe, self.param_groups, params)

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _perturbable(self) -> list[Tensor]:
        return [p for g in self.param_groups if g["perturb"] for p in g["params"]
                if p.requires_grad]

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

# The combine kernel is importable from here too.
__all__ = ["Check", "ProbeRecord", "StepInfo", "UniversalSAM", "combine_gradients"]
