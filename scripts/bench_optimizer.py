"""Step time of every preset against a plain SGD step, and of the ``sam`` preset against a plain
two-pass SAM written here, on the same model and batch, interleaved in one process.

    python scripts/bench_optimizer.py                     # CPU, small CNN
    python scripts/bench_optimizer.py --device cuda --bf16 --channels-last --model resnet18 \\
        --batch 256 --presets sgd,sam --compile           # the GPU check, one call
    python scripts/bench_optimizer.py ... --fused         # fused SGD, here and in the plain loops

Prints one line per method: median step time, ratio to plain SGD, the target ratio 1.1·(n + 1),
TFLOP/s (the forward and backward FLOPs of the passes the step makes, counted once by torch's
``FlopCounterMode``, over the median time), the aten operators and host reads of one
steady-state step (:class:`metasam.optim.counting.OpCounter`: on a GPU, the proxies of kernel
launches), and on CUDA the synchronizations of that step (``torch.cuda.set_sync_debug_mode``:
every operation that makes the host wait for the device warns once). Then the ratios the
issues set targets for: ``sam`` / plain SAM time (≤ 1.05; ``sgd`` / plain SGD ≤ 1.03 on a GPU),
operators (``sam`` ≤ 1.15×, ``sgd`` ≤ 1.10×), and with ``--compile`` the compiled step
(``compile=True``: the ascent, combine, guard and norm through ``torch.compile``) against the
eager one. The plain loops use the same base optimizer (``torch.optim.SGD``, momentum 0.9).
Absolute times on a shared CPU mean little; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
import warnings
from collections.abc import Callable

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
    from metasam.models import build_model as build
    return build(name, (3, 32, 32), 10)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_syncs(device: torch.device, step: Callable[[], object]) -> int | None:
    """The host synchronizations one call of ``step`` makes (CUDA's sync debug mode warns once
    per synchronizing operation); None on a CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def flops_per_pass(closure: Callable[[], torch.Tensor]) -> int:
    """Forward and backward FLOPs of one pass of ``closure`` (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        closure()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cnn", help="cnn (default) or resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3, help="steps per method per round")
    parser.add_argument("--presets", default=",".join(presets.NAMES))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast of the passes")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last model and inputs")
    parser.add_argument("--compile", action="store_true",
                        help="add the compiled step (compile=True) of each preset")
    parser.add_argument("--fused", action="store_true",
                        help="fused SGD as the base optimizer, in the plain loops too (a "
                             "non-finite step is then skipped by its kernel, not undone)")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast() -> contextlib.AbstractContextManager[object]:
        if not args.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def closure() -> torch.Tensor:
        for p in model.parameters():
            p.grad = None
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        return loss

    fused = True if args.fused else None
    methods: dict[str, object] = {"plain-sgd": PlainSGD(model.parameters(), 1e-4, fused=fused),
                                  "plain-sam": PlainSAM(model.parameters(), 1e-4, fused=fused)}
    for name in args.presets.split(","):
        for compiled in (False, True) if args.compile else (False,):
            opt = UniversalSAM(model.parameters(), torch.optim.SGD, name, model=model, lr=1e-4,
                               momentum=0.9, seed=0, compile=compiled, fused=fused)
            if name == "ssam":
                opt.update_fisher_mask(model, F.cross_entropy, x[:16], y[:16])
            opt.passes = opt.spec.passes  # type: ignore[attr-defined]
            methods[name + ("+compile" if compiled else "")] = opt

    flops = flops_per_pass(closure)
    times: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, OpCounter] = {}
    syncs: dict[str, int | None] = {}
    for name, opt in methods.items():  # warm-up (and compilation), then counted steps
        for _ in range(3):
            opt.step(closure)  # type: ignore[attr-defined]
        with OpCounter() as counts[name]:
            opt.step(closure)  # type: ignore[attr-defined]
        syncs[name] = count_syncs(device, lambda opt=opt: opt.step(closure))  # type: ignore[attr-defined,misc]
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
    for opt in methods.values():
        if isinstance(opt, UniversalSAM):
            opt.check()

    median = {name: statistics.median(t) for name, t in times.items()}
    params = sum(p.numel() for p in model.parameters())
    name_of_device = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({name_of_device}) model={args.model} params={params} "
          f"batch={args.batch} bf16={args.bf16} channels_last={args.channels_last} "
          f"fused={args.fused} "
          f"rounds={args.rounds}x{args.steps} steps (medians, interleaved)")
    print(f"{'method':<17} {'passes':>6} {'ms/step':>9} {'vs SGD':>7} {'target':>7}  verdict"
          f"  {'TFLOP/s':>8} {'aten ops':>8} {'host reads':>10} {'syncs':>6}")
    sgd = median["plain-sgd"]
    for name, opt in methods.items():
        passes = opt.passes  # type: ignore[attr-defined]
        ratio = median[name] / sgd
        target = 1.1 * passes
        verdict = "ok" if ratio <= target else "SLOW"
        tflops = passes * flops / median[name] / 1e12
        n_syncs = "-" if syncs[name] is None else str(syncs[name])
        # under a dispatch mode torch.compile runs its function eagerly: no count to show
        ops = "-" if name.endswith("+compile") else str(counts[name].ops)
        print(f"{name:<17} {passes:>6} {median[name] * 1e3:>9.2f} {ratio:>7.2f} {target:>7.2f}"
              f"  {verdict:<7}  {tflops:>8.3f} {ops:>8} "
              f"{counts[name].host_reads:>10} {n_syncs:>6}")
    time_targets = (("sam", "plain-sam", 1.05), ("sgd", "plain-sgd",
                                                  1.03 if device.type == "cuda" else 1.05))
    for name, plain, target in time_targets:
        if name in median:
            ratio = median[name] / median[plain]
            print(f"time {name} / {plain} = {ratio:.3f} (target ≤ {target:.2f}: "
                  f"{'ok' if ratio <= target else 'SLOW'})")
    for name, plain, target in (("sam", "plain-sam", 1.15), ("sgd", "plain-sgd", 1.10)):
        if name in counts:
            ratio = counts[name].ops / counts[plain].ops
            print(f"aten ops {name} / {plain} = {ratio:.3f} (target ≤ {target:.2f}: "
                  f"{'ok' if ratio <= target else 'OVER'}); host reads per step: "
                  f"{counts[name].host_reads} (where: {dict(counts[name].reads_at)})")
    for name in methods:
        if name.endswith("+compile"):
            eager = name.removesuffix("+compile")
            print(f"time {name} / {eager} = {median[name] / median[eager]:.3f}")


if __name__ == "__main__":
    main()
