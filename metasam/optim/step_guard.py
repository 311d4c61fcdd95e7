"""Applying a :class:`~metasam.UniversalSAM` step, or not: the one place that owns the
finiteness verdicts, the rollback, torch's ``found_inf``, the skip/raise policy and the state
tensors a step creates.

:meth:`StepGuard.apply` takes the gradient the step built (in ``.grad``) with the values to
check, and either judges them on the device — applying the base step and undoing it there when
a value is not finite (:mod:`metasam.optim.finiteness`) — or, for a step whose state is new or
under ``strict``, on the host before the base step. Clipping, the base step, LookSAM's stored
direction and the scaler's update follow on one path either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metasam.errors import NonFiniteStepError
from metasam.optim.finiteness import COMBINED, UNPERTURBED, Record, Rollback, Verdicts, culprit
from metasam.optim.hooks import base_step
from metasam.optim.kernels import clip_, ids
from metasam.optim.passes import Check, FirstPass
from metasam.optim.scaling import LossScaling
from metasam.optim.step_info import StepInfo, skipped_info


class StepGuard:
    """The verdicts and rollback of ``owner``'s steps (a :class:`~metasam.UniversalSAM`: its
    ``base_optimizer``, ``param_groups``, ``state``, ``strict``, ``max_grad_norm`` and
    ``last_step`` are read and written here)."""

    def __init__(self, owner: Any, on_nonfinite: str, scaling: LossScaling | None) -> None:
        self.owner = owner
        self.verdicts = Verdicts("raise")
        self.rollback = Rollback()
        self.state_key: tuple[int, ...] = ()   # the tensors the last step left (ids)
        self.set_policy(on_nonfinite, scaling)

    def set_policy(self, on_nonfinite: str, scaling: LossScaling | None) -> None:
        """Read the pending verdicts, then judge under ``on_nonfinite`` — or, with a scaler,
        skip every non-finite step as an overflow."""
        self.verdicts.settle()
        self.scaling = scaling
        self.verdicts.policy, self.verdicts.prefix = (
            ("skip", "fp16 overflow (the loss scale backed off): ") if scaling is not None
            else (on_nonfinite, ""))

    def begin(self) -> None:
        """A new step: its gradients carry the scaler's factor until :meth:`apply` unscales
        them; the pending verdicts are read every ``Verdicts.LIMIT`` steps."""
        if self.scaling is not None:
            self.scaling.unscaled = False
        if len(self.verdicts.pending) >= self.verdicts.LIMIT:
            self.verdicts.settle()

    def forget(self) -> None:
        """Drop the pending verdicts and the kept copies (a state was loaded)."""
        self.verdicts.pending.clear()
        self.rollback.forget()
        self.state_key = ()

    def apply(self, params: list[Tensor], loss: Tensor, checks: list[Check], info: StepInfo,
              *, norm: Tensor | None = None, reuse: list[Tensor] | None = None,
              first: FirstPass | None = None) -> None:
        """Check the gradient about to be applied, clip it if asked, step the base optimizer.

        ``norm`` is the gradient's norm as computed (still scaled under fp16); ``None`` for a
        plain step, whose gradient is g0 (``first``); ``reuse`` LookSAM's direction to store."""
        owner = self.owner
        changed = changed_tensors(owner)
        on_host = owner.strict or ids(changed) != self.state_key
        parts = None if (first is None or on_host or owner.max_grad_norm is not None
                         or self.scaling is not None) else first.parts
        if norm is None and parts is None:
            assert first is not None
            norm = first.grad_norm
        if self.scaling is not None:
            assert norm is not None
            norm = self.scaling.unscale(owner, params, [c.value for c in checks], norm)
        info.tensors["loss"] = loss
        record = self._record(checks, norm, parts, info, on_host)
        ok = None
        if on_host:
            if not self._host_verdict(record):
                return
        else:
            ok = self.verdicts.judge(record)
            info.applied, info.settle = ok, self.verdicts.settle
        owner.last_step = info
        if owner.max_grad_norm is not None:
            assert norm is not None
            clip_([p.grad for p in params], norm, owner.max_grad_norm)
        fused = self._base_step(changed, ok, reuse is None)
        if reuse is not None:
            store_reuse(owner, params, reuse)
        if self.scaling is not None:
            self.scaling.update()   # backs off on the overflow unscale_ found, on the device
        self._keep(ok, fused)

    def _record(self, checks: list[Check], norm: Tensor | None, parts: Tensor | None,
                info: StepInfo, on_host: bool) -> Record:
        """The step's values to check: a plain step's [loss, ‖g0‖ per tensor] as they are,
        else the passes' checks and the combined gradient's norm."""
        if parts is not None:
            info.tensors["grad_parts"] = parts
            names = ((UNPERTURBED, "loss"),) + ((COMBINED, "gradient"),) * (parts.numel() - 1)
            return Record(info.step, names, parts, info)
        assert norm is not None
        checks = checks + [Check(COMBINED, "gradient", norm)]
        info.tensors["grad_norm"] = norm
        # read on the host: every value to the norm's device first
        values = [c.value.to(norm.device, torch.float64) for c in checks] if on_host else \
            [c.value for c in checks]
        return Record(info.step, tuple((c.pass_name, c.what) for c in checks),
                      torch.stack(values), info)

    def _host_verdict(self, record: Record) -> bool:
        """Judge ``record`` on the host (one read); a failed step is raised or skipped."""
        self.verdicts.settle()
        failed = culprit(record.names, record.values.tolist())
        if failed is None:
            return True
        pass_name, detail = failed
        reason = f"non-finite {detail} in the {pass_name}"
        if self.scaling is not None:
            reason = self.scaling.overflow(self.owner, reason)
        self.owner.zero_grad(set_to_none=True)
        self.verdicts.host_failure(record.step, pass_name, detail)
        self.owner.last_step = skipped_info(record.step, record.info.passes, reason)
        return False

    def _base_step(self, changed: list[Tensor], ok: Tensor | None, may_fuse: bool) -> bool:
        """The base optimizer's step. Judged on the device (``ok``), a fused base optimizer
        skips through torch's ``found_inf`` (returns True); any other is saved for undoing."""
        base = self.owner.base_optimizer
        if ok is not None and may_fuse and getattr(base, "_step_supports_amp_scaling", False):
            base.found_inf = ok.logical_not().float()  # type: ignore[attr-defined]
            try:
                base_step(base)
            finally:
                del base.found_inf  # type: ignore[attr-defined]
            return True
        if ok is not None:
            self.rollback.save(changed)
        base_step(base)
        return False

    def _keep(self, ok: Tensor | None, fused: bool) -> None:
        """Undo a step judged non-finite on the device; a step that created state is judged
        now (its new state dropped if it failed) and the new set kept for the next steps."""
        if ok is None:   # judged on the host
            self.state_key = ids(changed_tensors(self.owner))
            return
        if not fused:
            self.rollback.keep_if(ok)   # in place: the tensors' identities stay
        if ids(changed_tensors(self.owner)) == self.state_key:
            return
        kept = set(self.state_key)
        info = self.owner.last_step
        try:
            self.verdicts.settle()
        except NonFiniteStepError:
            drop_state_not_in(self.owner, kept)
            raise
        finally:
            if info.skipped is not None:
                drop_state_not_in(self.owner, kept)
            self.state_key = ids(changed_tensors(self.owner))


