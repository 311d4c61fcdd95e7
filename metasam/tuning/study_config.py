"""Study configs: what to tune, on what data, with which budget, resources and storage.

    name: digits-quick                  # name in the storage and of files (default: file name)
    search_space: ../search_spaces/universal-poly.yaml   # relative to this file
    search: {type: pbt, population: 8, interval: 2}      # optional: population-based training
                                        # in place of the sampler (see population.py)
    train: {dataset: digits, model: cnn, epochs: 8}     # TrainConfig fields shared by all trials
    metric: val_acc                     # a validation or training metric, never a test one
    mode: max                           # optional: max for accuracies, min for losses
    trials: 24                          # trials that reach a terminal state
    concurrency: 2
    resources: {cpu: 1, gpu: 0}         # per trial; gpu may be a fraction (0.25: 4 per GPU)
    scheduler: {type: asha, grace_period: auto, reduction_factor: 3}   # auto: 1 rung at 75%
    race: {top_k: 2, budget: 36}        # the decision: finalists, presets, SGD and SAM race
                                        # over paired instances, then the winner is confirmed
                                        # on fresh held-back instances (holdout: 0.3,
                                        # confirm_budget: 40, detect: 0.01, power: 0.8;
                                        # false: off; see metasam.decision)
    storage: null                       # default sqlite:///<this folder>/<name>.db; or
                                        # postgresql://..., or journal:FILE (Optuna's file
                                        # journal, for a shared filesystem; relative to here)
    sampler: {type: tpe, startup_trials: 10}
    seed: 0
    heartbeat: {interval: 10, grace: 60} # seconds; a trial silent for `grace` is re-run
    tracking: {tensorboard: true}       # per-epoch curves of every run under tensorboard/
                                        # here; mlflow: URI and wandb: PROJECT add Ray Tune's
                                        # MLflow / W&B callbacks (packages installed by you)
    meta:                               # optional: start from what finished studies taught
      from: [../other/study.yaml, team-knowledge.json]  # study files or knowledge files
      k: 3                              # the zero-shot portfolio's size
      box: 0.5                          # share of region trials within the winners' boxes
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna

from metasam import _checks, _config
from metasam.errors import ConfigError, ValidationError
from metasam.training.config import TrainConfig
from metasam.tuning.record import DEFINITION
from metasam.tuning.space import SearchSpace
from metasam.tuning.study_file import (
    META_DEFAULTS,
    METRICS,
    PopulationSettings,
    RaceSettings,
    Sampler,
    StudyFile,
    Tracking,
    prior_file,
)
from metasam.tuning.trials import Point

COST_SCORE = "cost_score"
__all__ = ["COST_SCORE", "METRICS", "MetaSettings", "StudyConfig", "prior_file"]


@dataclass
class StudyConfig:
    name: str
    path: Path
    space: SearchSpace
    train: TrainConfig
    metric: str = "val_acc"
    mode: str = "max"
    trials: int = 20
    concurrency: int = 1
    cpu: float = 1.0
    gpu: float = 0.0
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    storage: str = ""
    sampler: Sampler = field(default_factory=Sampler)
    seed: int = 0
    heartbeat_interval: int = 10
    heartbeat_grace: int = 60
    race: RaceSettings | None = field(default_factory=RaceSettings)
    cost_weight: float = 0.0
    meta: MetaSettings | None = None
    population: PopulationSettings | None = None
    tracking: Tracking = field(default_factory=Tracking)
    effort: str = "thorough"
    budget: float | None = None
    cold: bool = False   # ``meta: none``: a quick study picks by its race alone, no prior

    @property
    def quick(self) -> bool:
        """A quick study: candidates named in advance, no search (metasam.decision.plan)."""
        return self.effort == "quick"

    def thorough(self) -> StudyConfig:
        """This study as a thorough one (``tune --thorough``): the search, race and
        confirmation of its file, as configured, under the name ``NAME-thorough`` (its own
        studies in the same storage) when the file is a quick one."""
        import dataclasses

        if not self.quick:
            return self
        return dataclasses.replace(self, name=f"{self.name}-thorough", effort="thorough",
                                   budget=None)

    @property
    def objective(self) -> str:
        """What Optuna and ASHA rank trials by: the metric, or with ``cost: {weight: w}`` the
        cost-aware score (see :func:`metasam.tuning.cost_score.cost_score`)."""
        return COST_SCORE if self.cost_weight > 0 else self.metric

    @property
    def target(self) -> int:
        """The trials the study ends with: ``trials``, a population's members, or none (a
        quick study: its candidates go straight to the race)."""
        if self.quick:
            return 0
        return self.population.population if self.population is not None else self.trials

    def headline(self) -> str:
        """What the study runs, in a few words (``24 trials, space universal-poly``)."""
        if self.quick:
            return "quick: candidates named in advance, no search"
        if self.population is None:
            return f"{self.trials} trials, space {self.space.name}"
        p = self.population
        return (f"population of {p.population} (PBT: exploit every {p.interval} epochs over "
                f"{self.train.epochs}), members in {', '.join(p.members)}")

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def ray_dir(self) -> Path:
        return (self.folder / ".metasam-ray").resolve()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> StudyConfig:
        source = str(path)
        data = _config.load_yaml(path)
        try:
            return cls._from_dict(data, Path(path))
        except ValidationError as err:
            raise ConfigError(err.field, err.problem, err.allowed, err.source or source
                              ) from None

    @classmethod
    def _from_dict(cls, data: Any, path: Path) -> StudyConfig:
        if not isinstance(data, dict):
            raise ConfigError("", "expected a mapping of study fields",
                              [f.name for f in fields(StudyFile)])
        # the file's own fields, each checked by its option (as TrainConfig's)
        file = _config.from_mapping(StudyFile, {"name": path.stem, **data})
        # then what needs the file's folder or several fields at once
        space = SearchSpace.from_yaml(_space_path(file.search_space, path))
        train = _read_train(file.train, path)
        metric = file.metric
        if metric.startswith("val_") and train.val_fraction == 0:
            raise ConfigError("metric", f"{metric} needs a validation split but train."
                              "val_fraction is 0", "train_acc, train_loss, or val_fraction > 0")
        direction = "max" if metric.endswith("acc") else "min"
        mode = file.mode or direction
        if mode != direction:
            raise ConfigError("mode", f"{mode!r} would {mode}imize {metric}", direction)
        if space.search is None and file.search is None and file.trials > len(space.points) \
                and file.effort != "quick":   # a quick study runs no trials of its own
            raise ConfigError("trials", f"{file.trials} trials but the points-only space "
                              f"{space.name!r} has {len(space.points)} points",
                              f"1 to {len(space.points)}")
        race = None if file.confirm is False else file.race
        file.tracking.check()
        heartbeat = file.heartbeat
        if heartbeat.grace < 2 * heartbeat.interval:
            raise ConfigError("heartbeat.grace", f"out of range: {heartbeat.grace}",
                              f"[{2 * heartbeat.interval}, inf)")
        return cls(name=file.name, path=path.resolve(), space=space,
                   train=train.replace(seed=file.seed, **_held_back(race, train, file.seed)),
                   metric=metric, mode=mode,
                   trials=file.trials, concurrency=file.concurrency,
                   cpu=file.resources.cpu, gpu=file.resources.gpu,
                   scheduler=_resolve_scheduler(file.scheduler, train.epochs),
                   storage=_read_storage(file.storage, path, file.name), sampler=file.sampler,
                   seed=file.seed, heartbeat_interval=heartbeat.interval,
                   heartbeat_grace=heartbeat.grace,
                   race=race,
                   cost_weight=file.cost.weight, meta=_resolve_meta(file.meta, path),
                   population=file.search, tracking=file.tracking,
                   effort=file.effort, budget=_budget(file, race),
                   cold=file.meta == "none")

    def with_overrides(self, trials: int | None = None, concurrency: int | None = None
                       ) -> StudyConfig:
        """This config with the command line's ``--trials`` / ``--concurrency``, validated as
        the YAML fields are."""
        import dataclasses

        changes: dict[str, Any] = {}
        try:
            if trials is not None:
                changes["trials"] = _checks.integer("--trials", trials, low=1)
                if self.space.search is None and trials > len(self.space.points):
                    raise ConfigError("--trials", f"{trials} trials but the points-only space "
                                      f"{self.space.name!r} has {len(self.space.points)} points",
                                      f"1 to {len(self.space.points)}")
            if concurrency is not None:
                changes["concurrency"] = _checks.integer("--concurrency", concurrency, low=1)
        except ValidationError as err:
            raise ConfigError(err.field, err.problem, err.allowed) from None
        return dataclasses.replace(self, **changes)

    # --- the stored definition ----------------------------------------------------------------

    def definition(self) -> dict[str, Any]:
        """What a study's trial values mean: its metric and mode, and the training every trial
        runs (fields that only change where or how fast it runs, or what is logged, left out)."""
        from metasam.training.config import EXECUTION_FIELDS, LOGGING_FIELDS

        train = {k: v for k, v in self.train.to_dict().items()
                 if k not in EXECUTION_FIELDS | LOGGING_FIELDS}
        out = {"metric": self.metric, "mode": self.mode, "train": train}
        if self.quick:   # its decision's candidates are named in advance
            out["effort"] = self.effort
        if self.cost_weight > 0:
            out["cost_weight"] = self.cost_weight
        if self.population is not None:  # its trials are a population's members
            import dataclasses

            out["search"] = {k: list(v) if isinstance(v, tuple) else v
                             for k, v in dataclasses.asdict(self.population).items()}
        return out

    def check_definition(self, study: optuna.Study, record: bool = False) -> None:
        """Refuse a study file whose definition differs from the one the storage holds for this
        study (its trials would be mixed with, or ranked as, something else); ``record`` stores
        it when the storage has none yet (a new study, or one made by an older version)."""
        import json

        stored_text = study.user_attrs.get(DEFINITION)
        mine = self.definition()
        if stored_text is None:
            if record:
                study.set_user_attr(DEFINITION, json.dumps(mine, sort_keys=True))
            return
        stored = json.loads(stored_text)
        flat_stored, flat_mine = _flatten(stored), _flatten(mine)
        for key in sorted(set(flat_stored) | set(flat_mine)):
            old, new = flat_stored.get(key), flat_mine.get(key)
            if old != new:
                raise ConfigError(
                    key, f"study {self.name!r} was created with {old!r}, this file says "
                    f"{new!r}; a study's metric, mode and train cannot change",
                    f"{key}: {old!r}, or a new study: change `name:` or `storage:`",
                    str(self.path))

    def load_study(self) -> optuna.Study:
        """This study from its storage, checked against this file's definition."""
        from metasam.tuning.storage import load_study

        study = load_study(self.storage, self.name)
        self.check_definition(study)
        return study

    def derived(self, suffix: str, points: list[Point], *, metric: str, mode: str,
                train_changes: dict[str, Any], cost_weight: float | None = None
                ) -> StudyConfig:
        """A points-only study ``NAME.SUFFIX`` in the same storage, every point at full budget
        (the race's runs, the comparison runs, tuned baselines); it learns nothing from
        prior studies (no ``meta``): it runs exactly its points."""
        import dataclasses

        space = SearchSpace(f"{self.name}.{suffix}", points, None)
        return dataclasses.replace(
            self, name=f"{self.name}.{suffix}", space=space,
            train=self.train.replace(**train_changes), metric=metric, mode=mode,
            trials=len(points), scheduler={"type": "none"}, race=None,
            cost_weight=self.cost_weight if cost_weight is None else cost_weight, meta=None,
            population=None, effort="thorough", budget=None)

    def check_data(self) -> None:
        """Load the dataset once: a missing one fails here, before Ray starts."""
        from metasam.data import DatasetNotFoundError
        from metasam.training.trainer import splits_of

        try:
            splits_of(self.train)
        except DatasetNotFoundError as err:
            raise ConfigError("train.dataset", str(err), source=str(self.path)) from None

    def data_dir(self) -> str:
        """The absolute data folder every trial reads (workers run in other folders)."""
        from metasam.data import default_data_dir

        return str(Path(self.train.data_dir or default_data_dir()).resolve())


