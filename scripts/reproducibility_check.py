"""Does the default study decide the same way on two machines?

Runs ``studies/digits-noisy.yaml`` twice in fresh storages under ``--out``: once as shipped (2
threads per trial) and once with 1 thread per trial (another floating-point path, as on another
machine), each tune → race → verdict. Then trains both winners, SGD and SAM at its default on
train + validation and scores them on test over ``--seeds`` paired seeds. Prints both verdicts,
the two winners' paired test difference (two-sided) and each winner against SGD and SAM on test
(one-sided, paired), and writes ``OUT/reproducibility.json``. Resumable: every stage is a study
in ``OUT``.

Usage (about 30 minutes on a 2-core CPU)::

    python scripts/reproducibility_check.py --out results/reproducibility > repro.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def study_copy(out: Path, name: str, threads: int) -> Path:
    data = yaml.safe_load((ROOT / "studies" / "digits-noisy.yaml").read_text())
    data.update(name=name, search_space=str(ROOT / "search_spaces" / "universal-poly.yaml"),
                resources={"cpu": threads, "gpu": 0})
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "reproducibility")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from metasam import Study
    from metasam.benchmark import export_point, pair, spec_point, test_accuracies
    from metasam.family import presets
    from metasam.tuning.runner import ray_session

    report: dict[str, Any] = {"runs": {}}
    studies = []
    with ray_session():
        for name, threads in (("two-threads", 2), ("one-thread", 1)):
            study = Study.from_yaml(study_copy(args.out, name, threads), verbose=0)
            outcome = study.run()
            assert outcome.complete and outcome.verdict is not None, name
            print(f"--- {name} ({threads} thread(s) per trial)")
            for line in outcome.verdict.lines(study.config.metric):
                print(line)
            print(study.cost().line(), flush=True)
            report["runs"][name] = {"verdict": outcome.verdict.to_dict(study.config.metric),
                                    "cost": study.cost().to_dict()}
            studies.append(study)
        methods = {s.config.name: export_point(s.export(), s.config.train, s.config.name)
                   for s in studies}
        for name in ("sgd", "sam"):
            methods[name] = spec_point(name, presets.get(name).to_dict())
        acc = test_accuracies(studies[0].config, args.seeds, methods)
    seeds = sorted(set.intersection(*(set(v) for v in acc.values())))
    acc = {m: {s: v[s] for s in seeds} for m, v in acc.items()}   # the seeds all have

    names = [s.config.name for s in studies]
    report["winners"] = {s.config.name: s.export()["name"] for s in studies}
    report["test"] = {"seeds": len(seeds),
                      "mean": {m: 100 * sum(v.values()) / len(seeds) for m, v in acc.items()},
                      f"{names[0]} - {names[1]}": pair(acc, names[0], names[1])}
    for n in names:
        for ref in ("sgd", "sam"):
            report["test"][f"{n} - {ref}"] = pair(acc, n, ref)
    print(f"--- test, {len(seeds)} paired seeds (train + validation, last epoch)")
    print(json.dumps(report["winners"]))
    for key, value in report["test"].items():
        print(f"{key}: {value}")
    (args.out / "reproducibility.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
