"""Benchmarks over tasks: the benchmark tasks, their study files, paired test runs of named
points and their figures — the one pipeline the scripts under ``scripts/`` share.

A benchmark writes a study file per task (:func:`write_study`), runs the study, turns what it
chose into points (:func:`export_point`, :func:`unique_points`), trains every point on
train + validation over paired seeds and reads test accuracy (:func:`test_accuracies`), and
compares methods paired over the seeds (:func:`pair`: every figure from :mod:`metasam.stats`).
:func:`run_tasks` runs the tasks in turn, writing ``OUT/benchmark.json`` after each.

Example::

    acc = test_accuracies(config, 10, {"sam": Point(Label(Role.COMPARE, "sam", "sam"),
                                                    presets.sam().to_dict())})
    pair(acc, "winner", "sam")   # {"mean": ..., "ci95": ..., "p": ..., "p_two_sided": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from metasam.stats import PairedDifference, paired_two_sided
from metasam.tuning.trials import Label, Point, Role

# Tasks where the optimizer matters: label noise and/or limited data, with validation and test
# sets that can resolve a few tenths of a point (MNIST-S: 6,000 training examples, validation
# 15% = 900 per fold, test 10,000; MNIST-1D: 4,000 and 1,000 test; CIFAR-10-JPEG-S: 5,000, test
# 10,000), and digits with label noise as the embedded demo (validation folds of 287, test 355:
# it cannot resolve 0.3 points). Epochs fit a 2-core CPU; CIFAR gets enough for the small CNN
# to learn.
TASKS: dict[str, dict[str, Any]] = {
    "digits-noisy": {"train": {"dataset": "digits", "label_noise": 0.2, "model": "cnn",
                               "epochs": 10, "batch_size": 64, "lr": 0.05, "val_fraction": 0.2}},
    "mnist-S-noisy": {"train": {"dataset": "mnist-S", "label_noise": 0.2, "model": "mlp",
                                "epochs": 12, "batch_size": 128, "lr": 0.05,
                                "val_fraction": 0.15}},
    "mnist1d-noisy": {"train": {"dataset": "mnist1d", "label_noise": 0.2, "model": "cnn",
                                "epochs": 15, "batch_size": 128, "lr": 0.05,
                                "val_fraction": 0.15}},
    "cifar10-jpeg-S": {"train": {"dataset": "cifar10-jpeg-S", "model": "cnn", "epochs": 20,
                                 "batch_size": 128, "lr": 0.05, "val_fraction": 0.1}},
}
TRAIN_DEFAULTS = {"schedule": "cosine", "weight_decay": 5e-4}
# The search benchmark's budget per task: 24 tuning trials (about 21 full-run equivalents with
# ASHA), a race of at most 36 runs and a confirmation of at most 40 (the library's defaults).
TRIALS = 24
RACE = {"top_k": 2, "budget": 36}
TRAIN_KEYS = ("lr", "weight_decay", "momentum")   # what an export may change of the training


def write_study(out: Path, name: str, task: dict[str, Any], data_dir: str,
                **study: Any) -> Path:
    """``OUT/NAME.yaml``: a study of ``task`` (its ``train`` over :data:`TRAIN_DEFAULTS`, the
    data in ``data_dir``, one CPU per trial, ``metric: val_acc``) with ``study``'s fields."""
    train = {**TRAIN_DEFAULTS, "data_dir": data_dir, **task["train"]}
    data = {"name": name, "train": train, "metric": "val_acc",
            "resources": {"cpu": 1, "gpu": 0}, **study}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def search_study(out: Path, name: str, task: dict[str, Any], space: Path | str, data_dir: str,
                 seed: int, concurrency: int) -> Path:
    """The search benchmark's study of ``task``: a TPE search of ``space`` under ASHA, then
    the race (``task`` may set its own ``trials`` and ``race``)."""
    return write_study(out, name, task, data_dir, search_space=str(space),
                       trials=task.get("trials", TRIALS), concurrency=concurrency,
                       scheduler={"type": "asha", "grace_period": "auto",
                                  "reduction_factor": 3},
                       sampler={"type": "tpe", "startup_trials": 10},
                       race=task.get("race", RACE), seed=seed)


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """mean(a − b) in points with its 95% CI, the one-sided p (``p``: a > b), the two-sided p,
    the chance a beats b on a new seed, and n — for accuracies in [0, 1]."""
    d = PairedDifference.of(a, b)
    return {"mean": 100 * d.mean, "ci95": 100 * d.ci95, "p": d.p_greater,
            "p_two_sided": paired_two_sided(a, b), "p_improvement": d.p_improvement, "n": d.n}


def pair(acc: dict[str, dict[int, float]], a: str, b: str,
         at_least: int = 2) -> dict[str, float] | None:
    """:func:`paired` over the seeds both methods have (a diverged run has no accuracy);
    None when a method is missing or fewer than ``at_least`` seeds are shared."""
    if a not in acc or b not in acc:
        return None
    seeds = sorted(set(acc[a]) & set(acc[b]))
    if len(seeds) < at_least:
        return None
    return paired([acc[a][s] for s in seeds], [acc[b][s] for s in seeds])


def ci(d: dict[str, float] | None, p: str = "p") -> str:
    """``+0.20 ± 0.14 (p = 0.012)``, or — for no figure."""
    if not d:
        return "—"
    return f"{d['mean']:+.2f} ± {d['ci95']:.2f} (p = {d[p]:.3f})"


