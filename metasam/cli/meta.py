"""``metasam meta``: what the finished studies teach — which members win on which tasks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    meta = sub.add_parser(
        "meta", help="what finished studies teach: members and tasks, the zero-shot portfolio",
        description="Read finished studies into the meta-knowledge base (scores normalized per "
        "study: 1 its best, 0 its SGD), describe each task, and show which members win where, "
        "and the portfolio `tune --meta` would evaluate first (uniform task weights).")
    meta.add_argument("studies", metavar="PRIOR", nargs="+",
                      help="finished studies (STUDY.yaml) or knowledge files (.json)")
    meta.add_argument("-k", type=int, default=3, help="portfolio size")
    meta.add_argument("--plot", default=None, help="PNG path (default: meta.png)")
    meta.add_argument("--save", default=None, metavar="FILE.json",
                      help="keep the knowledge base in a file that `tune --meta` and the study "
                      "file's meta.from read in place of the studies")
    meta.add_argument("--json", action="store_true",
                      help="print the tasks, winning ranges and portfolio as JSON")
    meta.set_defaults(run=run_meta)

    recommend = sub.add_parser(
        "recommend", help="a zero-shot answer from the shipped knowledge: the portfolio ranked "
        "for a new task",
        description="Describe the study's task (two epochs of plain SGD and a few Hessian "
        "probes: at most 0.2 full-run equivalents of a ten-epoch run), rank the portfolio by "
        "its test gains on the knowledge base's most similar tasks, print the pick and the "
        "evidence, and write it as an export that load_optimizer and load_recipe read.")
    recommend.add_argument("study", metavar="STUDY.yaml")
    recommend.add_argument("--knowledge", default=None, metavar="FILE.json",
                           help="a knowledge base in place of the shipped one")
    recommend.add_argument("--out", default=None,
                           help="where to write the pick (default: STUDY.recommended.json)")
    recommend.set_defaults(run=run_recommend)


def run_recommend(args: argparse.Namespace) -> int:
    import sys

    from metasam.cli._options import load_study_config
    from metasam.meta.base import read_base, shipped_base
    from metasam.meta.descriptors import describe_task
    from metasam.meta.recommend import recommend

    config = load_study_config(args.study)
    base = read_base(args.knowledge) if args.knowledge else shipped_base()
    config.check_data()
    out = Path(args.out) if args.out else config.folder / f"{config.name}.recommended.json"
    print(f"recommend {config.name}: describing the task (2 epochs of SGD)...",
          file=sys.stderr, flush=True)
    descriptor = describe_task(config.train.replace(val_fraction=config.train.val_fraction
                                                    or 0.2), seed=config.seed)
    rec = recommend(base, descriptor)
    for line in rec.lines():
        print(line)
    from metasam.meta.recommend import recommended_export

    export = recommended_export(config, rec, descriptor)
    out.write_text(json.dumps(export, indent=2, ensure_ascii=False) + "\n")
    print(f"written: {out} (metasam.load_optimizer / load_recipe read it)")
    return 0


def run_meta(args: argparse.Namespace) -> int:
    from metasam.errors import ConfigError
    from metasam.meta.knowledge import load_priors, regret_table, write_knowledge
    from metasam.meta.portfolio import greedy_portfolio
    from metasam.meta.transfer import region_boxes
    from metasam.tuning.study_config import prior_file

    if args.k < 1:
        raise ConfigError("-k", f"out of range: {args.k}", "whole numbers ≥ 1")
    if args.save is not None and not args.save.endswith(".json"):
        raise ConfigError("--save", f"not a .json file: {args.save!r}", "FILE.json")
    from metasam._progress import Progress

    sources = [prior_file("PRIOR", s, Path.cwd()) for s in args.studies]
    progress = Progress("meta", total=len(sources), unit="studies read")
    records = load_priors(sources, "meta", progress=lambda done, name: progress.update(
        done, f"reading {name} (its task descriptor takes a minute the first time)",
        force=True))
    progress.close(len(sources))
    tasks, keys, table = regret_table(records)
    ranges = {t: region_boxes(records, {t}, margin=0.0, min_span=1.0) for t in tasks}
    names = {r.key: r.label for r in records}
    portfolio = greedy_portfolio(table, args.k)
    descriptors = {r.task: r.descriptor for r in records}
    best = {t: max((r for r in records if r.task == t), key=lambda r: r.score) for t in tasks}
    if args.save is not None:
        write_knowledge(records, args.save)
    if args.json:
        print(json.dumps({
            "tasks": {t: {"descriptor": descriptors[t].to_dict() if descriptors[t] else None,
                          "best": best[t].label, "winning_ranges": ranges[t]}
                      for t in tasks},
            "portfolio": [{"label": names[keys[i]], "regret": [row[i] for row in table]}
                          for i in portfolio]}))
        return 0
    print("task descriptors:")
    print(f"  {'task':<18} {'examples':>8} {'classes':>7} {'gap':>6} {'noise':>8} "
          f"{'tr H':>9}  best member (normalized score 1)")
    for t in tasks:
        d = descriptors[t]
        cols = (f"{d.examples:>8} {d.classes:>7} {d.gap:>6.3f} {d.noise_scale:>8.3g} "
                f"{d.trace:>9.3g}" if d else f"{'':>8} {'':>7} {'':>6} {'':>8} {'':>9}")
        print(f"  {t:<18} {cols}  {best[t].label}")
    print(f"normalized score (1: the study's best, 0: its SGD) of the portfolio of {args.k} "
          "and of every spec run on all tasks:")
    shared = [j for j in range(len(keys)) if all(row[j] == row[j] for row in table)]
    shown = list(dict.fromkeys(portfolio + shared))
    width = max(len(names[keys[j]]) for j in shown) + 2
    print(f"  {'':<{width}}" + "".join(f"{t[:12]:>13}" for t in tasks))
    for j in shown:
        mark = "*" if j in portfolio else " "
        cells = "".join(f"{'—' if row[j] != row[j] else f'{1 - row[j]:.2f}':>13}"
                        for row in table)
        print(f"{mark} {names[keys[j]]:<{width - 2}}" + cells)
    print("(* in the zero-shot portfolio; — not run on that task)")
    print("winning ranges (trials within 0.1 of their study's best, per preset region):")
    for t in tasks:
        cells = [f"{name} " + " ".join(f"{key} {low:.3g}–{high:.3g}" if high > low * 1.0001
                                       else f"{key} {low:.3g}" for key, (low, high)
                                       in sorted(box.items()))
                 for name, box in sorted(ranges[t].items())]
        print(f"  {t:<18} {'; '.join(cells) or '—'}")
    plot = Path(args.plot or "meta.png")
    from metasam._plotting import save_figure
    from metasam.analysis.plots import meta_figure

    save_figure(meta_figure(tasks, [("* " if j in portfolio else "") + names[keys[j]]
                                    for j in shown],
                            [[1 - row[j] for row in table] for j in shown]), plot)
    print(f"plot: {plot}")
    if args.save is not None:
        print(f"knowledge: {args.save} ({len(records)} trials of {len(tasks)} tasks)")
    return 0