def _budget(file: StudyFile, race: RaceSettings | None) -> float | None:
    """The study's budget in full-run equivalents: a quick study's (10 if not given) needs the
    race; a thorough one's must hold its trials and the race's opening."""
    from metasam.tuning.study_file import QUICK_BUDGET

    if file.effort == "quick":
        if race is None:
            raise ConfigError("race", "a quick study decides by its race", "leave race on, "
                              "or effort: thorough")
        if file.search is not None:
            raise ConfigError("search", "a quick study runs no search of its own",
                              "effort: thorough for a population")
        return QUICK_BUDGET if file.budget is None else file.budget
    if file.budget is not None:
        least = file.trials + (2 if race is not None else 0)
        if file.budget < least:
            raise ConfigError("budget", f"{file.budget:g} full-run equivalents cannot hold "
                              f"{file.trials} trials and the race's opening",
                              f"{least} or more, or fewer trials")
    return file.budget


def _held_back(race: RaceSettings | None, train: TrainConfig, seed: int) -> dict[str, Any]:
    """The train fields that hold back the verdict's share of the pool (a study that races),
    seeded by the study's seed; checked against the validation split."""
    if race is None or train.val_fraction == 0:
        return {}
    if train.val_fraction + race.holdout >= 1.0:
        raise ConfigError("race.holdout", f"{race.holdout} with train.val_fraction "
                          f"{train.val_fraction} leaves no training data",
                          f"[0.05, {1.0 - train.val_fraction:.2f})")
    return {"holdout": race.holdout, "holdout_seed": seed}




