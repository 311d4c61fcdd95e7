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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from metasam.errors import NonFiniteStepError
from metasam.optim.kernels import KeyedBuffers, flat_buffers

if TYPE_CHECKING:
    from metasam.optim.step_info import StepInfo

UNPERTURBED = "unperturbed pass"
PERTURBED = "perturbation {i} of {n}"
SURROGATE = "sharpness surrogate"
COMBINED = "combined gradient"


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


class Rollback:
    """The tensors a base step changes, copied before it and selected back after it when the
    step is judged non-finite, on the device (see the module's docstring).

    Per device and dtype one flat copy and one flat staging buffer: three ``_foreach_copy_``
    and one ``where`` per group and step, whatever the number of tensors."""

    def __init__(self) -> None:
        self._groups = KeyedBuffers(_rollback_groups)

    def save(self, tensors: list[Tensor]) -> None:
        """Copy ``tensors`` (allocating the buffers when the set of tensors changed)."""
        for members, saved_views, _, _, _ in self._groups.get(tensors):
            torch._foreach_copy_(saved_views, members)

    def keep_if(self, ok: Tensor) -> None:
        """Every saved tensor back to its copy unless ``ok`` (a 0-dim bool tensor)."""
        for members, _, saved, staged_views, staged in self._groups.value or []:
            torch._foreach_copy_(staged_views, members)
            torch.where(ok.to(staged.device), staged, saved, out=staged)
            torch._foreach_copy_(members, staged_views)

    def forget(self) -> None:
        self._groups.forget()


def _rollback_groups(tensors: list[Tensor]
                     ) -> list[tuple[list[Tensor], list[Tensor], Tensor, list[Tensor], Tensor]]:
    """Per device and dtype: (the tensors, views of the flat copy, the flat copy, views of the
    flat staging buffer, the staging buffer)."""
    groups = []
    for index, saved, saved_views in flat_buffers(tensors):
        staged = torch.empty_like(saved)
        groups.append(([tensors[i] for i in index], saved_views, saved,
                       [staged.narrow(0, view.storage_offset(), view.numel()).view(view.shape)
                        for view in saved_views], staged))
    return groups


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

    def host_failure(self, step: int, pass_name: str, detail: str) -> None:
        """A step judged on the host and found not finite: raise
        :class:`~metasam.errors.NonFiniteStepError` under ``"raise"``, else count it skipped."""
        if self.policy == "raise":
            raise NonFiniteStepError(pass_name, detail, step)
        self.skipped += 1

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
