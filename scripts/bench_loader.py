"""Epoch time of metasam's device-resident loader against torch.utils.data with the same
augmentation (random crop with 4-pixel zero padding, horizontal flip, normalization), interleaved
in one process.

    python scripts/bench_loader.py --data-dir ../shared/data            # CIFAR-10 (JPEG copy)
    python scripts/bench_loader.py --device cuda --data-dir DIR

Prints the median epoch time of each loader and the ratios. The torch.utils.data baseline uses
torchvision.transforms.v2 per image, as a typical training script does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torchvision.transforms import v2

from metasam.data import DeviceLoader, load_dataset
from metasam.data.arrays import ArrayData


class PerImage(torch.utils.data.Dataset):
    def __init__(self, data: ArrayData) -> None:
        self.x, self.y = data.x, data.y
        self.transform = v2.Compose([
            v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="cifar10-jpeg")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=10000, help="training examples used")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts to compare")
    args = parser.parse_args()

    device = torch.device(args.device)
    train, _ = load_dataset(args.dataset, args.data_dir)
    train = train.subset(torch.arange(min(args.examples, len(train))))

    def device_epoch() -> None:
        loader = DeviceLoader(train, args.batch, device, augment="crop_flip", seed=0)
        for x, _ in loader:
            x.sum()
        if device.type == "cuda":
            torch.cuda.synchronize()

    def torch_epoch(workers: int):
        loader = torch.utils.data.DataLoader(PerImage(train), batch_size=args.batch, shuffle=True,
                                             num_workers=workers,
                                             pin_memory=device.type == "cuda",
                                             persistent_workers=False)

        def run() -> None:
            for x, _ in loader:
                x.to(device, non_blocking=True).sum()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    methods = {"device-resident": device_epoch}
    for w in (int(v) for v in args.workers.split(",") if v):
        methods[f"torch.utils.data ({w} workers)"] = torch_epoch(w)
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods.items())
    shuffler = random.Random(0)
    for _name, run in order:  # warm-up
        run()
    for _ in range(args.rounds):
        shuffler.shuffle(order)
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    fast = median["device-resident"]
    print(f"dataset={args.dataset} examples={len(train)} batch={args.batch} device={device} "
          f"threads={torch.get_num_threads()} rounds={args.rounds} (medians, interleaved)")
    for name, value in median.items():
        print(f"{name:<32} {value * 1e3:9.1f} ms/epoch   {value / fast:6.1f}x the device loader")


if __name__ == "__main__":
    main()
