"""Population-based training (PBT, Jaderberg et al. 2017): a schedule found by a population.

A study with ``search: {type: pbt, ...}`` (:class:`~metasam.tuning.study_file.PopulationSettings`)
trains ``population`` members side by side, each in a preset region (ρ, and λ where the region
has one). Training is cut into generations of ``interval`` epochs; after each generation the
members are ranked by the study's metric and the bottom ``quantile`` (and every diverged member)
*exploit* — copy the whole state of a random member of the top ``quantile`` (weights, the
optimizer's and base optimizer's state, the loss scaler, the learning-rate schedule, the loader's
position, the RNGs, its parameter history and its seed) — and *explore*: each field is
resampled from the region with probability ``resample``, else multiplied by one of ``factors``.

A member's parameter history is a spec with ``vary`` phases (docs/family.md §3.5): replayed from
scratch with the member's seed it makes the same updates as the member did (tested bit for
bit). At the end every member becomes a COMPLETE trial of the study (label role
``population``, its history and exploit events in its attributes), so the race, the
confirmation, ``best``, ``trials`` and ``report`` treat the best members' schedules as any
candidate: replayed from scratch on fresh instances.

Synchronous generations, decided in this process: the plan of each generation (who copies
whom, the new values) is a function of the study's seed and the previous generation's results,
stored in the study's Optuna storage before its runs start; each member's run of a generation
writes its state and result next to the study (``.metasam-pbt/NAME/``: a shared filesystem for
multi-node studies) and reports them to Ray Tune as a checkpoint. A killed study resumes at the
first member run without a result: no member is lost or run twice. Ray Tune places the runs
(``resources`` and ``concurrency`` as for any study: fractional GPUs included).

Cost: each member trains every epoch once (in its own slot), so the population costs about
``population`` full-run equivalents; an exploit copies a state and costs no training.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from metasam.family.spec import SharpnessSpec
from metasam.tuning import record
from metasam.tuning.naming import describe_spec
from metasam.tuning.regions import REGIONS
from metasam.tuning.study_config import StudyConfig
from metasam.tuning.study_file import PopulationSettings
from metasam.tuning.trials import Label, Role, Status

VARIED = ("rho", "lam")     # what a member's history may change (a region's τ stays as drawn)


@dataclass
class Member:
    """One member at the start of a generation: its region, the seed of its lineage, its
    current values, its phases so far (``[at, values]``) and where its state is."""

    index: int
    region: str
    seed: int
    values: dict[str, float]
    fixed: dict[str, float] = field(default_factory=dict)   # region fields it never varies
    phases: list[list[Any]] = field(default_factory=list)
    start: str | None = None          # the checkpoint it continues (None: from scratch)
    events: list[dict[str, Any]] = field(default_factory=list)

    def spec(self, guard: float | None = None) -> SharpnessSpec:
        """The member's spec: the region's member with ``vary`` phases where a field changed."""
        base = REGIONS[self.region].spec({**self.fixed, **self.phases[0][1]}, guard)
        vary: dict[str, Any] = {}
        for key in self.values:
            steps: list[list[float]] = []
            for at, values in self.phases:
                if not steps or steps[-1][1] != values[key]:
                    steps.append([at, values[key]])
            if len(steps) > 1:
                vary[key] = {"phases": steps}
        changes = {k: v for k, v in self.phases[-1][1].items() if k not in vary}
        return base.replace(vary=vary or None, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Member:
        return cls(**data)


def generations(settings: PopulationSettings, epochs: int) -> list[tuple[int, int]]:
    """The generations' epoch ranges ``[start, end)``."""
    cuts = list(range(0, epochs, settings.interval)) + [epochs]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def initial_members(settings: PopulationSettings, seed: int, width: float) -> list[Member]:
    """The first generation: members spread over the regions in turn, each field drawn
    log-uniformly from its region (seeded by the study's seed), each member its own seed."""
    rng = random.Random(f"metasam-pbt-{seed}-init")
    members = []
    for i in range(settings.population):
        region = settings.members[i % len(settings.members)]
        ranges = REGIONS[region].ranges(width)
        drawn = {k: _log_uniform(rng, low, high) for k, (low, high) in ranges.items()}
        values = {k: v for k, v in drawn.items() if k in VARIED}
        fixed = {k: v for k, v in drawn.items() if k not in VARIED}
        members.append(Member(i, region, seed + 1000 * (i + 1), values, fixed,
                              [[0.0, dict(values)]]))
    return members


