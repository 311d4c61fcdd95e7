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
    meta:                               # optional: start from what finished studies taught
      from: [../other/study.yaml, team-knowledge.json]  # study files or knowledge files
      k: 3                              # the zero-shot portfolio's size
      box: 0.5                          # share of region trials within the winners' boxes
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metasam import _checks, _config
from metasam.errors import ConfigError, ValidationError
from metasam.training.config import TrainConfig
from metasam.tuning.space import SearchSpace

METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")
COST_SCORE = "cost_score"
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
    cost_weight: float = 0.0
    meta: dict[str, Any] | None = None  # {"from": [paths], "k": K, "box": P} (absolute paths)

    @property
    def objective(self) -> str:
        """What Optuna and ASHA rank trials by: the metric, or with ``cost: {weight: w}`` the
        cost-aware score (see :func:`metasam.tuning.cost.cost_score`)."""
        return COST_SCORE if self.cost_weight > 0 else self.metric

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
        if space.search is None and file.trials > len(space.points):
            raise ConfigError("trials", f"{file.trials} trials but the points-only space "
                              f"{space.name!r} has {len(space.points)} points",
                              f"1 to {len(space.points)}")
        heartbeat = file.heartbeat
        if heartbeat["grace"] < 2 * heartbeat["interval"]:
            raise ConfigError("heartbeat.grace", f"out of range: {heartbeat['grace']}",
                              f"[{2 * heartbeat['interval']}, inf)")
        return cls(name=file.name, path=path.resolve(), space=space,
                   train=train.replace(seed=file.seed), metric=metric, mode=mode,
                   trials=file.trials, concurrency=file.concurrency,
                   cpu=file.resources["cpu"], gpu=file.resources["gpu"],
                   scheduler=_resolve_scheduler(file.scheduler, train.epochs),
                   storage=_read_storage(file.storage, path, file.name), sampler=file.sampler,
                   seed=file.seed, heartbeat_interval=heartbeat["interval"],
                   heartbeat_grace=heartbeat["grace"], confirm=file.confirm,
                   cost_weight=file.cost["weight"], meta=_resolve_meta(file.meta, path))

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
        if self.cost_weight > 0:
            out["cost_weight"] = self.cost_weight
        return out

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
                train_changes: dict[str, Any], cost_weight: float | None = None
                ) -> StudyConfig:
        """A points-only study ``NAME.SUFFIX`` in the same storage, every point at full budget
        (the confirmation runs, the comparison runs, tuned baselines); it learns nothing from
        prior studies (no ``meta``): it runs exactly its points."""
        import dataclasses

        space = SearchSpace(f"{self.name}.{suffix}", points, None)
        return dataclasses.replace(
            self, name=f"{self.name}.{suffix}", space=space,
            train=self.train.replace(**train_changes), metric=metric, mode=mode,
            trials=len(points), scheduler={"type": "none"}, confirm={"top_k": 0, "seeds": 0},
            cost_weight=self.cost_weight if cost_weight is None else cost_weight, meta=None)

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


def _section(name: str, data: Any, shape: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A mapping section of the study file: absent is empty; anything but a mapping, or a key
    not in ``keys``, is an error naming the section and its ``shape``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected {shape}")
    _checks.known_keys(name, data, keys)
    return data


def _check_resources(name: str, data: Any) -> dict[str, float]:
    data = _section(name, data, "{cpu: N, gpu: F}", ("cpu", "gpu"))
    return {"cpu": _checks.number(f"{name}.cpu", data.get("cpu", 1), low=0.0, low_open=True),
            "gpu": _checks.number(f"{name}.gpu", data.get("gpu", 0), low=0.0)}


def _check_heartbeat(name: str, data: Any) -> dict[str, int]:
    data = _section(name, data, "{interval: S, grace: S}", ("interval", "grace"))
    return {"interval": _checks.integer(f"{name}.interval", data.get("interval", 10), low=1),
            "grace": _checks.integer(f"{name}.grace", data.get("grace", 60), low=1)}


def _check_cost(name: str, data: Any) -> dict[str, float]:
    """``cost: {weight: w}``: rank trials by metric − w·(passes per step) (plus, for a
    minimized metric); absent or ``weight: 0``, by the metric alone."""
    data = _section(name, data, "{weight: W}", ("weight",))
    return {"weight": _checks.number(f"{name}.weight", data.get("weight", 0.0), low=0.0)}


META_DEFAULTS = {"k": 3, "box": 0.5}
PRIOR_SUFFIXES = (".yaml", ".yml", ".json")


def _check_meta(name: str, data: Any) -> dict[str, Any]:
    """``meta: {from: [PRIOR, ...], k: 3, box: 0.5}``: prior study files or knowledge files
    (relative to the study file), the portfolio size, the share of region trials sampled within
    the winners' boxes (0: none)."""
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


def _resolve_meta(meta: dict[str, Any] | None, path: Path) -> dict[str, Any] | None:
    """The ``meta`` section with its files resolved against the study file's folder; a file
    that is not there is an error now, not when the study starts."""
    if meta is None:
        return None
    return {**meta, "from": [prior_file(f"meta.from[{i}]", source, path.parent)
                             for i, source in enumerate(meta["from"])]}


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


def _check_confirm(name: str, data: Any) -> dict[str, Any]:
    """``confirm: {top_k: K, seeds: S}`` (default 3 and 3), or ``false`` to declare the best
    single-seed trial the winner."""
    if data is False or data is None:
        return {"top_k": 0, "seeds": 0}
    if data is True:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"expected {{top_k: K, seeds: S}} or false, got {data!r}")
    _checks.known_keys(name, data, ("top_k", "seeds"))
    top_k = _checks.integer(f"{name}.top_k", data.get("top_k", 3), low=0)
    seeds = _checks.integer(f"{name}.seeds", data.get("seeds", 3), low=0 if top_k == 0 else 2)
    return {"top_k": top_k, "seeds": seeds}


def _check_sampler(name: str, data: Any) -> dict[str, Any]:
    data = _section(name, data, "{type: tpe|random, startup_trials: N}",
                    ("type", "startup_trials"))
    kind = _checks.choice(f"{name}.type", data.get("type", "tpe"), ("tpe", "random"))
    startup = _checks.integer(f"{name}.startup_trials", data.get("startup_trials", 10), low=0)
    return {"type": kind, "startup_trials": startup}


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
    resources: dict[str, float] = _config.option(None, _check_resources, "per trial",
                                                 factory=dict)
    scheduler: dict[str, Any] = _config.option(None, _check_scheduler, "ASHA or none",
                                               factory=lambda: {"type": "asha"})
    storage: str | None = _config.option(None, _config.text(optional=True), "Optuna storage")
    sampler: dict[str, Any] = _config.option(None, _check_sampler, "tpe or random",
                                             factory=lambda: {"type": "tpe"})
    seed: int = _config.option(0, _config.integer(0), "seed of the study")
    heartbeat: dict[str, int] = _config.option(None, _check_heartbeat, "seconds",
                                               factory=dict)
    confirm: dict[str, Any] = _config.option(None, _check_confirm, "finalists re-run",
                                             factory=dict)
    cost: dict[str, float] = _config.option(None, _check_cost, "weight of the passes per step",
                                            factory=dict)
    meta: dict[str, Any] | None = _config.option(None, _optional(_check_meta),
                                                 "prior studies to start from")

    def __post_init__(self) -> None:
        _config.validate(self)
