"""Build the knowledge base shipped in the package (``metasam/meta/data/knowledge.json``).

Tasks made only from the data the project has — scikit-learn's digits, and MNIST, MNIST-1D and
CIFAR-10 (JPEG) from the data folder — with label noise, subset size and model varied. For
each: its descriptor (:func:`metasam.meta.descriptors.describe_task`, seed 0), then every
portfolio candidate and SGD trained on the whole training pool and scored on the test set over
``--seeds`` paired seeds (the same seeds for every candidate). Other datasets stay out: they are
how the base's transfer gets judged.

    python scripts/build_knowledge.py --data-dir DIR [--seeds 3] [--workers 2]

Resumable: every finished run is one line of ``--cache`` (JSON lines); a rerun trains only what
is missing, then writes the base.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"schedule": "cosine", "weight_decay": 5e-4, "lr": 0.05}
TASKS: dict[str, dict[str, Any]] = {
    "digits-n20-cnn": {"dataset": "digits", "label_noise": 0.2, "model": "cnn", "epochs": 10,
                       "batch_size": 64},
    "digits-n40-mlp": {"dataset": "digits", "label_noise": 0.4, "model": "mlp", "epochs": 10,
                       "batch_size": 64},
    "digits-clean-mlp": {"dataset": "digits", "model": "mlp", "epochs": 10, "batch_size": 64},
    "mnist1d-n20-cnn": {"dataset": "mnist1d", "label_noise": 0.2, "model": "cnn", "epochs": 15,
                        "batch_size": 128},
    "mnist1d-clean-mlp": {"dataset": "mnist1d", "model": "mlp", "epochs": 15,
                          "batch_size": 128},
    "mnistS-n20-mlp": {"dataset": "mnist-S", "label_noise": 0.2, "model": "mlp", "epochs": 12,
                       "batch_size": 128},
    "mnist2k-n40-mlp": {"dataset": "mnist", "subset": 0.0334, "label_noise": 0.4, "model": "mlp",
                        "epochs": 12, "batch_size": 128},
    "cifar2k-cnn": {"dataset": "cifar10-jpeg", "subset": 0.04, "model": "cnn", "epochs": 10,
                    "batch_size": 128},
}


def candidates() -> dict[str, dict[str, Any]]:
    from metasam.decision.portfolio import shipped_portfolio
    from metasam.family import presets

    out = {p.label.method: p.spec for p in shipped_portfolio().points}
    out["sgd"] = presets.sgd().to_dict()
    return out


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from metasam.training import TrainConfig, train

    torch.set_num_threads(1)
    config = TrainConfig.from_dict({**COMMON, **job["setup"], "data_dir": job["data_dir"],
                                    "val_fraction": 0.0, "seed": job["seed"],
                                    "spec": job["spec"], "device": "cpu"})
    result = train(config)
    return {**{k: job[k] for k in ("task", "candidate", "seed")},
            "test_acc": result.get("test_acc"), "status": result.get("status")}


def describe(name: str, setup: dict[str, Any], data_dir: str) -> dict[str, Any]:
    from metasam.meta.descriptors import describe_task
    from metasam.training import TrainConfig

    config = TrainConfig.from_dict({**COMMON, **setup, "data_dir": data_dir,
                                    "val_fraction": 0.2, "device": "cpu"})
    return describe_task(config, seed=0).to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("METASAM_DATA", "data"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--cache", type=Path, default=ROOT / "results" / "knowledge-runs.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "metasam" / "meta" / "data" /
                        "knowledge.json")
    args = parser.parse_args()
    data_dir = str(Path(args.data_dir).resolve())
    names = [n for n in args.tasks.split(",") if n]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        print(f"build_knowledge: error: --tasks: unknown task {unknown[0]!r}; allowed: "
              f"{', '.join(TASKS)}", file=sys.stderr)
        return 2
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if args.cache.is_file():
        for line in args.cache.read_text().splitlines():
            row = json.loads(line)
            done[(row["task"], row["candidate"], row["seed"])] = row
    specs = candidates()
    started = time.time()
    descriptors = {k[1]: v["descriptor"] for k, v in done.items() if k[0] == "descriptor"}
    jobs = [{"task": t, "candidate": c, "seed": s, "setup": TASKS[t], "spec": spec,
             "data_dir": data_dir}
            for t in names for s in range(args.seeds) for c, spec in specs.items()
            if (t, c, s) not in done]
    with open(args.cache, "a") as cache, ProcessPoolExecutor(args.workers) as pool:
        for t in names:
            if t not in descriptors:
                descriptors[t] = describe(t, TASKS[t], data_dir)
                row = {"task": "descriptor", "candidate": t, "seed": -1,
                       "descriptor": descriptors[t]}
                cache.write(json.dumps(row) + "\n")
                cache.flush()
        for row in pool.map(run_one, jobs):
            done[(row["task"], row["candidate"], row["seed"])] = row
            cache.write(json.dumps(row) + "\n")
            cache.flush()
            print(f"{row['task']} {row['candidate']} seed {row['seed']}: {row['test_acc']}",
                  flush=True)
    from metasam.meta.base import KnowledgeBase, TaskEntry, write_base
    from metasam.meta.descriptors import TaskDescriptor

    tasks = []
    for t in names:
        seeds = list(range(args.seeds))
        test = {c: [float(done[(t, c, s)]["test_acc"] or float("nan")) for s in seeds]
                for c in specs}
        tasks.append(TaskEntry(t, {**COMMON, **TASKS[t]},
                               TaskDescriptor.from_dict(descriptors[t]), seeds, test))
    base = KnowledgeBase(list(specs), specs, tasks,
                         built_with=f"scripts/build_knowledge.py --seeds {args.seeds}")
    write_base(base, args.out)
    print(f"wrote {args.out}: {len(tasks)} tasks, {len(specs)} candidates, "
          f"{args.seeds} seeds; {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
