"""The study file's schema: its fields and sections, each checked by its option (as
:class:`~metasam.training.TrainConfig`'s are). :class:`~metasam.tuning.study_config.StudyConfig`
reads a file through :class:`StudyFile` and resolves what needs the file's folder or several
fields at once."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metasam import _checks, _config
from metasam.errors import ConfigError

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
META_DEFAULTS = {"k": 3, "box": 0.5}


@dataclass(frozen=True)
class Resources:
    """``resources: {cpu: N, gpu: F}`` per trial; ``gpu`` may be a fraction (0.25: four trials
    share a GPU)."""

    cpu: float = _config.option(1.0, _config.number(0.0, low_open=True), "CPUs per trial")
    gpu: float = _config.option(0.0, _config.number(0.0), "GPUs per trial (a fraction shares)")

    def __post_init__(self) -> None:
        _config.validate(self)


@dataclass(frozen=True)
class Heartbeat:
    """``heartbeat: {interval: S, grace: S}``: a trial silent for ``grace`` seconds is re-run."""

    interval: int = _config.option(10, _config.integer(1), "seconds between heartbeats")
    grace: int = _config.option(60, _config.integer(1), "seconds of silence before a re-run")

    def __post_init__(self) -> None:
        _config.validate(self)


@dataclass(frozen=True)
class Cost:
    """``cost: {weight: w}``: rank trials by metric − w·(passes per step) (plus, for a
    minimized metric); absent or ``weight: 0``, by the metric alone."""

    weight: float = _config.option(0.0, _config.number(0.0), "weight of the passes per step")

    def __post_init__(self) -> None:
        _config.validate(self)


@dataclass(frozen=True)
class Sampler:
    """``sampler: {type: tpe|random, startup_trials: N}``."""

    type: str = _config.option("tpe", _config.choice("tpe", "random"), "Optuna's sampler")
    startup_trials: int = _config.option(10, _config.integer(0), "random trials before TPE")

    def __post_init__(self) -> None:
        _config.validate(self)


@dataclass(frozen=True)
class Tracking:
    """``tracking: {tensorboard: true, mlflow: URI, wandb: PROJECT}``: where each trial's
    per-epoch metrics go besides the study's storage."""

    tensorboard: bool = _config.option(True, _config.boolean,
                                       "event files under tensorboard/ next to the study file")
    mlflow: str | None = _config.option(None, _config.text(optional=True),
                                        "an MLflow tracking URI (needs mlflow installed)")
    wandb: str | None = _config.option(None, _config.text(optional=True),
                                       "a Weights & Biases project (needs wandb, logged in)")

    def __post_init__(self) -> None:
        _config.validate(self)

    def check(self) -> None:
        """The packages the chosen trackers need are installed (else one line, exit 2)."""
        import importlib.util

        for field, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
            if getattr(self, field) and importlib.util.find_spec(module) is None:
                raise ConfigError(f"tracking.{field}", f"needs the {module} package, which is "
                                  "not installed", f"pip install {module}, or leave it out")


@dataclass(frozen=True)
class RaceSettings:
    """``race: {top_k, budget, first, instances, alpha, holdout, confirm_budget, detect, power,
    rule}`` (or ``false``): the decision stage (:mod:`metasam.decision.stage`). The top
    ``top_k`` trials at full budget, every reference preset at its default, SGD and SAM race over
    paired instances (a training seed and a validation fold of the pool's rest each; ``budget``
    runs at most; ``rule``: ``halving`` — successive halving on paired means, the default —
    ``frace`` — F-Race's eliminations by tests, SGD and SAM running every instance — or
    ``ttts`` — top-two Thompson sampling); the winner is then confirmed against SGD, SAM and
    the best other preset on fresh instances whose validation folds come from the ``holdout``
    share of the pool that no tuning trial or race run validated on, as many as reach a
    detectable difference ``detect`` (metric units) at ``power``, ``confirm_budget`` runs at
    most; ``alpha`` is the family-wise error of the verdicts (and, under ``frace``, of the
    race's eliminations)."""

    top_k: int = _config.option(2, _config.integer(1), "top trials at full budget that race")
    budget: int = _config.option(36, _config.integer(2), "the race's runs, at most")
    first: int = _config.option(3, _config.integer(2), "instances before the first test")
    instances: int = _config.option(30, _config.integer(2), "instances at most")
    alpha: float = _config.option(0.05, _config.number(0.0, 0.5, low_open=True),
                                  "family-wise error of the eliminations and of the verdicts")
    holdout: float = _config.option(0.3, _config.number(0.05, 0.8),
                                    "share of the pool held back for the verdict's validation")
    confirm_budget: int = _config.option(40, _config.integer(0),
                                         "the confirmation's runs, at most (0: no verdict)")
    detect: float = _config.option(0.01, _config.number(0.0, low_open=True),
                                   "the difference the confirmation is sized to detect, in "
                                   "metric units (0.01 = 1 point of accuracy)")
    power: float = _config.option(0.8, _config.number(0.5, 0.999),
                                  "the power the confirmation is sized for")
    rule: str = _config.option("halving", _config.choice("halving", "frace", "ttts"),
                               "how the race spends its runs (docs/search.md §6)")

    def __post_init__(self) -> None:
        _config.validate(self)
        if self.first > self.instances:
            raise ConfigError("first", f"{self.first} is above instances ({self.instances})",
                              f"1 to {self.instances}")


