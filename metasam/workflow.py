"""One owner of a study's workflow: tune → race → verdict → export, resumable at every step.

The command line (``metasam tune``, ``best``, ``trials``), the benchmark scripts and
:func:`metasam.load_optimizer` all go through :class:`Study`; nothing else sequences the stages.

Example::

    from metasam import Study

    study = Study.from_yaml("studies/digits-noisy.yaml")
    outcome = study.run()              # tune, then the decision stage; resumes if interrupted
    print("\\n".join(outcome.verdict.lines(study.config.objective)))
    optimizer = study.load_optimizer(model.parameters(), model=model)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from torch import nn

from metasam.decision import stage as decision
from metasam.decision.budget import StudyCost
from metasam.decision.export import best_optimizer
from metasam.decision.plan import StudyPlan
from metasam.decision.stage import Verdict
from metasam.errors import ConfigError
from metasam.family import presets
from metasam.family.spec import SharpnessSpec
from metasam.meta.knowledge import load_priors
from metasam.meta.transfer import plan_transfer
from metasam.optim.loading import Recipe
from metasam.optim.loading import load_optimizer as _load_export
from metasam.optim.loading import load_recipe as _load_recipe
from metasam.optim.universal_sam import UniversalSAM
from metasam.tuning import record
from metasam.tuning.member_sampling import RegionBoxes
from metasam.tuning.runner import TuneResult, tune_study, warm_start_points
from metasam.tuning.storage import census, open_storage, open_study
from metasam.tuning.study_config import MetaSettings, StudyConfig
from metasam.tuning.tracking import check_trackers
from metasam.tuning.trials import Point


@dataclass(frozen=True)
class StudyOutcome:
    """What :meth:`Study.run` reached: the tuning result, whether the race finished, and the
    verdict (``None`` when the study decides nothing: ``race: false``)."""

    tuning: TuneResult
    decided: bool
    verdict: Verdict | None

    @property
    def complete(self) -> bool:
        """Did every stage finish (else: run again to resume)?"""
        return self.tuning.done and self.decided


class Study:
    """A tuning study and its whole workflow, backed by its storage (resumable, shareable).

    ``config`` is the validated study file; ``address`` a Ray cluster to join (default: a local
    one, or the cluster ``ray start`` recorded on this machine); ``verbose`` 0 (quiet), 1 (the
    study's progress) or 2 (also Ray's own logs); ``log`` where the study's one-line notes go.
    """

    def __init__(self, config: StudyConfig, *, address: str | None = None, verbose: int = 1,
                 log: TextIO | None = None) -> None:
        self.config = config
        self.address = address
        self.verbose = verbose
        self._log = log
        self._optuna_study: optuna.Study | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Study:
        return cls(StudyConfig.from_yaml(path), **kwargs)

    @property
    def optuna_study(self) -> optuna.Study:
        """The study's Optuna study, opened (created when new) once per :class:`Study`, on the
        storage its process shares (:func:`metasam.tuning.storage.open_storage`)."""
        if self._optuna_study is None:
            config = self.config
            self._optuna_study = open_study(
                open_storage(config.storage, config.heartbeat_interval, config.heartbeat_grace),
                config.name, config.mode)
        return self._optuna_study

    def _say(self, text: str) -> None:
        print(text, file=self._log or sys.stderr, flush=True)

    # --- the stages -------------------------------------------------------------------------

    def tune(self, *, warm_start: StudyConfig | None = None, top_k: int = 3,
             meta: MetaSettings | None = None) -> TuneResult:
        """Run (or resume, or join) the search until the study has its finished trials.

        ``warm_start`` evaluates the top ``top_k`` specs of another study first; ``meta``
        (default: the study file's ``meta`` section) starts from prior studies: the zero-shot
        portfolio first, and the preset regions sampled within the similar priors' boxes on a
        share of the trials."""
        config = self.config
        config.check_data()
        check_trackers(config.tracking, str(config.path))   # every mode, before Ray or a run
        if config.quick:   # no search: its candidates are named in advance (decision.plan)
            study = self.optuna_study
            config.check_definition(study, record=True)
            if not config.cold and record.PRIOR not in study.user_attrs:
                # the pick's prior, kept with the study so that a later release's portfolio
                # never changes a started study's decision
                study.set_user_attr(record.PRIOR, json.dumps(decision.portfolio_prior()))
            return TuneResult(config.name, census(study), target=0)
        if config.population is not None:
            return self._population()
        first: list[Point] = []
        if warm_start is not None:
            first += warm_start_points(warm_start, top_k)
        meta = meta if meta is not None else config.meta
        if meta is not None:
            config, portfolio = self._meta_started(meta)
            first += portfolio
        return tune_study(config, address=self.address, first=first, verbose=self.verbose,
                          check_data=False)

    def _population(self) -> TuneResult:
        """A PBT study (``search: {type: pbt}``): the population, then its members as trials."""
        from metasam.analysis.plots import plot_population
        from metasam.tuning.population import run_population

        config = self.config
        done = run_population(config, address=self.address, verbose=self.verbose)
        study = self.optuna_study
        figure = plot_population(study, config.train.epochs, config.metric, config.mode,
                                 config.folder / f"{config.name}.pbt.png", config.name)
        if figure is not None and self.verbose:
            self._say(f"study {config.name}: members' schedules and curves: {figure}")
        return TuneResult(config.name, census(study), done.runs, 0, target=config.target)

    def _meta_started(self, meta: MetaSettings) -> tuple[StudyConfig, list[Point]]:
        """The config sampling the preset regions within the similar priors' boxes on a share
        ``meta.box`` of its trials, and the portfolio (for a study with no trials yet)."""
        config = self.config
        study = self.optuna_study
        config.check_definition(study, record=True)
        records = load_priors(list(meta.sources), "meta.from (or --meta)")
        plan = plan_transfer(config, study, records, meta.k)
        boxed = config.space.search is not None and bool(plan.boxes) and meta.box > 0
        if boxed:
            config = dataclasses.replace(config, space=dataclasses.replace(
                config.space, boxes=RegionBoxes(plan.boxes, meta.box)))
        # also with --quiet: what the study takes from its priors is a fact, not progress
        tasks = sorted(plan.similarity)
        text = (f"study {config.name}: learning from {len(tasks)} prior task(s); similar: "
                f"{', '.join(plan.similar) or 'none'}; portfolio: "
                f"{', '.join(p.label.method for p in plan.points) or 'none'}")
        if boxed:
            text += (f"; {meta.box:.0%} of region trials within the winners' boxes of "
                     f"{', '.join(sorted(plan.boxes))}")
        self._say(text)
        new = not census(study).counted
        return config, (plan.points if new else [])

    def decide(self) -> bool:
        """Run (or resume) the decision of a tuned study — the race, then the confirmation of
        its winner on fresh instances; ``True`` once both have ended (or when the study decides
        nothing)."""
        options = {"address": self.address, "verbose": self.verbose, "say": self._say}
        return decision.run_race(self.config, **options) and \
            decision.run_confirmation(self.config, **options)

    def verdict(self) -> Verdict | None:
        """The decision from the stored race and confirmation runs (``None`` before any race
        run finished)."""
        return decision.race_verdict(self.config)

    def plan(self) -> StudyPlan:
        """The study's plan, fixed before any run: what each stage may spend and the smallest
        difference its held-back data can confirm (:mod:`metasam.decision.plan`)."""
        return decision.study_plan(self.config)

    def cost(self) -> StudyCost:
        """What the study cost so far, in full-run equivalents (tuning, race, confirmation),
        beside its plan's stages when it has a plan."""
        return decision.planned_cost(self.config)

    def run(self, **tune_options: Any) -> StudyOutcome:
        """Tune, then decide: the whole workflow; the same call resumes an interrupted one."""
        tuning = self.tune(**tune_options)
        if not tuning.done:
            return StudyOutcome(tuning, False, None)
        decided = self.decide()
        return StudyOutcome(tuning, decided, self.verdict() if decided else None)

    # --- what users take away ----------------------------------------------------------------

    def export(self, max_cost: float | None = None) -> dict[str, Any]:
        """The winner as the JSON ``metasam best`` writes (see
        :func:`metasam.decision.export.best_optimizer`)."""
        return best_optimizer(self.config, max_cost=max_cost)

    def load_optimizer(self, params: Iterable[Any], *, model: nn.Module | None = None,
                       seed: int | None = None, **overrides: Any) -> UniversalSAM:
        """A ready :class:`~metasam.UniversalSAM` with the study's winner."""
        return _load_export(self.export(), params, model=model, seed=seed, **overrides)


def resolve_export(source: str | os.PathLike[str] | dict[str, Any]
                   ) -> str | os.PathLike[str] | dict[str, Any]:
    """What :func:`load_optimizer`, :func:`load_recipe` and :func:`resolve_spec` read: a study
    YAML's winner (through :class:`Study`, from the storage), else the export — the JSON that
    ``metasam best`` wrote, or that JSON as a dict — as given."""
    if isinstance(source, dict) or Path(source).suffix not in (".yaml", ".yml"):
        return source
    if not Path(source).is_file():
        raise ConfigError("study", "file not found", "a study YAML", str(source))
    return Study.from_yaml(source).export()


def resolve_spec(text: str) -> SharpnessSpec:
    """A member named on a command line: a preset name, a study YAML (its winner, named
    ``STUDY best``), or a spec or optimizer JSON file (named after the file when unnamed).

    Example::

        resolve_spec("frob_sam").name, resolve_spec("studies/digits-noisy.yaml").name
    """
    if text in presets.NAMES:
        return presets.get(text)
    path = Path(text)
    if path.suffix in (".yaml", ".yml"):
        data = resolve_export(text)
        assert isinstance(data, dict)
        return SharpnessSpec.from_dict(data["spec"]).replace(name=f"{data['study']} best")
    if not path.is_file():
        raise ConfigError("spec", f"{text!r} is neither a preset, a JSON file nor a study YAML",
                          f"{', '.join(presets.NAMES)}, a spec or optimizer JSON, a study YAML")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("", f"invalid JSON ({err})", "a spec or optimizer JSON, a study "
                          "YAML, a preset name", text) from None
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a JSON object, got {type(data).__name__}",
                          "a spec or optimizer JSON", text)
    spec = SharpnessSpec.from_dict(data.get("spec", data), source=text)
    return spec if spec.name else spec.replace(name=path.stem)


