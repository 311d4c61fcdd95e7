"""Whether a step was finite, judged on the device and read on the host only when asked.

A :class:`~metasam.UniversalSAM` step ends with the values it must check (each pass's loss and
gradient norm, the surrogate, the combined gradient's norm) stacked on the device. By default
the step does not read them: it applies the base optimizer's step and then keeps it or undoes
it *on the device* (:class:`Rollback`: the weights, the base optimizer's state and LookSAM's
direction are copied before the step and selected back with one ``torch.where`` per device and
dtype), so a run queues its kernels without a host synchronization per step.

The verdicts wait in :class:`Verdicts` until they are *settled* by one host read: when a
:class:`StepInfo` field, ``skipped_steps`` or the state is read, on ``optimizer.check()``,
every ``Verdicts.LIMIT`` steps, and at the end of each of the trainer's epochs. Under
``on_nonfinite="raise"`` the first non-finite step makes every later step a no-op on the device
(its flag is sticky), and the settlement raises :class:`~metasam.errors.NonFiniteStepError`
naming that step's pass and number, with the weights and optimizer state as they were before
it: deferring the check changes *when* the error is seen, not what training did. BatchNorm's
running statistics still absorb the forward passes of the steps in between (as the unperturbed
pass of a failed step always did).

A step whose state is new (the first one, or one after the base optimizer created state) is
judged on the host, as ``strict=True`` judges every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from metasam.errors import NonFiniteStepError
from metasam.optim.kernels import flat_buffers

UNPERTURBED = "unperturbed pass"


@dataclass
class Record:
    """One step's values to check, on the device, and what each one is called."""

    step: int
    names: tuple[tuple[str, str], ...]   # (pass, what) per value
    values: Tensor                       # a vector, one entry per name
    info: StepInfo


def culprit(names: tuple[tuple[str, str], ...], host: list[float]) -> tuple[str, str] | None:
    """(pass, "what (value)") of the first non-finite of ``host``, named by ``names`` ((pass,
    what) each), or None when all are finite."""
    for (pass_name, what), value in zip(names, host, strict=True):
        if not math.isfinite(value):
            return pass_name, f"{what} ({value:g})"
    return None


def ids(tensors: list[Tensor]) -> tuple[int, ...]:
    """The identity of a set of tensors (the rollback's and the state's key)."""
    return tuple(id(t) for t in tensors)


class Rollback:
    """The tensors a base step changes, copied before it and selected back after it when the
    step is judged non-finite, on the device (see the module's docstring).

    Per device and dtype one flat copy and one flat staging buffer: three ``_foreach_copy_``
    and one ``where`` per group and step, whatever the number of tensors."""

    def __init__(self) -> None:
        self.key: tuple[int, ...] = ()
        self._groups: list[tuple[list[Tensor], list[Tensor], Tensor, list[Tensor], Tensor]] = []

    def save(self, tensors: list[Tensor]) -> None:
        """Copy ``tensors`` (allocating the buffers when the set of tensors changed)."""
        if self.key != ids(tensors):
            self.key = ids(tensors)
            self._groups = []
            for index, saved, saved_views in flat_buffers(tensors):
                staged = torch.empty_like(saved)
                self._groups.append((
                    [tensors[i] for i in index], saved_views, saved,
                    [staged.narrow(0, view.storage_offset(), view.numel()).view(view.shape)
                     for view in saved_views], staged))
        for members, saved_views, _, _, _ in self._groups:
            torch._foreach_copy_(saved_views, members)

    def keep_if(self, ok: Tensor) -> None:
        """Every saved tensor back to its copy unless ``ok`` (a 0-dim bool tensor)."""
        for members, _, saved, staged_views, staged in self._groups:
            torch._foreach_copy_(staged_views, members)
            torch.where(ok.to(staged.device), staged, saved, out=staged)
            torch._foreach_copy_(members, staged_views)

    def forget(self) -> None:
        self.key, self._groups = (), []


