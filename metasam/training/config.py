"""TrainConfig: everything one training run (one trial of a study) depends on."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metasam import _checks, _config
from metasam._config import option
from metasam.data import AUGMENTATIONS, DATASETS, parse_name
from metasam.errors import ConfigError, SpecError
from metasam.family.presets import NAMES as PRESETS
from metasam.family.spec import SharpnessSpec
from metasam.models import MODELS
from metasam.optim.bases import BASES
from metasam.optim.lr_schedules import SCHEDULES
from metasam.optim.settings import BN_MODES, NONFINITE_MODES
from metasam.training.learned import LearnSettings

OPTIMIZERS = tuple(BASES)
TEST_MODES = ("none", "final", "epoch")
DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "mps")


COMPILE_MODES = ("none", "model", "step", "all")


def _compile(name: str, value: Any) -> str:
    """One of COMPILE_MODES; a boolean means "model" (true) or "none" (false)."""
    if isinstance(value, bool):
        return "model" if value else "none"
    return _checks.choice(name, value, COMPILE_MODES)


_compile.allowed = COMPILE_MODES  # type: ignore[attr-defined]   # for help texts

def _device(name: str, value: Any) -> str:
    """A device name torch understands (whether this machine has it is checked at run time:
    a study's config is read on machines without the workers' GPUs)."""
    value = _config.text()(name, value)
    if value != "auto":
        try:
            torch.device(value)
        except RuntimeError:
            raise ConfigError(name, f"unknown device {value!r}", DEVICE_FORMS) from None
    return value


def _dataset(name: str, value: Any) -> str:
    try:
        parse_name(value)
    except (ValueError, TypeError):
        raise ConfigError(name, f"unknown dataset {value!r}",
                          [*DATASETS, "(any of them with -S and/or -C)"]) from None
    return value


def _milestones(name: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ConfigError(name, f"expected a list of positive epoch numbers, got {value!r}",
                          "e.g. [50, 100, 150]")
    return sorted(value)


def _spec(name: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        spec = SharpnessSpec.coerce(value)
    except SpecError as err:
        raise ConfigError(f"{name}.{err.field}", err.problem, err.allowed, err.source) from None
    return spec.to_dict()


def _augment(name: str, value: Any) -> str:
    return _config.choice("auto", *AUGMENTATIONS)(name, value)


def _measures(name: str, value: Any) -> list[str]:
    from metasam.sharpness.estimators import check_name, measure_names

    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(name, f"expected a list of measure names, got {value!r}",
                          measure_names())
    for v in value:
        try:
            check_name(v)
        except ValueError:
            raise ConfigError(name, f"unknown measure {v!r}", measure_names()) from None
    return list(value)


# Fields a run may change without changing what it computes (a resumed run, a study's trials).
EXECUTION_FIELDS = frozenset({"checkpoint_every", "checkpoint_dir", "resume", "device",
                              "num_threads", "eval_batch_size", "data_dir", "download", "test"})
# Fields that only add measurements to a run's log.
LOGGING_FIELDS = frozenset({"sharpness_every", "sharpness_measures", "sharpness_examples",
                            "sharpness_probes"})


@dataclass
class TrainConfig:
    """One training run. Every field can come from YAML (``--config``) or the command line.

    Example::

        >>> cfg = TrainConfig(dataset="digits", model="mlp", preset="frob_sam", epochs=20)
        >>> cfg.resolved_spec().name
        'frob_sam'
    """

    # data
    dataset: str = option("digits", _dataset, "dataset name; NAME-S keeps the first 10%, "
                          "NAME-C flips 20% of the training labels")
    data_dir: str | None = option(None, _config.text(optional=True),
                                  "folder with the data (default $METASAM_DATA or ./data)")
    download: bool = option(False, _config.boolean, "let torchvision download missing data")
    subset: float | None = option(None, _config.number(0.0, 1.0, low_open=True, optional=True),
                                  "keep this fraction of the training set")
    subset_mode: str = option("first", _config.choice("first", "stratified"),
                              "which fraction: the first examples or a stratified random draw")
    subset_seed: int = option(0, _config.integer(0), "seed of the stratified subset")
    label_noise: float = option(0.0, _config.number(0.0, 1.0),
                                "fraction of training labels flipped to another class")
    noise_seed: int = option(0, _config.integer(0), "seed of the label corruption")
    val_fraction: float = option(0.1, _config.number(0.0, 0.9),
                                 "validation split carved from the training set")
    val_seed: int = option(0, _config.integer(0), "seed of the validation split")
    val_fold: int | None = option(None, _config.integer(0, optional=True),
                                  "validation = this fold of the stratified k-fold split "
                                  "seeded val_seed, k = round(1/val_fraction)")
    val_folds: int | None = option(None, _config.integer(2, optional=True),
                                   "k of the k-fold split val_fold picks from (default from "
                                   "val_fraction)")
    holdout: float = option(0.0, _config.number(0.0, 0.9),
                            "share of the pool held back for a study's verdict: validation "
                            "examples come from the rest (val_scope: rest) or from it "
                            "(val_scope: holdout); 0: none")
    holdout_seed: int = option(0, _config.integer(0), "seed of the held-back share")
    val_scope: str = option("rest", _config.choice("rest", "holdout"),
                            "where validation examples come from when holdout > 0")
    augment: str = option("auto", _augment, "augmentation (auto: crop+flip for CIFAR, crop "
                          "for SVHN, none otherwise)")
    # model and optimization
    model: str = option("cnn", _config.choice(*MODELS), "model name")
    epochs: int = option(30, _config.integer(1), "training epochs")
    batch_size: int = option(128, _config.integer(1), "mini-batch size")
    optimizer: str = option("sgd", _config.choice(*OPTIMIZERS), "base optimizer")
    lr: float = option(0.05, _config.number(0.0, low_open=True), "learning rate")
    momentum: float = option(0.9, _config.number(0.0, 1.0), "SGD momentum")
    nesterov: bool = option(False, _config.boolean, "Nesterov momentum (SGD)")
    weight_decay: float = option(5e-4, _config.number(0.0), "weight decay")
    schedule: str = option("cosine", _config.choice(*SCHEDULES), "learning-rate schedule")
    milestones: list[int] | None = option(None, _milestones, "multistep epochs (default: 25%, "
                                          "50% and 75% of the epochs)")
    gamma: float = option(0.1, _config.number(0.0, 1.0, low_open=True),
                          "multistep decay factor")
    # the sharpness-aware part
    preset: str = option("sgd", _config.choice(*PRESETS), "sharpness preset")
    learn: dict[str, Any] | None = option(
        None, lambda n, v: None if v is None else LearnSettings.of(v).to_dict(),
        "learn the bias during the run by hypergradients on the validation split: {params: "
        "[lam, phi, psi], every: K, lr: A, val_batch: B} (SGD, a fixed member with lam > 0)")
    spec: dict[str, Any] | None = option(None, _spec, "a SharpnessSpec (dict or JSON file); "
                                         "overrides preset")
    rho: float | None = option(None, _config.number(0.0, low_open=True, optional=True),
                               "override the spec's ρ")
    lam: float | None = option(None, _config.number(0.0, optional=True),
                               "override the spec's λ")
    n: int | None = option(None, _config.integer(1, optional=True), "override the spec's n")
    max_grad_norm: float | None = option(None, _config.number(0.0, low_open=True,
                                                              optional=True),
                                         "clip the combined gradient")
    bn_stats: str = option("freeze", _config.choice(*BN_MODES),
                           "BatchNorm statistics in perturbed passes")
    on_nonfinite: str = option("raise", _config.choice(*NONFINITE_MODES),
                               "a non-finite step raises (the run ends as diverged) or is "
                               "skipped (as UniversalSAM's on_nonfinite)")
    # execution
    seed: int = option(0, _config.integer(0), "seed of the model, batches and perturbations")
    device: str = option("auto", _device, "auto, cpu, cuda, cuda:1, ...")
    bf16: bool = option(False, _config.boolean, "bf16 autocast of the forward passes")
    fp16: bool = option(False, _config.boolean, "fp16 autocast of the forward passes with a "
                        "GradScaler (overflowing steps are skipped)")
    channels_last: bool = option(False, _config.boolean, "channels_last memory format (GPU)")
    compile: str = option("none", _compile, "torch.compile: model (the forward passes), step "
                          "(the optimizer's device arithmetic), all (both); true means model")
    num_threads: int | None = option(None, _config.integer(1, optional=True),
                                     "CPU threads for torch")
    test: str = option("final", _config.choice(*TEST_MODES),
                       "evaluate the test set never, at the end, or every epoch")
    eval_batch_size: int = option(1024, _config.integer(1), "batch size of evaluation")
    sharpness_every: int = option(0, _config.integer(0), "measure Hessian sharpness every K "
                                  "epochs (0: never)")
    sharpness_measures: list[str] = option(None, _measures, "Hessian measures to log",
                                           factory=lambda: ["trace", "frob", "lmax"])
    sharpness_examples: int = option(1280, _config.integer(1), "training examples (fixed, "
                                     "un-augmented) the Hessian measures use")
    sharpness_probes: int = option(20, _config.integer(2), "probes per Hessian estimate")
    checkpoint_dir: str | None = option(None, _config.text(optional=True),
                                        "where checkpoints go")
    checkpoint_every: int = option(0, _config.integer(0), "checkpoint every K epochs (0: "
                                   "only with checkpoint_dir, at the end)")
    resume: bool = option(True, _config.boolean, "resume from checkpoint_dir if it has a "
                          "checkpoint")

    def __post_init__(self) -> None:
        _config.validate(self)
        if self.bf16 and self.fp16:
            raise ConfigError("fp16", "bf16 and fp16 both asked for", "one of them")
        if self.holdout > 0 and self.val_fraction > 0 and \
                self.val_fraction + self.holdout >= 1.0:
            raise ConfigError("holdout", f"{self.holdout} with val_fraction "
                              f"{self.val_fraction} leaves no training data",
                              f"[0, {1.0 - self.val_fraction:.2f})")
        if self.val_scope == "holdout" and (self.holdout <= 0 or self.val_fold is None
                                            or self.val_folds is None):
            raise ConfigError("val_scope", "holdout needs holdout > 0, val_fold and val_folds",
                              "rest, or holdout with those three set")
        if self.milestones and max(self.milestones) >= self.epochs + 1:
            raise ConfigError("milestones", f"epoch {max(self.milestones)} is past the "
                              f"{self.epochs} epochs", f"epochs 1 to {self.epochs}")
        try:
            self.resolved_spec()
        except SpecError as err:
            raise ConfigError(err.field, err.problem, err.allowed) from None

    # --- reading and writing --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> TrainConfig:
        return _config.from_mapping(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        return cls.from_dict(_config.load_yaml(path) or {}, source=str(path))

    @classmethod
    def coerce(cls, config: TrainConfig | dict[str, Any] | str | os.PathLike[str]
               ) -> TrainConfig:
        if isinstance(config, TrainConfig):
            return config
        if isinstance(config, (str, os.PathLike)):
            return cls.from_yaml(config)
        return cls.from_dict(config)

    def to_dict(self) -> dict[str, Any]:
        return _config.to_mapping(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # --- derived ----------------------------------------------------------------------------

    def resolved_spec(self) -> SharpnessSpec:
        """The spec this run trains with: ``spec`` or ``preset``, with ρ/λ/n overrides."""
        from metasam.family import presets

        spec = SharpnessSpec.from_dict(self.spec) if self.spec else presets.get(self.preset)
        changes = {k: v for k, v in (("rho", self.rho), ("lam", self.lam), ("n", self.n))
                   if v is not None}
        return spec.replace(**changes) if changes else spec

    def resolved_augment(self) -> str:
        if self.augment != "auto":
            return self.augment
        return DATASETS[parse_name(self.dataset)[0]].augment

    def resolved_milestones(self) -> list[int]:
        if self.milestones:
            return self.milestones
        return sorted({max(1, round(self.epochs * f)) for f in (0.25, 0.5, 0.75)})

    def checkpoint_path(self) -> Path | None:
        return Path(self.checkpoint_dir) / "checkpoint.pt" if self.checkpoint_dir else None