@dataclass(frozen=True)
class PopulationSettings:
    """``search: {type: pbt, population: P, interval: E, quantile: Q, resample: R, factors:
    [down, up], members: [sam, ssam]}``: population-based training
    (:mod:`metasam.tuning.population`). ``population`` members start in the preset regions of
    ``members`` (spread over them in turn); every ``interval`` epochs the bottom ``quantile``
    of the members copy the whole state of a random member of the top ``quantile`` and
    explore: each region field (ρ, and λ where the region has it) is resampled from the region
    with probability ``resample``, else multiplied by one of ``factors`` (kept in the region).
    The best member's parameter history is its schedule (a spec with ``vary`` phases)."""

    type: str = _config.option("pbt", _config.choice("pbt", "standard"),
                               "pbt, or standard (Optuna's sampler and ASHA)")
    population: int = _config.option(8, _config.integer(2), "members trained side by side")
    interval: int = _config.option(2, _config.integer(1), "epochs between exploit steps")
    quantile: float = _config.option(0.25, _config.number(0.0, 0.5, low_open=True),
                                     "share of the members that copy and that are copied")
    resample: float = _config.option(0.25, _config.number(0.0, 1.0),
                                     "probability of resampling a field when exploring")
    factors: tuple[float, float] = _config.option(
        (0.8, 1.25), lambda n, v: _factors(n, v), "[down, up]: factors of a perturbation")
    members: tuple[str, ...] = _config.option(
        ("sam", "ssam"), _config.one_or_more(lambda: _regions(), "preset regions"),
        "preset regions the members start in")

    def __post_init__(self) -> None:
        _config.validate(self)


