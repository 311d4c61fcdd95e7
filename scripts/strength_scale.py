"""How far does each member move the update? Absolute against relative λ, and the guard's effect.

For two models (the 6-layer MLP and the small CNN) on digits with 20% label noise, trains each
member for a few epochs and records, at every step, the share of the update that is the
sharpness part, ‖combined gradient − g0‖ / ‖g0‖ (median and maximum over the steps):

- universal members at λ = 1 in the paper's absolute convention and in the relative one
  (``SharpnessSpec.lam_scale``): with absolute λ the share spans orders of magnitude between
  members whose φ and ψ scale D differently; with relative λ it stays within a small factor of
  SAM's at the same radius, on both models — one λ range serves every member;
- every preset at its official defaults with the search spaces' guard (5‖g0‖): how many steps
  the guard scaled (0 means it has no effect on the presets at their defaults).

Usage: ``python scripts/strength_scale.py [--epochs 3] [--guard 5]`` (a few minutes on CPU).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from metasam import SharpnessSpec, presets
from metasam.training import TrainConfig
from metasam.training.trainer import Trial

UNIVERSAL: dict[str, dict[str, Any]] = {
    "t+t², gaussian, n=2": {"phi": {"fn": "polynomial", "coefficients": [0, 1, 1]},
                            "measure": "gaussian", "n": 2},
    "t³, sphere, n=2": {"phi": {"fn": "polynomial", "coefficients": [0, 0, 0, 1]},
                        "measure": "sphere", "n": 2},
    "½var(t+½t²), gaussian, n=3": {
        "phi": [{"fn": "polynomial", "coefficients": [0, 1, 0.5]},
                {"fn": "polynomial", "coefficients": [0, 0, 1, 1, 0.25]}],
        "psi": "variance", "measure": "gaussian", "n": 3},
    "½var(t) (Frobenius), gaussian, n=2": {"phi": ["identity", "square"], "psi": "variance",
                                           "measure": "gaussian", "n": 2},
    "t+t², ascent": {"phi": {"fn": "polynomial", "coefficients": [0, 1, 1]},
                     "measure": "ascent", "n": 1},
}
NEVER = 1e12  # a guard that never acts: the share is measured, the step unchanged


def run(model: str, spec: SharpnessSpec, epochs: int) -> dict[str, float]:
    config = TrainConfig(dataset="digits", label_noise=0.2, model=model, epochs=epochs,
                         batch_size=64, lr=0.05, val_fraction=0.2, test="none",
                         spec=spec.to_dict(), num_threads=2, on_nonfinite="skip")
    trial = Trial(config)
    medians, maxima, guarded, steps = [], [], 0, 0
    for _ in range(epochs):
        metrics = trial.train_epoch()
        medians.append(metrics["sharpness_share_median"])
        maxima.append(metrics["sharpness_share_max"])
        guarded += metrics["guarded_steps"]
        steps += len(trial.loader)
    medians.sort()
    return {"median": medians[len(medians) // 2], "max": max(maxima), "guarded": guarded,
            "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--guard", type=float, default=5.0)
    parser.add_argument("--rho", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("## Share of the update that is the sharpness part, ‖c‖/‖g0‖ (median over epochs "
          "of the per-epoch median; max over all steps)\n")
    print("| member | model | λ = 1 absolute: median | max | λ = 1 relative: median | max |")
    print("|---|---|---|---|---|---|")
    spreads: dict[tuple[str, str], list[float]] = {}
    for model in ("mlp", "cnn"):
        sam = run(model, presets.sam(guard=NEVER, rho=args.rho), args.epochs)
        print(f"| SAM ρ={args.rho} (reference) | {model} | {sam['median']:.3g} | "
              f"{sam['max']:.3g} | {sam['median']:.3g} | {sam['max']:.3g} |", flush=True)
        for name, fields in UNIVERSAL.items():
            cells = []
            for scale in ("absolute", "relative"):
                spec = SharpnessSpec(**{**fields, "measure": _global(fields["measure"])},
                                     rho=args.rho, lam=1.0, lam_scale=scale, d_clip=50.0,
                                     guard=NEVER)
                r = run(model, spec, args.epochs)
                spreads.setdefault((model, scale), []).append(r["median"] / sam["median"])
                cells += [f"{r['median']:.3g}", f"{r['max']:.3g}"]
            print(f"| {name} | {model} | " + " | ".join(cells) + " |", flush=True)
    print("\nSpread of the median share across the universal members, relative to SAM's "
          "(min–max of median/SAM median):\n")
    for (model, scale), ratios in spreads.items():
        print(f"- {model}, {scale} λ: {min(ratios):.3g} – {max(ratios):.3g} "
              f"(a factor {max(ratios) / min(ratios):.3g})")
    print(f"\n## The guard (‖c‖ ≤ {args.guard:g}·‖g0‖) on every preset at its official "
          "defaults\n")
    print("| preset | model | median share | max share | guarded steps |")
    print("|---|---|---|---|---|")
    for model in ("mlp", "cnn"):
        for name in presets.NAMES:
            if name == "sgd":
                continue
            r = run(model, presets.get(name, guard=args.guard), args.epochs)
            print(f"| {name} | {model} | {r['median']:.3g} | {r['max']:.3g} | "
                  f"{r['guarded']}/{r['steps']} |", flush=True)
    return 0


def _global(kind: str) -> dict[str, str]:
    return {"kind": kind} if kind == "ascent" else {"kind": kind, "scale": "global"}


if __name__ == "__main__":
    sys.exit(main())