class Verdicts:
    """The steps judged on the device and not yet read (see the module's docstring)."""

    LIMIT = 1024   # pending steps settled at the latest (one host read per LIMIT steps)

    def __init__(self, policy: str, prefix: str = "") -> None:
        self.policy = policy          # "raise" or "skip"
        self.prefix = prefix          # of a skipped step's reason ("fp16 overflow ...: ")
        self.pending: list[Record] = []
        self.skipped = 0
        self._flag: Tensor | None = None   # 0 while every pending step is finite, else NaN

    def flag(self, device: torch.device) -> Tensor:
        if self._flag is None or self._flag.device != device:
            self._flag = torch.zeros((), device=device, dtype=torch.float64)
        return self._flag

    def judge(self, record: Record) -> Tensor:
        """Add ``record``'s values (times 0: NaN when one is not finite) to the flag; returns
        whether the step may be applied (0-dim bool)."""
        flag = self.flag(record.values.device)
        total = record.values.sum()
        if self.policy == "raise":
            flag.add_(total, alpha=0)
            ok = flag.eq(0)   # sticky: no step after a failed one is applied
        else:
            step_flag = total * 0
            flag.add_(step_flag)
            ok = step_flag.eq(0)
        self.pending.append(record)
        return ok

    def settle(self) -> None:
        """One host read of the flag (and, after a failure, of the pending values): the
        skipped steps counted and explained, or NonFiniteStepError for the first failed step
        under ``"raise"``."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        flag = self._flag
        if flag is not None and math.isfinite(float(flag)):
            for record in pending:
                record.info._verdict = None
            return
        assert flag is not None
        flag.zero_()
        device = flag.device
        host = torch.cat([r.values.to(device, torch.float64) for r in pending]).tolist()
        start, failed = 0, None
        for record in pending:
            values = host[start:start + len(record.names)]
            start += len(record.names)
            if failed is not None:
                record.info._verdict = f"not applied: step {failed[0].step} failed before it"
                continue
            found = culprit(record.names, values)
            record.info._verdict = None if found is None else \
                f"{self.prefix}non-finite {found[1]} in the {found[0]}"
            if found is None:
                continue
            if self.policy == "raise":
                failed = (record, found)
            else:
                self.skipped += 1
        if failed is not None:
            record, (pass_name, detail) = failed
            raise NonFiniteStepError(pass_name, detail, record.step, found_at=pending[-1].step)


@dataclass
class StepInfo:
    """What the last :meth:`UniversalSAM.step` did.

    ``step`` and ``passes`` are known on the host; the other fields stay on the device
    (:attr:`tensors`) and become Python numbers when first read — one transfer for all, after
    the optimizer's pending verdicts are settled (so a deferred
    :class:`~metasam.errors.NonFiniteStepError` surfaces on that read).

    ``loss`` is the loss at x; ``sharpness`` ψ((1/n)Σφ(D_i)), ``regularizer`` λ·ρ²·sharpness
    (the term added to the loss), ``d`` the loss differences D_i and ``weights`` the
    w_i = ∂ψ·φ'(D_i); ``grad_norm`` the norm of the gradient handed to the base optimizer,
    before clipping; ``skipped`` the reason when the step was not applied (``on_nonfinite=
    "skip"``, an fp16 overflow, or under ``"raise"`` a step after a failed one);
    ``guard_factor`` the factor the spec's ``guard`` scaled the sharpness part by (1.0 within
    bounds; ``None`` without a guard) and ``sharpness_share`` ‖sharpness part‖/‖g0‖ before it.
    ``passes`` counts the forward/backward passes the step really made (1 for plain training or
    when no parameter is perturbed, 1 + n otherwise, a skipped step included).
    """

    step: int
    passes: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    applied: Tensor | None = None   # whether the step was applied (0-dim bool, on the device)
    regularizer_factor: float | None = None   # λ·ρ²
    settle: Callable[[], None] | None = field(default=None, repr=False)
    _verdict: str | None = field(default=None, repr=False)
    _host: dict[str, Any] | None = field(default=None, repr=False)

    def _read(self) -> dict[str, Any]:
        if self.settle is not None:
            settle, self.settle = self.settle, None
            settle()
        if self._host is None:
            host: dict[str, Any] = {}
            names = list(self.tensors)
            if names:
                values = [self.tensors[k].reshape(-1) for k in names]
                device = values[0].device
                flat = torch.cat([v.to(device, torch.float64) for v in values]).tolist()
                start = 0
                for k, v in zip(names, values, strict=True):
                    part = flat[start:start + v.numel()]
                    start += v.numel()
                    host[k] = part if self.tensors[k].dim() else part[0]
            self._host = host
        return self._host

    @property
    def skipped_on_host(self) -> bool:
        """Judged on the host and not applied (known without reading the device)."""
        return self.applied is None and self.settle is None and self._verdict is not None

    @property
    def skipped(self) -> str | None:
        self._read()
        return self._verdict

    @property
    def loss(self) -> float:
        return math.nan if self.skipped is not None else self._read().get("loss", math.nan)

    @property
    def sharpness(self) -> float | None:
        return self._read().get("sharpness") if self.skipped is None else None

    @property
    def regularizer(self) -> float | None:
        sharpness = self.sharpness
        if sharpness is None or self.regularizer_factor is None:
            return None
        return self.regularizer_factor * sharpness

    @property
    def grad_norm(self) -> float | None:
        if self.skipped is not None:
            return None
        host = self._read()
        if "grad_parts" in host:   # a plain step: the norm from the per-tensor norms
            return math.sqrt(sum(v * v for v in host["grad_parts"][1:]))
        return host.get("grad_norm")

    @property
    def d(self) -> list[float]:
        return list(self._read().get("d", [])) if self.skipped is None else []

    @property
    def weights(self) -> list[float]:
        return list(self._read().get("weights", [])) if self.skipped is None else []

    @property
    def guard_factor(self) -> float | None:
        guard = self._read().get("guard") if self.skipped is None else None
        return None if guard is None else guard[0]

    @property
    def sharpness_share(self) -> float | None:
        guard = self._read().get("guard") if self.skipped is None else None
        return None if guard is None else guard[1]


def skipped_info(step: int, passes: int, reason: str) -> StepInfo:
    """The StepInfo of a step judged on the host and not applied."""
    return StepInfo(step, passes, _verdict=reason, _host={})