def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key == "train":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass(frozen=True)
class MetaSettings:
    """A study's ``meta`` section: start from what finished studies taught
    (:mod:`metasam.meta`)."""

    sources: tuple[str, ...]          # prior study files or knowledge files, resolved
    k: int = META_DEFAULTS["k"]       # the zero-shot portfolio's size
    box: float = META_DEFAULTS["box"]  # share of region trials within the winners' boxes


def _resolve_meta(meta: dict[str, Any] | str | None, path: Path) -> MetaSettings | None:
    """The ``meta`` section with its files resolved against the study file's folder; a file
    that is not there is an error now, not when the study starts."""
    if meta is None or meta == "none":
        return None
    assert isinstance(meta, dict)
    return MetaSettings(tuple(prior_file(f"meta.from[{i}]", source, path.parent)
                              for i, source in enumerate(meta["from"])), meta["k"], meta["box"])


def _space_path(value: str, path: Path) -> Path:
    space_path = Path(value)
    if not space_path.is_absolute():
        space_path = path.parent / space_path
    if not space_path.is_file():
        raise ConfigError("search_space", f"no such file: {space_path}",
                          "a path relative to the study file")
    return space_path


def _read_train(data: dict[str, Any], path: Path) -> TrainConfig:
    if data.get("data_dir") and not Path(data["data_dir"]).is_absolute():
        data = {**data, "data_dir": str((path.parent / data["data_dir"]).resolve())}
    try:
        return TrainConfig.from_dict({**data, "test": "none"})
    except ValidationError as err:
        raise err.within("train") from None


