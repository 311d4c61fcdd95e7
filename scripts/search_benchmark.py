"""Search benchmark: does the study's decision hold up on test, with enough evidence to tell?

For each task: ``metasam tune`` (the search over ``universal-poly`` by default, then the race of
its finalists, every preset at its default and SGD over paired instances) → every method
trained on train + validation and scored on test over ``--seeds`` paired seeds (≥ 10): the
race's winner, the seven presets at their official defaults, and the best universal member and
the best preset-region member the search found (by their tuning value). Prints, per task:

- the study's cost in full-run equivalents (tuning + race + confirmation) and the verdict's
  figures (paired differences on the confirmation's fresh validation instances with their 95%
  CI, Holm-adjusted p-values and the detectable difference);
- on test, paired over seeds: the winner against SGD, SAM at its default and the best default
  preset *on test* (an oracle no user has), and the best universal member against the best
  preset-region member (does the φ-ψ family earn its place?), each as mean ± 95% CI with the
  one-sided paired p-value;
- the rank correlation of each epoch's test accuracy with the last epoch's over the test runs.

Usage (hours on a 2-core CPU for the four default tasks; each task's stages are studies in
``OUT/TASK.db``, so re-running resumes where it stopped and reuses what finished)::

    python scripts/search_benchmark.py --data-dir DIR --out results/search-benchmark \
        > benchmark.log 2>&1

``--tasks digits-noisy,mnist1d-noisy`` runs a subset; the figures land in
``OUT/benchmark.json`` and as Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from metasam.benchmark import (
    RACE,
    TASKS,
    benchmark_main,
    ci,
    export_point,
    pair,
    search_study,
    spec_point,
    test_accuracies,
    unique_points,
)

ROOT = Path(__file__).resolve().parents[1]


def spearman(xs: list[float], ys: list[float]) -> float:
    from scipy import stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan
    return float(stats.spearmanr(xs, ys).statistic)


def rung_correlations(runs: dict[str, list[dict[str, Any]]], key: str) -> dict[int, float]:
    """Spearman between the value at each epoch and at the last epoch, over all runs."""
    series = [[h[key] for h in r["history"]] for rs in runs.values() for r in rs
              if r["history"] and key in r["history"][-1]]
    if not series:
        return {}
    epochs = min(len(s) for s in series)
    finals = [s[epochs - 1] for s in series]
    return {e + 1: spearman([s[e] for s in series], finals) for e in range(epochs - 1)}


def test_methods(study: Any) -> dict[str, Any]:
    """What is scored on test: the race's winner, the seven presets at their defaults, the best
    universal member and the best preset-region member the search found (full budget, by
    tuning value). Equal specs are trained once, under the first name."""
    from metasam.decision.compare import baseline_points
    from metasam.tuning.record import TrialRecord
    from metasam.tuning.storage import best_trials
    from metasam.tuning.trials import Label, Point, Role

    config = study.config
    exported = study.export()
    methods: dict[str, Point] = {"winner": export_point(exported, config.train, "winner")}
    methods.update(baseline_points(config, None))
    # the space's own points beyond the presets (e.g. a ramp a user put there): on test too
    for point in config.space.points:
        if point.label.role is Role.POINT:
            methods[point.label.method] = spec_point(point.label.method, point.spec,
                                                     point.train)
    trials = config.load_study()
    ranked = best_trials(trials, config.mode, len(trials.trials))
    searched = [TrialRecord.of(t) for t in ranked if not TrialRecord.of(t).is_point]
    names: dict[str, str] = {}
    for key, universal in (("best universal", True), ("best region", False)):
        rec = next((r for r in searched if (r.member == "universal") == universal), None)
        if rec is not None and rec.spec is not None:
            methods[key] = Point(Label(Role.COMPARE, key, rec.spec.get("name"),
                                       trial=rec.number), rec.spec, rec.train)
            names[key] = rec.name
    unique, aliases = unique_points(methods)
    return {"points": unique, "aliases": aliases, "winner": exported["name"], "names": names}


def test_figures(acc: dict[str, dict[int, float]]) -> dict[str, Any]:
    """Paired over seeds: the winner against SGD, SAM and the best default preset on test;
    the best universal member against the best region member."""
    from metasam.stats import Summary

    def values(m: str) -> list[float]:
        return [acc[m][s] for s in sorted(acc[m])]

    presets_ = ["sgd", "sam", "asam", "ssam", "trace_sam", "frob_sam", "det_sam"]
    oracle = max(presets_, key=lambda m: Summary.of(values(m)).mean)
    out: dict[str, Any] = {
        "seeds": max(len(v) for v in acc.values()), "oracle": oracle,
        "runs": {m: len(acc[m]) for m in acc},
        "mean": {m: 100 * Summary.of(values(m)).mean for m in acc},
        "sd": {m: 100 * Summary.of(values(m)).std for m in acc},
        "winner_vs_sgd": pair(acc, "winner", "sgd"),
        "winner_vs_sam": pair(acc, "winner", "sam"),
        "winner_vs_oracle": pair(acc, "winner", oracle)}
    if "best universal" in acc and "best region" in acc:
        out["universal_vs_region"] = pair(acc, "best universal", "best region")
    return out


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from metasam import Study
    from metasam.analysis.runs import collect
    from metasam.tuning import StudyConfig

    task = {**TASKS[name], "race": {**TASKS[name].get("race", RACE), "rule": args.race_rule}}
    path = search_study(args.out, name, task, args.space, args.data_dir, args.seed,
                        args.concurrency)
    config = StudyConfig.from_yaml(path)
    study = Study(config, verbose=0)
    t0 = time.time()
    study.tune()
    t1 = time.time()
    study.decide()
    t2 = time.time()
    verdict = study.verdict()
    chosen = test_methods(study)
    acc = test_accuracies(config, args.seeds, chosen["points"], chosen["aliases"])
    t3 = time.time()
    runs = collect(config)
    return {"task": name, "train": config.train.to_dict(), "winner": chosen["winner"],
            "names": chosen["names"], "aliases": chosen["aliases"],
            "verdict": verdict.to_dict(config.metric) if verdict else None,
            "cost": study.cost().to_dict(), "test": test_figures(acc),
            "test_rank_corr_by_epoch": rung_correlations(runs, "test_acc"),
            "seconds": {"tune": t1 - t0, "race": t2 - t1, "test": t3 - t2}}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| task | winner | cost (FRE) | verdict vs SGD / SAM / best preset (Holm) | "
             "test: winner − SGD | winner − SAM (default) | winner − best default preset "
             "(oracle) | best universal − best region member |",
             "|" + "---|" * 8]
    for r in results:
        t, v = r["test"], r["verdict"] or {}
        against = v.get("against", {})
        mde = " / ".join(
            f"{'beats' if c['confident'] else 'n.s.'} (p_Holm {c['p_holm']:.2f})"
            if c.get("complete") else "—" for c in against.values()) or "—"
        uni = t.get("universal_vs_region")
        lines.append(
            f"| {r['task']} | {r['winner']} | {r['cost']['total']:.1f} | {mde} | "
            f"{ci(t['winner_vs_sgd'])} | {ci(t['winner_vs_sam'])} | {t['oracle']}: "
            f"{ci(t['winner_vs_oracle'])} | "
            + (f"{r['names'].get('best universal')} − {r['names'].get('best region')}: "
               f"{ci(uni)}" if uni else "—") + " |")
    lines += ["", "Test accuracy (%), mean over the paired seeds:", ""]
    for r in results:
        t = r["test"]
        lines.append(f"- {r['task']} ({t['seeds']} seeds): " + ", ".join(
            f"{m} {t['mean'][m]:.2f} (sd {t['sd'][m]:.2f}"
            + (f", {t['runs'][m]} runs: the others diverged" if t["runs"][m] < t["seeds"]
               else "") + ")" for m in sorted(t["mean"])))
    lines += ["", "The verdicts (validation, on the confirmation's fresh instances):", ""]
    for r in results:
        v = r["verdict"]
        if not v:
            continue
        parts = []
        for key, c in v["against"].items():
            parts.append(f"{key} ({c['name']}): not run" if not c.get("complete") else
                         f"{key} ({c['name']}): {c['mean']:+.2f} ± {c['ci95']:.2f}, "
                         f"p = {c['p_value']:.3f}, Holm {c['p_holm']:.3f}, n = "
                         f"{c['instances']}, detectable {c['detectable']:.2f}")
        plan = v.get("confirmation") or {}
        lines.append(f"- {r['task']}: race {v['race']['runs']} runs, ended: "
                     f"{v['race']['end']}; confirmation {plan.get('instances')} instances of "
                     f"{plan.get('fold')} examples; " + "; ".join(parts))
    lines += ["", "Rank correlation (Spearman) of each epoch's test accuracy with the last "
              "epoch's, over the test runs:", ""]
    for r in results:
        corr = r["test_rank_corr_by_epoch"]
        lines.append(f"- {r['task']}: " + ", ".join(f"e{e}: {c:.2f}" for e, c in corr.items()))
    return "\n".join(lines) + "\n"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", type=lambda text: Path(text).resolve(),
                        default=ROOT / "search_spaces" / "universal-poly.yaml")
    parser.add_argument("--race-rule", default="halving", choices=("halving", "frace", "ttts"),
                        help="how the race spends its runs (docs/search.md §6)")


def main() -> int:
    return benchmark_main("search_benchmark", __doc__.split("\n\n")[0], list(TASKS),
                          "search-benchmark", ROOT, run_task, markdown, add_arguments=arguments)


if __name__ == "__main__":
    sys.exit(main())
