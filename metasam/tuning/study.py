"""Study configs: what to tune, on what data, with which budget, resources and storage.

    name: digits-quick                  # name in the storage and of files (default: file name)
    search_space: ../search_spaces/universal-poly.yaml   # relative to this file
    train: {dataset: digits, model: cnn, epochs: 8}     # TrainConfig fields shared by all trials
    metric: val_acc                     # a validation or training metric, never a test one
    mode: max                           # optional: max for accuracies, min for losses
    trials: 24                          # trials that reach a terminal state
    concurrency: 2
    resources: {cpu: 1, gpu: 0}         # per trial; gpu may be a fraction (0.25: 4 per GPU)
    scheduler: {type: asha, grace_period: auto, reduction_factor: 3}   # auto: 1 rung at 75%
    confirm: {top_k: 3, seeds: 3}       # re-run the finalists on fresh seeds (false: off)
    storage: null                       # default sqlite:///<this folder>/<name>.db; or
                                        # postgresql://..., or journal:FILE (Optuna's file
                                        # journal, for a shared filesystem; relative to here)
    sampler: {type: tpe, startup_trials: 10}
    seed: 0
    heartbeat: {interval: 10, grace: 60} # seconds; a trial silent for `grace` is re-run
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metasam import _checks, _config
from metasam.errors import ConfigError, ValidationError
from metasam.training.config import TrainConfig
from metasam.tuning.space import SearchSpace

_KEYS = ("name", "search_space", "train", "metric", "mode", "trials", "concurrency",
         "resources", "scheduler", "storage", "sampler", "seed", "heartbeat", "confirm")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


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
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    seed: int = 0
    heartbeat_interval: int = 10
    heartbeat_grace: int = 60
    confirm: dict[str, Any] = field(default_factory=lambda: {"top_k": 3, "seeds": 3})

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
            raise ConfigError("", "expected a mapping of study fields", ", ".join(_KEYS))
        _checks.known_keys("", data, _KEYS)
        name = data.get("name", path.stem)
        if not isinstance(name, str) or not name:
            raise ConfigError("name", f"expected a non-empty string, got {name!r}")
        if not _NAME.fullmatch(name):  # it names files: NAME.db, NAME.best.json
            raise ConfigError("name", f"{name!r} is not a plain file name",
                              "letters, digits, '.', '_', '-'")
        if "search_space" not in data:
            raise ConfigError("search_space", "missing", "a path to a search-space YAML file")
        space_path = Path(str(data["search_space"]))
        if not space_path.is_absolute():
            space_path = path.parent / space_path
        if not space_path.is_file():
            raise ConfigError("search_space", f"no such file: {space_path}",
                              "a path relative to the study file")
        space = SearchSpace.from_yaml(space_path)
        train_data = data.get("train") or {}
        if not isinstance(train_data, dict):
            raise ConfigError("train", "expected a mapping of training fields")
        for key in ("test", "checkpoint_dir", "spec", "preset", "seed"):
            if key in train_data:
                why = "is set by the study for each trial"
                if key == "seed":
                    why += " (use the study's top-level seed field)"
                raise ConfigError(f"train.{key}", why, "other TrainConfig fields")
        train_data = dict(train_data)
        if train_data.get("data_dir") and not Path(train_data["data_dir"]).is_absolute():
            train_data["data_dir"] = str((path.parent / train_data["data_dir"]).resolve())
        try:
            train = TrainConfig.from_dict({**train_data, "test": "none"})
        except ValidationError as err:
            raise err.within("train") from None
        metric = _checks.choice("metric", data.get("metric", "val_acc"), METRICS)
        if metric.startswith("val_") and train.val_fraction == 0:
            raise ConfigError("metric", f"{metric} needs a validation split but train."
                              "val_fraction is 0", "train_acc, train_loss, or val_fraction > 0")
        direction = "max" if metric.endswith("acc") else "min"
        mode = _checks.choice("mode", data.get("mode", direction), ("max", "min"))
        if mode != direction:
            raise ConfigError("mode", f"{mode!r} would {mode}imize {metric}", direction)
        trials = _checks.integer("trials", data.get("trials", 20), low=1)
        if space.search is None and trials > len(space.points):
            raise ConfigError("trials", f"{trials} trials but the points-only space "
                              f"{space.name!r} has {len(space.points)} points",
                              f"1 to {len(space.points)}")
        concurrency = _checks.integer("concurrency", data.get("concurrency", 1), low=1)
        resources = data.get("resources") or {}
        if not isinstance(resources, dict):
            raise ConfigError("resources", "expected {cpu: N, gpu: F}")
        _checks.known_keys("resources", resources, ("cpu", "gpu"))
        cpu = _checks.number("resources.cpu", resources.get("cpu", 1), low=0.0, low_open=True)
        gpu = _checks.number("resources.gpu", resources.get("gpu", 0), low=0.0)
        scheduler = _read_scheduler(data.get("scheduler") or {"type": "asha"}, train.epochs)
        storage = _read_storage(data.get("storage"), path, name)
        sampler = _read_sampler(data.get("sampler") or {"type": "tpe"})
        seed = _checks.integer("seed", data.get("seed", 0), low=0)
        heartbeat = data.get("heartbeat") or {}
        if not isinstance(heartbeat, dict):
            raise ConfigError("heartbeat", "expected {interval: S, grace: S}")
        _checks.known_keys("heartbeat", heartbeat, ("interval", "grace"))
        interval = _checks.integer("heartbeat.interval", heartbeat.get("interval", 10), low=1)
        grace = _checks.integer("heartbeat.grace", heartbeat.get("grace", 60), low=2 * interval)
        confirm = _read_confirm(data.get("confirm", {}))
        return cls(name=name, path=path.resolve(), space=space, train=train.replace(
            seed=seed), metric=metric, mode=mode, trials=trials, concurrency=concurrency,
            cpu=cpu, gpu=gpu, scheduler=scheduler, storage=storage, sampler=sampler, seed=seed,
            heartbeat_interval=interval, heartbeat_grace=grace, confirm=confirm)

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
        return {"metric": self.metric, "mode": self.mode, "train": train}

    def check_definition(self, study: Any, record: bool = False) -> None:
        """Refuse a study file whose definition differs from the one the storage holds for this
        study (its trials would be mixed with, or ranked as, something else); ``record`` stores
        it when the storage has none yet (a new study, or one made by an older version)."""
        import json

        stored_text = study.user_attrs.get(DEFINITION_ATTR)
        mine = self.definition()
        if stored_text is None:
            if record:
                study.set_user_attr(DEFINITION_ATTR, json.dumps(mine, sort_keys=True))
            return
        stored = json.loads(stored_text)
        flat_stored, flat_mine = _flatten(stored), _flatten(mine)
        for key in sorted(set(flat_stored) | set(flat_mine)):
            old, new = flat_stored.get(key), flat_mine.get(key)
            if old != new:
                raise ValueError(
                    f"{self.path}: {key}: study {self.name!r} was created with {old!r}, this "
                    f"file says {new!r}; a study's metric, mode and train cannot change (allowed: "
                    f"{key}: {old!r}, or a new study: change `name:` or `storage:`)")

    def load_study(self) -> Any:
        """This study from its storage, checked against this file's definition."""
        from metasam.tuning.storage import load_study

        study = load_study(self.storage, self.name)
        self.check_definition(study)
        return study

    def derived(self, suffix: str, points: list[Any], *, metric: str, mode: str,
                train_changes: dict[str, Any]) -> StudyConfig:
        """A points-only study ``NAME.SUFFIX`` in the same storage, every point at full budget
        (the confirmation runs, the comparison runs, tuned baselines)."""
        import dataclasses

        space = SearchSpace(f"{self.name}.{suffix}", points, None)
        return dataclasses.replace(
            self, name=f"{self.name}.{suffix}", space=space,
            train=self.train.replace(**train_changes), metric=metric, mode=mode,
            trials=len(points), scheduler={"type": "none"}, confirm={"top_k": 0, "seeds": 0})

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


