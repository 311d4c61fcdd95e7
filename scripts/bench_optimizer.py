"""Step time of every preset against a plain SGD step, and of the ``sam`` preset against a plain
two-pass SAM written here, on the same model and batch, interleaved in one process.

    python scripts/bench_optimizer.py                     # CPU, small CNN
    python scripts/bench_optimizer.py --device cuda --model resnet18 --batch 128

Prints one line per method: median step time, ratio to SGD, the target ratio 1.1·(n + 1), the
aten operators and host reads of tensor values of one steady-state step
(:class:`metasam.optim.counting.OpCounter`: on a GPU, the proxies of kernel launches and host
syncs), and for ``sam`` the ratio to the plain SAM (target ≤ 1.05; ops ≤ 1.15×, ``sgd`` ≤
1.10× plain SGD). Absolute times mean little on a shared CPU; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from metasam import UniversalSAM, presets
from metasam.optim.counting import OpCounter, PlainSAM, PlainSGD


def small_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def build_model(name: str) -> nn.Module:
    if name == "cnn":
        return small_cnn()
    try:
        from metasam.models import build_model as build
        return build(name, num_classes=10)
    except ImportError:  # the models package is optional here
        import torchvision
        return torchvision.models.resnet18(num_classes=10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cnn", help="cnn (default) or resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--presets", default=",".join(presets.NAMES))
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def closure():
        for p in model.parameters():
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    methods: dict[str, object] = {"plain-sgd": PlainSGD(model.parameters(), 1e-4),
                                  "plain-sam": PlainSAM(model.parameters(), 1e-4)}
    for name in args.presets.split(","):
        opt = UniversalSAM(model.parameters(), torch.optim.SGD, name, model=model, lr=1e-4,
                           momentum=0.9, seed=0)
        if name == "ssam":
            opt.update_fisher_mask(model, F.cross_entropy, x[:16], y[:16])
        opt.passes = opt.spec.passes  # type: ignore[attr-defined]
        methods[name] = opt

    times: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, OpCounter] = {}
    for name, opt in methods.items():  # warm-up, then one counted steady-state step
        opt.step(closure)  # type: ignore[attr-defined]
        opt.step(closure)  # type: ignore[attr-defined]
        with OpCounter() as counts[name]:
            opt.step(closure)  # type: ignore[attr-defined]
    order = list(methods.items())
    shuffler = random.Random(0)
    for _ in range(args.rounds):
        shuffler.shuffle(order)  # no method always runs right after the same other one
        for name, opt in order:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.step(closure)  # type: ignore[attr-defined]
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)

    median = {name: statistics.median(t) for name, t in times.items()}
    params = sum(p.numel() for p in model.parameters())
    print(f"device={device} model={args.model} params={params} batch={args.batch} "
          f"rounds={args.rounds}x{args.steps} steps (medians, interleaved)")
    print(f"{'method':<11} {'passes':>6} {'ms/step':>9} {'vs SGD':>7} {'target':>7}  verdict"
          f"  {'aten ops':>8} {'host reads':>10}")
    sgd = median["plain-sgd"]
    for name, opt in methods.items():
        passes = opt.passes  # type: ignore[attr-defined]
        ratio = median[name] / sgd
        target = 1.1 * passes
        verdict = "ok" if ratio <= target else "SLOW"
        print(f"{name:<11} {passes:>6} {median[name] * 1e3:>9.2f} {ratio:>7.2f} {target:>7.2f}"
              f"  {verdict:<7}  {counts[name].ops:>8} {counts[name].host_reads:>10}")
    if "sam" in median:
        ratio = median["sam"] / median["plain-sam"]
        print(f"sam / plain-sam = {ratio:.3f} (target ≤ 1.05: "
              f"{'ok' if ratio <= 1.05 else 'SLOW'})")
    for name, plain, target in (("sam", "plain-sam", 1.15), ("sgd", "plain-sgd", 1.10)):
        if name in counts:
            ratio = counts[name].ops / counts[plain].ops
            print(f"aten ops {name} / {plain} = {ratio:.3f} (target ≤ {target:.2f}: "
                  f"{'ok' if ratio <= target else 'OVER'}); host reads per step: "
                  f"{counts[name].host_reads} (where: {dict(counts[name].reads_at)})")


if __name__ == "__main__":
    main()