def exploit_and_explore(members: list[Member], results: dict[int, dict[str, Any]],
                        settings: PopulationSettings, generation: int, at: float, seed: int,
                        width: float, mode: str) -> list[Member]:
    """The next generation's members from this one's ``results`` (per member: ``score``,
    ``status``, ``checkpoint``): the bottom quantile and the diverged copy a random member of
    the top quantile and perturb its values; the others continue their own state."""
    rng = random.Random(f"metasam-pbt-{seed}-{generation}")
    sign = -1.0 if mode == "max" else 1.0

    def key(m: Member) -> tuple[float, int]:
        r = results[m.index]
        score = r.get("score")
        bad = r["status"] != Status.COMPLETED.value or score is None or not math.isfinite(score)
        return (math.inf if bad else sign * score, m.index)

    ranked = sorted(members, key=key)      # best first
    count = min(max(1, math.ceil(settings.quantile * len(members))), len(members) // 2)
    top = [m for m in ranked[:count] if key(m)[0] != math.inf]
    losers = {m.index for m in ranked[-count:]} | {m.index for m in members
                                                   if key(m)[0] == math.inf}
    out = []
    tops = {m.index for m in top}
    for m in members:
        own = results[m.index]["checkpoint"]
        if m.index not in losers or not top or m.index in tops:
            out.append(Member(m.index, m.region, m.seed, dict(m.values), dict(m.fixed),
                              [list(p) for p in m.phases], own, list(m.events)))
            continue
        donor = rng.choice(top)
        values, ops = _explore(donor, settings, rng, width)
        phases = [list(p) for p in donor.phases] + [[at, dict(values)]]
        event = {"generation": generation, "at": at, "from": donor.index,
                 "old": dict(donor.values), "new": values, "ops": ops}
        out.append(Member(m.index, donor.region, donor.seed, values, dict(donor.fixed), phases,
                          results[donor.index]["checkpoint"], list(donor.events) + [event]))
    return out


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _explore(donor: Member, settings: PopulationSettings, rng: random.Random,
             width: float) -> tuple[dict[str, float], dict[str, str]]:
    ranges = REGIONS[donor.region].ranges(width)
    values, ops = {}, {}
    for k, v in donor.values.items():
        low, high = ranges[k]
        if rng.random() < settings.resample:
            values[k] = _log_uniform(rng, low, high)
            ops[k] = "resample"
        else:
            factor = rng.choice(settings.factors)
            values[k] = min(max(v * factor, low), high)
            ops[k] = f"× {factor:g}"
    return values, ops


# --- one member's run of one generation (a Ray Tune trainable) ---------------------------------

def run_member(config: dict[str, Any], base: dict[str, Any], metric: str) -> None:
    """The Ray Tune trainable of one member's generation (``config["job"]``): see
    :func:`train_member`; the result is also reported to Ray Tune with the state as a
    checkpoint."""
    from ray import tune

    job = config["job"]
    result = train_member(job, base, metric,
                          lambda m: tune.report({**m, "member": job["member"]}))
    tune.report({"epoch": result["epochs"][1], "status": result["status"],
                 "member": job["member"]},
                checkpoint=tune.Checkpoint.from_directory(job["out"]))


def train_member(config: dict[str, Any], base: dict[str, Any], metric: str,
                 report: Any = None) -> dict[str, Any]:
    """Train one member from its start state (or from scratch) to epoch ``config["until"]``;
    its whole state goes to ``OUT/state.pt``, its result to ``OUT/result.json`` (written last,
    atomically: a member run with a result is finished)."""
    from metasam.training import TrainConfig
    from metasam.training.checkpoint import load_checkpoint, save_checkpoint
    from metasam.training.trainer import Trial, resolve_device, run_epochs
    from metasam.tuning.placement import Placement

    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_dict({**base, "seed": config["seed"], "spec": config["spec"]})
    trial = Trial(cfg)
    if config["start"] is not None:
        trial.load_state_dict(load_checkpoint(Path(config["start"])), config["start"],
                              new_spec=True)
    first = trial.epoch
    where = Placement.here(resolve_device(cfg.device)).to_dict()
    grad_evals_before = trial.grad_evals
    status, reason = run_epochs(trial, config["until"], report)
    save_checkpoint(out / "state.pt", trial.state_dict())
    last = trial.history[-1] if trial.history else {}
    result = {"member": config["member"], "status": Status.DIVERGED.value
              if status == "diverged" else Status.COMPLETED.value, "reason": reason,
              "score": last.get(metric), "epochs": [first, trial.epoch],
              "grad_evals": trial.grad_evals - grad_evals_before,
              "history": trial.history[len(trial.history) - (trial.epoch - first):],
              "checkpoint": str(out / "state.pt"), "placement": where}
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(out / "result.json")
    return result


# --- the study -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PopulationResult:
    """What :func:`run_population` did: the generations, how many member runs it made (a
    resumed study makes only the missing ones) and how many exploit events there were."""

    generations: int
    runs: int
    exploits: int
    members: list[int]


def pbt_dir(config: StudyConfig) -> Path:
    return (config.folder / ".metasam-pbt" / config.name).resolve()


def _attr(attrs: dict[str, Any], key: str) -> Any:
    """A JSON study attribute from ``attrs`` (``study.user_attrs``, read once by the caller:
    each read fetches them all from the storage)."""
    text = attrs.get(key)
    return json.loads(text) if isinstance(text, str) else None


def run_population(config: StudyConfig, *, address: str | None = None, verbose: int = 1
                   ) -> PopulationResult:
    """Run (or resume) a PBT study to its end; its members become trials of the study."""
    from metasam.tuning.storage import open_storage, open_study

    settings = config.population
    assert settings is not None
    config.check_data()
    storage = open_storage(config.storage, config.heartbeat_interval, config.heartbeat_grace)
    study = open_study(storage, config.name, config.mode)
    config.check_definition(study, record=True)
    gens = generations(settings, config.train.epochs)
    search = config.space.search or {}
    width, guard = search.get("region", 4.0), search.get("guard")
    say = (lambda text: print(f"study {config.name}: {text}", file=sys.stderr, flush=True)
           ) if verbose else (lambda text: None)
    if study.user_attrs.get(record.PBT_DONE):
        say(f"population of {settings.population} finished ({len(gens)} generations)")
        return PopulationResult(len(gens), 0, 0, list(range(settings.population)))
    base = config.train.to_dict()
    base.update(data_dir=config.data_dir(), num_threads=max(1, int(config.cpu)),
                device="auto" if config.gpu > 0 else "cpu", checkpoint_dir=None, test="none")
    members: list[Member] = []
    runs = exploits = 0
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        ray = _LazyRay(stack, address, verbose)
        for g, (first, until) in enumerate(gens):
            members, ran, moved = _generation(study, config, settings, g, first, until,
                                              members, width, guard, base, say, ray)
            runs, exploits = runs + ran, exploits + moved
            attrs = study.user_attrs
            scores = [(_attr(attrs, record.PBT_RESULT.format(g, m.index)) or {}).get("score")
                      for m in members]
            finite = [s for s in scores if s is not None and math.isfinite(s)]
            best = (max if config.mode == "max" else min)(finite) if finite else math.nan
            say(f"generation {g + 1}/{len(gens)} (epochs {first + 1}-{until}): best "
                f"{config.metric} {best:.4f}; {_elapsed(started)}")
    _record_members(study, config, members, len(gens), guard)
    study.set_user_attr(record.PBT_DONE, True)
    return PopulationResult(len(gens), runs, exploits, [m.index for m in members])


def _generation(study: optuna.Study, config: StudyConfig, settings: PopulationSettings, g: int,
                first: int, until: int, members: list[Member], width: float,
                guard: float | None, base: dict[str, Any], say: Any, ray: _LazyRay
                ) -> tuple[list[Member], int, int]:
    """Plan generation ``g`` (or read its stored plan), run its members that have no result,
    record their results; returns (members, runs made, exploits)."""
    attrs = study.user_attrs
    plan = _attr(attrs, record.PBT_PLAN.format(g))
    runs = 0
    if plan is None:
        if g == 0:
            members = initial_members(settings, config.seed, width)
        else:
            results = {m.index: _attr(attrs, record.PBT_RESULT.format(g - 1, m.index))
                       for m in members}
            members = exploit_and_explore(members, results, settings, g, first /
                                          config.train.epochs, config.seed, width,
                                          config.mode)
        study.set_user_attr(record.PBT_PLAN.format(g), json.dumps([m.to_dict() for m in members]))
    else:
        members = [Member.from_dict(m) for m in plan]
    moved = [m for m in members if m.events and m.events[-1]["generation"] == g]
    for m in moved:
        e = m.events[-1]
        say(f"generation {g + 1}: member {m.index} copies member {e['from']} "
            + ", ".join(f"{k} {e['old'][k]:.3g}→{e['new'][k]:.3g} ({e['ops'][k]})"
                        for k in e["new"]))
    pending = []
    for m in members:
        if _attr(attrs, record.PBT_RESULT.format(g, m.index)) is not None:
            continue
        out = pbt_dir(config) / f"g{g:03d}" / f"m{m.index:02d}"
        done = out / "result.json"
        if done.is_file():   # finished before this process was stopped: recorded now
            study.set_user_attr(record.PBT_RESULT.format(g, m.index), done.read_text())
            continue
        pending.append({"member": m.index, "seed": m.seed, "spec": m.spec(guard).to_dict(),
                        "start": m.start, "until": until, "out": str(out)})
    if pending:
        ray.start()
        _run_generation(config, g, pending, base)
        runs += len(pending)
        for job in pending:
            done = Path(job["out"]) / "result.json"
            if not done.is_file():
                raise RuntimeError(f"member {job['member']} of generation {g + 1} left no "
                                   "result (see the Ray logs); run `metasam tune` again to "
                                   "resume")
            study.set_user_attr(record.PBT_RESULT.format(g, job["member"]), done.read_text())
    return members, runs, len(moved)


class _LazyRay:
    """Ray for the population's runs, started with the first run that is needed (a resumed
    study with nothing left to run never starts it), once."""

    def __init__(self, stack: contextlib.ExitStack, address: str | None, verbose: int) -> None:
        self.stack, self.address, self.verbose = stack, address, verbose
        self.started = False

    def start(self) -> None:
        from metasam.tuning.runner import ray_session

        if not self.started:
            self.stack.enter_context(ray_session(self.address, self.verbose))
            self.started = True


def _elapsed(started: float) -> str:
    seconds = time.monotonic() - started
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _run_generation(config: StudyConfig, generation: int, jobs: list[dict[str, Any]],
                    base: dict[str, Any]) -> None:
    """One Ray Tune run of the generation's pending member runs (Ray already started)."""
    import os
    import uuid

    from metasam.tuning import compat

    compat.check()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray import tune

    from metasam.tuning.progress import quiet_ray_hints
    from metasam.tuning.tracking import callbacks

    trainable = tune.with_resources(
        tune.with_parameters(run_member, base=base, metric=config.metric),
        {"cpu": config.cpu, "gpu": config.gpu})
    quiet_ray_hints()
    tuner = tune.Tuner(
        trainable, param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=config.concurrency,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{config.name}-pbt-g{generation}-{uuid.uuid4().hex[:8]}",
            storage_path=str(config.ray_dir), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=callbacks(config.tracking, config.folder / "tensorboard", config.name)))
    tuner.fit()


