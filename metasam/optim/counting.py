"""What a step costs besides time: the aten operators it dispatches and the device values it
reads back to the host — on a CPU, the proxies of a GPU's kernel launches and host syncs.

    with OpCounter() as count:
        optimizer.step(closure)
    print(count.ops, count.host_reads)

``ops`` counts every aten operator call that reaches the dispatcher while the counter is
active (forward, backward and the optimizer's own arithmetic; a ``_foreach_*`` call over many
tensors counts once, as it launches few kernels). ``host_reads`` counts the calls that turn a
tensor's value into a Python value — ``item``, ``tolist``, ``float``/``int``/``bool`` of a
tensor, ``numpy`` — each of which is a device→host synchronization on a GPU. ``by_op`` and
``reads_at`` say which operators and which call sites (file:line) they were.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


class _Ops(TorchDispatchMode):
    def __init__(self, counter: Counter[str]) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        self.counter[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class OpCounter:
    """A context manager counting aten operators and host reads of tensor values (see the
    module's docstring)."""

    def __init__(self) -> None:
        self.by_op: Counter[str] = Counter()
        self.reads_at: Counter[str] = Counter()
        self._mode = _Ops(self.by_op)
        self._saved: dict[str, Any] = {}

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def host_reads(self) -> int:
        return sum(self.reads_at.values())

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self.reads_at

        def read(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame = traceback.extract_stack(limit=2)[0]
            counter[f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {name}"] += 1
            return original(tensor, *args, **kwargs)

        return read

    def __enter__(self) -> OpCounter:
        for name in _READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()


class PlainSGD:
    """The plain loop a step is compared with: the closure, then ``torch.optim.SGD``."""

    passes = 1

    def __init__(self, params: Any, lr: float = 0.0, momentum: float = 0.9,
                 fused: bool | None = None, optimizer: Any = None) -> None:
        # optimizer: step this one (e.g. a trainer's base optimizer) instead of a new SGD
        self.opt = optimizer if optimizer is not None else torch.optim.SGD(
            params, lr=lr, momentum=momentum, fused=fused)

    def step(self, closure: Any) -> None:
        closure()
        self.opt.step()


class PlainSAM:
    """Two-pass SAM as usually written (ascent g/‖g‖, exact restore from a copy)."""

    passes = 2

    def __init__(self, params: Any, lr: float = 0.0, rho: float = 0.05,
                 momentum: float = 0.9, fused: bool | None = None,
                 optimizer: Any = None) -> None:
        self.params = [p for p in params if p.requires_grad]
        # optimizer: step this one (e.g. a trainer's base optimizer) instead of a new SGD
        self.opt = optimizer if optimizer is not None else torch.optim.SGD(
            self.params, lr=lr, momentum=momentum, fused=fused)
        self.rho = rho

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        with torch.enable_grad():
            closure()
        grads = [p.grad for p in self.params]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        old = [p.detach().clone() for p in self.params]
        torch._foreach_add_(self.params, torch._foreach_mul(grads, self.rho / (norm + 1e-12)))
        with torch.enable_grad():
            closure()
        torch._foreach_copy_(self.params, old)
        self.opt.step()