def changed_tensors(owner: Any) -> list[Tensor]:
    """Every tensor a base step may change: the trainable weights, the base optimizer's state
    tensors and LookSAM's direction."""
    params = [p for g in owner.param_groups for p in g["params"] if p.requires_grad]
    out = list(params)
    base_state = owner.base_optimizer.state
    for p in params:
        state = base_state.get(p)
        if state:
            out.extend(v for v in state.values() if isinstance(v, Tensor))
        own = owner.state.get(p)
        if own and "reuse" in own:
            out.append(own["reuse"])
    return out


def drop_state_not_in(owner: Any, kept: set[int]) -> None:
    """Remove the state tensors a step that was not applied created."""
    for states in (owner.base_optimizer.state, owner.state):
        for p in list(states):
            for k in [k for k, v in states[p].items()
                      if isinstance(v, Tensor) and id(v) not in kept and k != "fisher_mask"]:
                del states[p][k]
            if not states[p]:
                del states[p]


def store_reuse(owner: Any, params: list[Tensor], reuse: list[Tensor]) -> None:
    """LookSAM's direction of this step into the state (in place once it exists, so the
    rollback undoes it with the weights)."""
    stored = [owner.state[p].get("reuse") for p in params]
    if all(v is not None and v.shape == r.shape for v, r in zip(stored, reuse, strict=True)):
        torch._foreach_copy_(stored, reuse)
        return
    for p, v in zip(params, reuse, strict=True):
        owner.state[p]["reuse"] = v
