"""Operators and host reads per steady-state step through the trainer's own epoch loop
(``Trial.train_epoch``), against the plain loop a user writes around the same model, loader and
base optimizer (:func:`metasam.training.step_cost.step_cost`: epochs of 2k and k steps differenced).

    python scripts/step_cost.py                       # digits, CNN, batch 32, every preset
    python scripts/step_cost.py --presets sgd,sam --model resnet18 --dataset cifar10-S

Prints per preset: the trainer's operators and host reads per step, the plain loop's (two
passes with SAM's ascent for a spec with one perturbation, else one), their ratio, and the
operators the trainer adds beyond the plain loop, by name. Counts are exact (the same on every
run): on a GPU the operators are the proxies of kernel launches, host reads of syncs.
"""

from __future__ import annotations

import argparse

from metasam import presets
from metasam.training.config import TrainConfig
from metasam.training.step_cost import step_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(presets.NAMES))
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="k: epochs of 2k and k steps")
    args = parser.parse_args()
    print(f"dataset={args.dataset} model={args.model} batch={args.batch} "
          f"(per steady-state step, epochs of {2 * args.steps} and {args.steps} steps)")
    print(f"{'preset':<11} {'ops':>7} {'plain ops':>9} {'ratio':>6} {'host reads':>10}  "
          "operators beyond the plain loop")
    for name in args.presets.split(","):
        config = TrainConfig(dataset=args.dataset, model=args.model, preset=name,
                             batch_size=args.batch, epochs=3)
        cost = step_cost(config, steps=args.steps)
        extra = ", ".join(f"{k} {v:+g}" for k, v in sorted(
            cost.extra_by_op.items(), key=lambda kv: (-abs(kv[1]), kv[0])))
        print(f"{name:<11} {cost.ops:>7.1f} {cost.plain_ops:>9.1f} {cost.ratio:>6.3f} "
              f"{cost.host_reads:>10.1f}  {extra}")


if __name__ == "__main__":
    main()