def load_optimizer(source: str | os.PathLike[str] | dict[str, Any], params: Iterable[Any], *,
                   model: nn.Module | None = None, seed: int | None = None,
                   **overrides: Any) -> UniversalSAM:
    """A ready :class:`~metasam.UniversalSAM` from a study's best optimizer, in one call.

    ``source`` is the study's YAML (its winner is read from the storage, through
    :class:`Study`), the JSON that ``metasam best`` wrote, or that JSON as a dict.
    ``overrides`` change base-optimizer arguments (``lr=...``); UniversalSAM's own options
    (``scaler``, ``max_grad_norm``, ``bn_stats``, ``on_nonfinite``, ``process_group``,
    ``total_steps``) go to it. Example::

        optimizer = metasam.load_optimizer("studies/digits-noisy.yaml", model.parameters(),
                                           model=model)
    """
    return _load_export(resolve_export(source), params, model=model, seed=seed, **overrides)


def load_recipe(source: str | os.PathLike[str] | dict[str, Any], params: Iterable[Any], *,
                model: nn.Module | None = None, seed: int | None = None,
                epochs: int | None = None, steps_per_epoch: int | None = None,
                batch_size: int | None = None, **overrides: Any) -> Recipe:
    """The study's winner with the learning-rate schedule it was tuned with (a
    :class:`~metasam.optim.loading.Recipe`: ``optimizer``, ``scheduler``, ``epochs``,
    ``per_step``, ``notes``); ``source`` as for :func:`load_optimizer`, the rest as
    :func:`metasam.optim.loading.load_recipe`. Example::

        recipe = metasam.load_recipe("studies/digits-noisy.yaml", model.parameters(),
                                     model=model, epochs=30, steps_per_epoch=len(loader))
    """
    return _load_recipe(resolve_export(source), params, model=model, seed=seed, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, batch_size=batch_size, **overrides)
