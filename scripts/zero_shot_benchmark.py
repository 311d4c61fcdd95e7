"""Leave one task out over the shipped knowledge base: for each task, the zero-shot pick of a
base built without it (``metasam recommend``'s ranking from the task's descriptor), scored on
that task's own paired test seeds against the best default preset on test (an oracle no user
has) and against SAM at its default. Differences: mean ± 95% CI in points, two-sided paired p.

    python scripts/zero_shot_benchmark.py [--knowledge FILE] [--out docs/data/zero-shot-loo.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from metasam.meta.base import read_base, shipped_base
from metasam.meta.recommend import recommend
from metasam.stats import PairedDifference, paired_two_sided

PRESETS = ("sgd", "sam", "asam", "ssam")


def pair(a: list[float], b: list[float]) -> dict[str, float]:
    d = PairedDifference.of(a, b)
    return {"mean": 100 * d.mean, "ci95": 100 * d.ci95, "p": paired_two_sided(a, b),
            "n": d.n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--knowledge", default=None)
    parser.add_argument("--out", default="docs/data/zero-shot-loo.json")
    args = parser.parse_args()
    base = read_base(args.knowledge) if args.knowledge else shipped_base()
    rows = []
    for task in base.tasks:
        rec = recommend(base.without(task.name), task.descriptor)
        oracle = max(PRESETS, key=lambda c: statistics.fmean(task.test[c]))
        pick = task.test[rec.pick]
        row = {"task": task.name, "pick": rec.pick, "similar": rec.similar,
               "nearest": rec.nearest[0][0], "nearest_distance": rec.nearest[0][1],
               "oracle": oracle, "seeds": len(task.seeds),
               "vs_oracle": pair(pick, task.test[oracle]),
               "vs_sam": pair(pick, task.test["sam"])}
        rows.append(row)
        print(f"| {task.name} | {rec.pick} (nearest {row['nearest']}, "
              f"{row['nearest_distance']:.2f}) | {oracle}: {row['vs_oracle']['mean']:+.2f} ± "
              f"{row['vs_oracle']['ci95']:.2f} (p = {row['vs_oracle']['p']:.2f}) | "
              f"{row['vs_sam']['mean']:+.2f} ± {row['vs_sam']['ci95']:.2f} "
              f"(p = {row['vs_sam']['p']:.2f}) |", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