def export_point(exported: dict[str, Any], train: Any, method: str) -> Point:
    """A study's export (:meth:`metasam.Study.export`) as a point named ``method``: its spec,
    and the training settings it changes against ``train``."""
    spec = exported["spec"] or {}
    changes = {k: v for k, v in exported["base_optimizer"].items()
               if k in TRAIN_KEYS and getattr(train, k) != v}
    return Point(Label(Role.COMPARE, method, spec.get("name")), exported["spec"], changes)


def spec_point(method: str, spec: dict[str, Any], train: dict[str, Any] | None = None) -> Point:
    """A point that trains ``spec`` under the name ``method``."""
    return Point(Label(Role.COMPARE, method, spec.get("name")), spec, train or {})


def unique_points(methods: dict[str, Point]) -> tuple[dict[str, Point], dict[str, str]]:
    """The points with equal (spec, training) trained once, under the first name: (the
    unique points, each other name → the name it is trained under)."""
    unique: dict[str, Point] = {}
    aliases: dict[str, str] = {}
    keys: dict[str, str] = {}
    for name, point in methods.items():
        key = json.dumps([point.spec, point.train], sort_keys=True)
        if key in keys:
            aliases[name] = keys[key]
        else:
            keys[key] = name
            unique[name] = point
    return unique, aliases


def test_accuracies(config: Any, seeds: int, points: dict[str, Point],
                    aliases: dict[str, str] | None = None,
                    history: bool = True) -> dict[str, dict[int, float]]:
    """Train every point on train + validation over ``seeds`` paired seeds (the study's
    comparison, resumable) and return test accuracy by method and seed, aliases included."""
    from metasam.analysis.runs import collect
    from metasam.decision.compare import compare_config
    from metasam.tuning.runner import tune_study

    tune_study(compare_config(config, seeds, points, sharpness_every=0), verbose=0,
               record_history=history)
    acc = {m: {r["seed"]: r["test_acc"] for r in rs} for m, rs in collect(config).items()}
    for alias, name in (aliases or {}).items():
        acc[alias] = acc[name]
    return acc


def common_arguments(parser: argparse.ArgumentParser, tasks: list[str], out: str,
                     root: Path) -> None:
    """The options every benchmark over these tasks takes: which tasks, the data, where the
    results go (``ROOT/results/OUT`` by default), the test seeds, the studies' seed and
    concurrency."""
    parser.add_argument("--tasks", default=",".join(tasks),
                        help=f"comma-separated, from: {', '.join(tasks)}")
    parser.add_argument("--data-dir", default=os.environ.get("METASAM_DATA", "data"),
                        help="folder with mnist.npz, mnist1d.npz, cifar10-jpeg.npz")
    parser.add_argument("--out", type=Path, default=root / "results" / out)
    parser.add_argument("--seeds", type=int, default=10, help="paired seeds of the test runs")
    parser.add_argument("--seed", type=int, default=0, help="the studies' seed")
    parser.add_argument("--concurrency", type=int, default=2)


def task_names(prog: str, value: str, tasks: list[str]) -> list[str] | None:
    """The tasks of ``--tasks``, or ``None`` after one line naming an unknown one."""
    names = [n for n in value.split(",") if n]
    unknown = [n for n in names if n not in tasks]
    if unknown:
        print(f"{prog}: error: --tasks: unknown task {unknown[0]!r}; allowed: "
              f"{', '.join(tasks)}", file=sys.stderr)
        return None
    return names


def run_tasks(names: list[str], args: argparse.Namespace,
              run: Callable[[str, argparse.Namespace], dict[str, Any]],
              table: Callable[[list[dict[str, Any]]], str],
              after: Callable[[list[dict[str, Any]]], None] | None = None
              ) -> list[dict[str, Any]]:
    """Each task in turn on a Ray instance of this process's own (not a cluster another
    process started on this machine); after each, ``OUT/benchmark.json`` (and
    ``after(results)``) and its table on stdout, so a stopped benchmark keeps what finished;
    the whole table at the end."""
    from metasam.tuning.runner import ray_session

    results: list[dict[str, Any]] = []
    with ray_session("local", verbose=0, num_cpus=args.concurrency):
        for name in names:
            started = time.time()
            results.append(run(name, args))
            print(f"{name}: done in {time.time() - started:.0f} s", file=sys.stderr,
                  flush=True)
            (args.out / "benchmark.json").write_text(json.dumps(results, indent=2))
            if after is not None:
                after(results)
            print(table(results[-1:]), flush=True)
    print(table(results))
    return results


def benchmark_main(prog: str, description: str, tasks: list[str], out: str, root: Path,
                   run: Callable[[str, argparse.Namespace], dict[str, Any]],
                   table: Callable[[list[dict[str, Any]]], str], *,
                   add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                   after: Callable[[argparse.Namespace, list[dict[str, Any]]], None] | None = None
                   ) -> int:
    """A benchmark script's ``main``: :func:`common_arguments` (plus ``add_arguments``), the
    tasks checked (exit 2 after one line naming an unknown one), ``--out`` made, the data
    folder resolved, then :func:`run_tasks` (``after(args, results)`` after each task)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    common_arguments(parser, tasks, out, root)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    names = task_names(prog, args.tasks, tasks)
    if names is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(Path(args.data_dir).resolve())
    run_tasks(names, args, run, table,
              after=None if after is None else (lambda results: after(args, results)))
    return 0