DEFINITION_ATTR = "metasam:definition"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key == "train":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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


def _read_scheduler(data: Any, epochs: int) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError("scheduler", "expected {type: asha, ...} or {type: none}")
    kind = _checks.choice("scheduler.type", data.get("type", "asha"), ("asha", "none"))
    if kind == "none":
        _checks.known_keys("scheduler", data, ("type",))
        return {"type": "none"}
    _checks.known_keys("scheduler", data, ("type", "grace_period", "reduction_factor"))
    factor = _checks.number("scheduler.reduction_factor", data.get("reduction_factor", 3),
                            low=1.0, low_open=True)
    grace = data.get("grace_period", "auto")
    if grace == "auto":
        from metasam.tuning.schedulers import auto_grace_period

        grace = auto_grace_period(epochs, factor)
    grace = _checks.integer("scheduler.grace_period", grace, low=1, high=epochs)
    return {"type": "asha", "grace_period": grace, "reduction_factor": factor}


def _read_confirm(data: Any) -> dict[str, Any]:
    """``confirm: {top_k: K, seeds: S}`` (default 3 and 3), or ``false`` to declare the best
    single-seed trial the winner."""
    if data is False or data is None:
        return {"top_k": 0, "seeds": 0}
    if data is True:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("confirm", f"expected {{top_k: K, seeds: S}} or false, got {data!r}")
    _checks.known_keys("confirm", data, ("top_k", "seeds"))
    top_k = _checks.integer("confirm.top_k", data.get("top_k", 3), low=0)
    seeds = _checks.integer("confirm.seeds", data.get("seeds", 3), low=0 if top_k == 0 else 2)
    return {"top_k": top_k, "seeds": seeds}


def _read_sampler(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError("sampler", "expected {type: tpe|random, startup_trials: N}")
    _checks.known_keys("sampler", data, ("type", "startup_trials"))
    kind = _checks.choice("sampler.type", data.get("type", "tpe"), ("tpe", "random"))
    startup = _checks.integer("sampler.startup_trials", data.get("startup_trials", 10), low=0)
    return {"type": kind, "startup_trials": startup}