def _factors(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(name, f"expected [down, up], got {value!r}", "[0.8, 1.25]")
    down = _checks.number(f"{name}[0]", value[0], low=0.0, high=1.0, low_open=True,
                          high_open=True)
    up = _checks.number(f"{name}[1]", value[1], low=1.0, low_open=True)
    return down, up


def _regions() -> tuple[str, ...]:
    from metasam.tuning.regions import REGIONS

    return tuple(REGIONS)


def _check_search(name: str, data: Any) -> PopulationSettings | None:
    if data is None:
        return None
    settings = _config.section(PopulationSettings, "{type: pbt, population: P, interval: E, "
                               "quantile: Q, resample: R, factors: [down, up], members: "
                               "[...]}")(name, data)
    return None if settings.type == "standard" else settings


EFFORTS = ("quick", "thorough")
QUICK_BUDGET = 10.0   # full-run equivalents of a quick study that names no budget


def _check_race(name: str, data: Any) -> RaceSettings | None:
    if data is False:
        return None
    if data is True or data is None:
        return RaceSettings()
    return _config.section(RaceSettings, "{top_k: K, budget: B, first: F, instances: N, "
                           "alpha: A, holdout: H, confirm_budget: C, detect: D, power: P} "
                           "or false")(name, data)


def _check_confirm(name: str, data: Any) -> None:
    """The confirmation stage is gone: ``confirm: false`` still turns the decision off (see
    StudyFile), anything else says what replaced it."""
    if data is None or data is False:
        return data
    raise ConfigError(name, "the confirmation stage was replaced by the race",
                      "race: {top_k: K, budget: B} (or confirm: false / race: false)")


def _section(name: str, data: Any, shape: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A mapping section of the study file: absent is empty; anything but a mapping, or a key
    not in ``keys``, is an error naming the section and its ``shape``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected {shape}")
    _checks.known_keys(name, data, keys)
    return data


PRIOR_SUFFIXES = (".yaml", ".yml", ".json")


def _check_meta(name: str, data: Any) -> dict[str, Any] | str:
    """``meta: {from: [PRIOR, ...], k: 3, box: 0.5}``: prior study files or knowledge files
    (relative to the study file), the portfolio size, the share of region trials sampled within
    the winners' boxes (0: none). ``meta: none``: a quick study without the shipped knowledge's
    prior (its race alone picks)."""
    if data == "none":
        return "none"
    data = _section(name, data, "{from: [PRIOR.yaml or KNOWLEDGE.json, ...], k: K, box: P}",
                    ("from", "k", "box"))
    sources = data.get("from")
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{name}.from", "expected a non-empty list of files",
                          "study YAML files or knowledge JSON files")
    return {"from": list(sources),
            "k": _checks.integer(f"{name}.k", data.get("k", META_DEFAULTS["k"]), low=1),
            "box": _checks.number(f"{name}.box", data.get("box", META_DEFAULTS["box"]),
                                  low=0.0, high=1.0)}


def prior_file(field: str, source: Any, base: Path) -> str:
    """A prior given as a file (``meta.from``, ``--meta``, ``metasam meta``): a study or
    knowledge file, relative to ``base``, that exists; resolved."""
    if not isinstance(source, str) or not source.endswith(PRIOR_SUFFIXES):
        raise ConfigError(field, f"not a study or knowledge file: {source!r}",
                          ", ".join(PRIOR_SUFFIXES))
    resolved = (base / os.path.expanduser(source)).resolve()
    if not resolved.is_file():
        raise ConfigError(field, f"no such file: {resolved}")
    return str(resolved)


def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(name, f"expected a non-empty string, got {value!r}")
    if not _NAME.fullmatch(value):  # it names files: NAME.db, NAME.best.json
        raise ConfigError(name, f"{value!r} is not a plain file name",
                          "letters, digits, '.', '_', '-'")
    return value


def _check_search_space(name: str, value: Any) -> str:
    if value is None:
        raise ConfigError(name, "missing", "a path to a search-space YAML file")
    return str(value)


def _check_train(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(name, "expected a mapping of training fields")
    for key in ("test", "checkpoint_dir", "spec", "preset", "seed"):
        if key in value:
            why = "is set by the study for each trial"
            if key == "seed":
                why += " (use the study's top-level seed field)"
            raise ConfigError(f"{name}.{key}", why, "other TrainConfig fields")
    return dict(value)


def _check_scheduler(name: str, data: Any) -> dict[str, Any]:
    if data is None:
        data = {"type": "asha"}
    if not isinstance(data, dict):
        raise ConfigError(name, "expected {type: asha, ...} or {type: none}")
    kind = _checks.choice(f"{name}.type", data.get("type", "asha"), ("asha", "none"))
    if kind == "none":
        _checks.known_keys(name, data, ("type",))
        return {"type": "none"}
    _checks.known_keys(name, data, ("type", "grace_period", "reduction_factor"))
    factor = _checks.number(f"{name}.reduction_factor", data.get("reduction_factor", 3),
                            low=1.0, low_open=True)
    grace = data.get("grace_period", "auto")
    if grace != "auto":
        grace = _checks.integer(f"{name}.grace_period", grace, low=1)
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor}


def _optional(check: Any) -> Any:
    return lambda name, value: None if value is None else check(name, value)


@dataclass
class StudyFile:
    """The fields of a study YAML file, each checked by its option as TrainConfig's are;
    :meth:`StudyConfig.from_yaml` reads one and resolves what needs its folder or several
    fields at once."""

    name: str = _config.option(None, _check_name, "name in the storage and of files")
    search_space: str = _config.option(None, _check_search_space,
                                       "search-space YAML, relative to the study file")
    train: dict[str, Any] = _config.option(None, _check_train, "TrainConfig fields",
                                           factory=dict)
    metric: str = _config.option("val_acc", _config.choice(*METRICS),
                                 "a validation or training metric")
    mode: str | None = _config.option(None, _optional(_config.choice("max", "min")),
                                      "max or min (default: from the metric)")
    trials: int = _config.option(20, _config.integer(1), "trials that reach a terminal state")
    concurrency: int = _config.option(1, _config.integer(1), "trials at once")
    resources: Resources = _config.option(None, _config.section(Resources, "{cpu: N, gpu: F}"),
                                          "per trial", factory=Resources)
    scheduler: dict[str, Any] = _config.option(None, _check_scheduler, "ASHA or none",
                                               factory=lambda: {"type": "asha"})
    storage: str | None = _config.option(None, _config.text(optional=True), "Optuna storage")
    sampler: Sampler = _config.option(None, _config.section(
        Sampler, "{type: tpe|random, startup_trials: N}"), "tpe or random", factory=Sampler)
    seed: int = _config.option(0, _config.integer(0), "seed of the study")
    heartbeat: Heartbeat = _config.option(None, _config.section(
        Heartbeat, "{interval: S, grace: S}"), "seconds", factory=Heartbeat)
    race: RaceSettings | None = _config.option(True, _check_race, "the decision stage",
                                               factory=RaceSettings)
    confirm: Any = _config.option(None, _check_confirm, "replaced by race")
    cost: Cost = _config.option(None, _config.section(Cost, "{weight: W}"),
                                "weight of the passes per step", factory=Cost)
    meta: dict[str, Any] | str | None = _config.option(None, _optional(_check_meta),
                                                 "prior studies to start from")
    search: PopulationSettings | None = _config.option(None, _check_search,
                                                       "standard (default) or pbt")
    tracking: Tracking = _config.option(None, _config.section(
        Tracking, "{tensorboard: true|false, mlflow: URI, wandb: PROJECT}"),
        "where per-epoch metrics go besides the storage", factory=Tracking)
    effort: str = _config.option("thorough", _config.choice(*EFFORTS),
                                 "quick: candidates named in advance, a race and a confirmation "
                                 "within `budget`; thorough: the search, race and confirmation "
                                 "as configured")
    budget: float | None = _config.option(None, _optional(_config.number(1.0)),
                                          "full-run equivalents for the whole study (quick: "
                                          "10 if not given)")

    def __post_init__(self) -> None:
        _config.validate(self)
