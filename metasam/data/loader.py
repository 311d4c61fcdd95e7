"""A device-resident loader: the whole dataset lives on the device, batches are slices of a
seeded permutation, and augmentation (random crop with zero padding, horizontal flip) runs
batched on the device, its random draws from a generator on the device (no host→device copy
per batch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from metasam.data.arrays import ArrayData

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


def random_crop_flip(x: Tensor, crop_pad: int, flip: bool, generator: torch.Generator
                     ) -> Tensor:
    """Batched random crop (zero padding ``crop_pad``) and horizontal flip of raw images
    (N, C, H, W); the random draws come from ``generator`` on its own device (the images'
    device, so nothing is copied per batch; a CPU generator for images elsewhere is copied)."""
    n = x.shape[0]
    where = generator.device
    if crop_pad:
        h, w = x.shape[-2:]
        padded = F.pad(x, (crop_pad,) * 4)
        top = torch.randint(0, 2 * crop_pad + 1, (n,), generator=generator,
                            device=where).to(x.device)
        left = torch.randint(0, 2 * crop_pad + 1, (n,), generator=generator,
                             device=where).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator, device=where) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


class DeviceLoader:
    """Iterate over ``data`` in batches on ``device``.

    Each epoch draws a permutation from the loader's own generator, the augmentation's draws
    from a generator on the device (both seeded; their states are part of :meth:`state_dict`,
    so a resumed run sees the same batches; on a CPU they are one generator). The
    normalization's constants are built once. Yields normalized float32 inputs and int64
    labels.

    Example::

        loader = DeviceLoader(splits.train, batch_size=128, device="cuda", augment="crop_flip",
                              seed=0)
        for x, y in loader:
            ...
    """

    def __init__(self, data: ArrayData, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, augment: str = "none", drop_last: bool = False,
                 seed: int = 0, channels_last: bool = False) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment: unknown value {augment!r}; allowed: "
                             f"{', '.join(AUGMENTATIONS)}")
        if augment != "none" and data.x.ndim != 4:
            raise ValueError(f"augment: {augment!r} needs images (N, C, H, W), "
                             f"got shape {tuple(data.x.shape)}")
        self.data = data
        self.device = torch.device(device)
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.crop_pad = 4 if augment in ("crop", "crop_flip") else 0
        self.flip = augment in ("flip", "crop_flip")
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.generator = torch.Generator().manual_seed(seed)
        self.augment_generator = (self.generator if self.device.type == "cpu" else
                                  torch.Generator(device=self.device).manual_seed(seed))
        self._constants = data.constants(self.device, data.x.ndim)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.data)
        order = (torch.randperm(n, generator=self.generator) if self.shuffle
                 else torch.arange(n)).to(self.device)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.x[index]
            if self.crop_pad or self.flip:
                x = random_crop_flip(x, self.crop_pad, self.flip, self.augment_generator)
            x = self.data.normalize(x, self._constants)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[index]

    def state_dict(self) -> dict[str, Tensor]:
        state = {"generator": self.generator.get_state()}
        if self.augment_generator is not self.generator:
            state["augment_generator"] = self.augment_generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])
        if self.augment_generator is not self.generator and "augment_generator" in state:
            self.augment_generator.set_state(state["augment_generator"])
