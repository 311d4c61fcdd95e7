"""Hutchinson trace with metasam's batched Hessian-vector products against a sequential
double-backward loop (PyHessian's method, written here: for every probe and every batch a forward
pass, a create_graph backward and a second backward), with the same probes and data, interleaved
in one process.

    python scripts/bench_hessian.py                      # CPU, small CNN
    python scripts/bench_hessian.py --device cuda --model resnet18

Prints both times, the speed ratio (target ≥ 1.5× on CPU) and the largest difference between the
two estimates (they must agree to float precision).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from metasam.models import build_model
from metasam.sharpness import HessianOperator
from metasam.sharpness.estimators import probes as draw_probes


def sequential_hvps(model, batches, params, vectors):
    """PyHessian's loop: one probe at a time, every batch recomputed for every probe."""
    numels = [p.numel() for p in params]
    total = sum(int(y.shape[0]) for _, y in batches)
    out = []
    for v in vectors:
        pieces = [piece.reshape(p.shape) for piece, p in zip(v.split(numels), params)]
        hv = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            products = torch.autograd.grad(grads, params, grad_outputs=pieces)
            hv = [acc + prod * (y.shape[0] / total) for acc, prod in zip(hv, products)]
        out.append(torch.cat([h.reshape(-1) for h in hv]).double())
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="cnn", help="cnn, mlp or resnet18")
    parser.add_argument("--backend", default="auto", help="auto, batched or loop")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (1, 28, 28) if args.model == "mlp" else (3, 32, 32)
    model = build_model(args.model, shape, 10).to(device).eval()
    x = torch.randn(args.examples, *shape, device=device)
    y = torch.randint(0, 10, (args.examples,), device=device)
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, args.examples,
                                                                         args.batch)]
    params = [p for p in model.parameters() if p.requires_grad]
    op = HessianOperator(model, F.cross_entropy, batches, chunk=args.chunk,
                         backend=args.backend)
    vectors = draw_probes(args.probes, op.dim, torch.Generator().manual_seed(0)).to(
        device, op.dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def batched():
        out = op.matvec(vectors)
        sync()
        return out

    def sequential():
        out = sequential_hvps(model, batches, params, vectors)
        sync()
        return out

    times: dict[str, list[float]] = {"batched": [], "sequential": []}
    results = {}
    for name, fn in (("batched", batched), ("sequential", sequential)):
        results[name] = fn()  # warm-up, and the results compared below
    for r in range(args.rounds):
        order = [("batched", batched), ("sequential", sequential)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    trace = {name: float((vectors.double() * hv).sum(1).mean()) for name, hv in results.items()}
    diff = float((results["batched"] - results["sequential"]).abs().max())
    scale = float(results["sequential"].abs().max())
    b, s = statistics.median(times["batched"]), statistics.median(times["sequential"])
    print(f"model={args.model} params={op.dim} device={device} examples={args.examples} "
          f"batches={len(batches)} probes={args.probes} chunk={args.chunk} rounds={args.rounds} "
          f"backend={op.backend}")
    print(f"batched HVPs     {b:8.3f} s")
    print(f"sequential loop  {s:8.3f} s")
    print(f"speed-up         {s / b:8.2f}x  (target ≥ 1.5x on CPU)")
    print(f"trace estimates  {trace['batched']:.6g} vs {trace['sequential']:.6g}; "
          f"max |ΔHv| = {diff:.2e} (relative {diff / scale:.1e})")


if __name__ == "__main__":
    main()