def _read_storage(value: Any, path: Path, name: str) -> str:
    if not value:
        return f"sqlite:///{(path.parent / (name + '.db')).resolve()}"
    allowed = "sqlite:///FILE, postgresql://USER@HOST/DB, journal:FILE"
    if not isinstance(value, str) or not value.startswith(("sqlite:///", "postgresql", "mysql",
                                                           "journal:")):
        raise ConfigError("storage", f"unsupported storage URL {value!r}", allowed)
    if value.startswith("journal:"):
        file = Path(os.path.expanduser(value[len("journal:"):]))
        if not str(file) or str(file) == ".":
            raise ConfigError("storage", "journal: needs a file name", allowed)
        file = (path.parent / file).resolve()
        if not file.parent.is_dir():
            raise ConfigError("storage", f"the journal's folder {file.parent} does not exist",
                              "journal:FILE in an existing folder")
        return f"journal:{file}"
    return value


def _resolve_scheduler(scheduler: dict[str, Any], epochs: int) -> dict[str, Any]:
    """ASHA's ``grace_period: auto`` for this budget, and a grace period within it."""
    if scheduler["type"] == "none":
        return scheduler
    grace = scheduler["grace_period"]
    if grace == "auto":
        from metasam.tuning.schedulers import auto_grace_period

        grace = auto_grace_period(epochs, scheduler["reduction_factor"])
    grace = _checks.integer("scheduler.grace_period", grace, low=1, high=epochs)
    return {**scheduler, "grace_period": grace}


