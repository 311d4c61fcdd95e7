"""The knowledge base shipped with the package: tasks made from the data the project has, each
with its descriptor and the test accuracy of every portfolio candidate over paired seeds.

``metasam/meta/data/knowledge.json`` (format ``metasam-knowledge-base/1``) is built by
``scripts/build_knowledge.py`` (one command; resumable) and read with
:mod:`importlib.resources`. A user's own base — the shipped one plus their tasks — is read from
a file the same way (``metasam recommend STUDY.yaml --knowledge FILE``). A file that is not a
base, a base of another format or a newer version is refused in one line naming it (exit 2):
never a silently empty portfolio.

Candidates are named in the portfolio's order (``metasam/decision/data/portfolio.yaml``) plus
SGD; a schedule is stored in training progress (fractions of the run: ``vary`` ramps), so it
transfers across run lengths.

    >>> base = shipped_base()
    >>> len(base.tasks) >= 8, base.candidates[-1]
    (True, 'sgd')
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from metasam.errors import ConfigError
from metasam.meta.descriptors import TaskDescriptor

FORMAT = "metasam-knowledge-base/1"
FILE = "knowledge.json"


@dataclass(frozen=True)
class TaskEntry:
    """One task: how it was made (``setup``: TrainConfig fields), its descriptor, and each
    candidate's test accuracy per seed (``test[candidate][i]`` on seed ``seeds[i]``)."""

    name: str
    setup: dict[str, Any]
    descriptor: TaskDescriptor
    seeds: list[int]
    test: dict[str, list[float]]

    def gain(self, candidate: str, reference: str = "sam") -> float:
        """Mean paired test difference ``candidate − reference`` over the seeds (accuracy)."""
        return statistics.fmean(self.differences(candidate, reference))

    def differences(self, candidate: str, reference: str = "sam") -> list[float]:
        return [a - b for a, b in zip(self.test[candidate], self.test[reference], strict=True)
                if math.isfinite(a) and math.isfinite(b)]

    def winner(self) -> str:
        return max(self.test, key=lambda c: statistics.fmean(self.test[c]))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "setup": self.setup, "descriptor": self.descriptor.to_dict(),
                "seeds": self.seeds, "test": self.test, "winner": self.winner()}


@dataclass(frozen=True)
class KnowledgeBase:
    """Tasks and the candidates they were measured on (``specs``: name → spec dict)."""

    candidates: list[str]
    specs: dict[str, dict[str, Any]]
    tasks: list[TaskEntry] = field(default_factory=list)
    built_with: str = ""

    def without(self, task: str) -> KnowledgeBase:
        """The base with one task left out (the leave-one-task-out evaluation)."""
        return KnowledgeBase(self.candidates, self.specs,
                             [t for t in self.tasks if t.name != task], self.built_with)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "built_with": self.built_with, "candidates": self.candidates,
                "specs": self.specs, "tasks": [t.to_dict() for t in self.tasks]}


def write_base(base: KnowledgeBase, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(base.to_dict(), f, indent=1, ensure_ascii=False)
        f.write("\n")


def read_base(path: str | os.PathLike[str], field_name: str = "--knowledge") -> KnowledgeBase:
    """A knowledge-base file (one line naming the file and what is wrong otherwise)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(field_name, f"cannot read {path}: {err.strerror}",
                          "a knowledge-base JSON file") from None
    return parse_base(text, str(path))


@lru_cache(maxsize=1)
def shipped_base() -> KnowledgeBase:
    """The knowledge base shipped inside the package."""
    text = resources.files("metasam.meta").joinpath("data", FILE).read_text(encoding="utf-8")
    return parse_base(text, f"metasam/meta/data/{FILE}")


def parse_base(text: str, source: str) -> KnowledgeBase:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("", f"not a knowledge base (invalid JSON at line {err.lineno})",
                          FORMAT, source) from None
    if not isinstance(data, dict) or "format" not in data:
        raise ConfigError("format", "missing: not a knowledge base", FORMAT, source)
    found = data["format"]
    if found != FORMAT:
        newer = (isinstance(found, str) and found.startswith("metasam-knowledge-base/")
                 and found.rsplit("/", 1)[-1].isdigit() and int(found.rsplit("/", 1)[-1]) > 1)
        why = "written by a newer metasam" if newer else "not a format this version reads"
        raise ConfigError("format", f"{found!r}: {why}", FORMAT, source)
    candidates = data.get("candidates")
    specs = data.get("specs")
    tasks = data.get("tasks")
    if not isinstance(candidates, list) or not candidates or not isinstance(specs, dict) \
            or set(candidates) - set(specs):
        raise ConfigError("candidates", "expected a non-empty list of names, each with a spec",
                          "candidates: [...], specs: {name: spec}", source)
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("tasks", "expected a non-empty list of tasks", "tasks: [...]", source)
    out = []
    for i, t in enumerate(tasks):
        try:
            descriptor = TaskDescriptor.from_dict(t["descriptor"])
            seeds = [int(s) for s in t["seeds"]]
            test = {str(k): [float(x) for x in v] for k, v in t["test"].items()}
            entry = TaskEntry(str(t["name"]), dict(t.get("setup") or {}), descriptor, seeds,
                              test)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"tasks[{i}]", f"malformed ({type(err).__name__}: {err})",
                              "name, setup, descriptor, seeds, test", source) from None
        if set(test) != set(candidates) or any(len(v) != len(seeds) for v in test.values()):
            raise ConfigError(f"tasks[{i}].test", "needs every candidate on every seed",
                              ", ".join(candidates), source)
        out.append(entry)
    return KnowledgeBase(list(candidates), dict(specs), out, str(data.get("built_with", "")))
