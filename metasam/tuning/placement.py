"""Where a trial ran: host, Ray node, device (and GPU), threads, and the library versions that
shape its results. Recorded with every trial (``placement`` in its user attributes), shown by
``metasam trials`` and carried by ``trials --json`` and the export, so a slow or failing node
can be traced.

    >>> p = Placement.here(torch.device("cpu"))
    >>> Placement.from_dict(p.to_dict()) == p
    True
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from metasam._version import __version__


@dataclass(frozen=True)
class Placement:
    host: str
    device: str                  # "cpu", "cuda:0", ...
    threads: int                 # torch's intra-op threads
    torch: str
    metasam: str
    node: str | None = None      # the Ray node id (None outside Ray)
    gpu: str | None = None       # the GPU's name, where there is one
    gpu_ids: list[str] = field(default_factory=list)  # Ray's GPUs for the trial (fractions share)

    @classmethod
    def here(cls, device: torch.device) -> Placement:
        """This process, training on ``device`` (inside a Ray worker: its node and GPUs)."""
        node, gpu_ids = None, []
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
                gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        except Exception:  # outside a Ray worker: a plain process
            pass
        gpu = None
        if device.type == "cuda":
            gpu = torch.cuda.get_device_name(device)
        return cls(socket.gethostname(), str(device), torch.get_num_threads(),
                   torch.__version__, __version__, node, gpu, gpu_ids)

    @property
    def where(self) -> str:
        """``host/node/device`` for a table column: the first 8 characters of the Ray node id,
        and the GPU's name when there is one."""
        node = f"/{self.node[:8]}" if self.node else ""
        return f"{self.host}{node}/{self.gpu or self.device}"

    @property
    def machine(self) -> tuple[str, str | None]:
        """(host, Ray node): what tells two workers apart, also on one host."""
        return self.host, self.node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