def _record_members(study: optuna.Study, config: StudyConfig, members: list[Member],
                    count: int, guard: float | None) -> None:
    """Each member as a COMPLETE trial (once: a resumed study adds only those missing), its
    value the metric at the last epoch, its curve over the lineage as intermediate values."""
    present = {t.user_attrs.get(record.PBT_MEMBER) for t in study.get_trials(deepcopy=False)}
    stored = study.user_attrs
    for m in members:
        if m.index in present:
            continue
        lineage = _lineage(stored, m, count)
        last = _attr(stored, record.PBT_RESULT.format(count - 1, m.index))
        history = [h for r in lineage for h in r["history"]]
        spec = m.spec(guard)
        label = Label(Role.POPULATION, f"member {m.index} ({describe_spec(spec.to_dict())})",
                      spec.name)
        diverged = last["status"] != Status.COMPLETED.value
        attrs = {record.LABEL: json.dumps(label.to_dict()), record.SPEC: json.dumps(
                 spec.to_dict()), record.TRAIN: json.dumps({}), record.MEMBER: m.region,
                 record.PBT_MEMBER: m.index, record.PBT_EVENTS: json.dumps(m.events),
                 record.STATUS: last["status"], record.EPOCHS: config.train.epochs,
                 record.FULL_BUDGET: not diverged, record.HISTORY: json.dumps(history),
                 record.PLACEMENT: json.dumps(last["placement"]),
                 "seed": m.seed, "grad_evals": _own_grad_evals(stored, m.index, count),
                 "passes_per_step": spec.passes}
        if last.get("reason"):
            attrs[record.REASON] = last["reason"]
        metric_values = {int(h["epoch"]): float(h[config.metric]) for h in history
                         if config.metric in h and math.isfinite(h[config.metric])}
        value = last.get("score")
        ok = not diverged and value is not None and math.isfinite(value)
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            value=value if ok else None, user_attrs=attrs,
            intermediate_values=metric_values))


def _lineage(stored: dict[str, Any], member: Member, count: int) -> list[dict[str, Any]]:
    """The results a member's state went through, generation by generation (a copied state's
    earlier generations are its donor's)."""
    out = []
    index = member.index
    for g in reversed(range(count)):
        out.append(_attr(stored, record.PBT_RESULT.format(g, index)))
        plan = [Member.from_dict(m) for m in _attr(stored, record.PBT_PLAN.format(g))]
        mine = plan[index]
        if mine.events and mine.events[-1]["generation"] == g:
            index = mine.events[-1]["from"]
    return list(reversed(out))


def _own_grad_evals(stored: dict[str, Any], index: int, count: int) -> int:
    """The passes this member's slot made over all generations (what the study paid)."""
    return sum(int(_attr(stored, record.PBT_RESULT.format(g, index))["grad_evals"])
               for g in range(count))
