"""``metasam tune``: Ray Tune runs the trials of a study, Optuna explores the family."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import optuna

from metasam.errors import ConfigError
from metasam.tuning.cost_score import cost_score
from metasam.tuning.placement import Placement
from metasam.tuning.record import PLACEMENT, TrialRecord
from metasam.tuning.storage import (
    Census,
    census,
    enqueue_points,
    load_study,
    open_storage,
    open_study,
    trial_spec,
    trial_train,
)
from metasam.tuning.study_config import COST_SCORE, StudyConfig
from metasam.tuning.trials import Label, Point, Role, Status

logger = logging.getLogger(__name__)


def run_trial(config: dict[str, Any], base: dict[str, Any], metric: str, mode: str,
              record_history: bool = False, cost_weight: float = 0.0) -> None:
    """The Ray Tune trainable: one training run with the trial's spec and overrides.

    With ``record_history`` the last report carries the per-epoch metrics as JSON (the
    comparison runs keep them for their plots); with ``cost_weight`` every report carries the
    cost-aware score (:mod:`metasam.tuning.cost_score`), which the study then ranks by."""
    from ray import tune

    from metasam.training import TrainConfig, train
    from metasam.training.trainer import resolve_device

    objective = COST_SCORE if cost_weight > 0 else metric
    worst = -math.inf if mode == "max" else math.inf
    try:
        cfg = TrainConfig.from_dict({**base, **config["train"], "spec": config["spec"]})
    except Exception as err:
        tune.report({objective: worst, "epoch": 0, "status": Status.FAILED.value,
                     "reason": f"invalid trial config: {err}"})
        return
    epochs = cfg.epochs
    passes = cfg.resolved_spec().passes
    history: list[dict[str, Any]] = []
    try:
        where = json.dumps(Placement.here(resolve_device(cfg.device)).to_dict())
    except Exception as err:  # the device is not there: the training reports it below
        where = json.dumps({"error": str(err)})

    def report(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        status = Status.COMPLETED if metrics["epoch"] >= epochs else Status.RUNNING
        extra = {"history": json.dumps(history)} \
            if status is Status.COMPLETED and record_history else {}
        if cost_weight > 0 and metric in metrics:
            extra[COST_SCORE] = cost_score(metrics, metric, mode, cost_weight)
        tune.report({**metrics, "status": status.value, "passes_per_step": passes,
                     PLACEMENT: where, **extra})

    try:
        result = train(cfg, report=report)
    except Exception as err:  # recorded as a failed trial with its reason; the study goes on
        tune.report({objective: worst, "epoch": 0, "status": Status.FAILED.value,
                     "reason": f"{type(err).__name__}: {err}", PLACEMENT: where})
        return
    if Status(result["status"]) is Status.DIVERGED:
        tune.report({objective: worst, "epoch": result["epochs"],
                     "status": Status.DIVERGED.value,
                     "reason": result["reason"], "passes_per_step": passes, PLACEMENT: where,
                     "grad_evals": result.get("grad_evals", 0)})


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    from metasam.tuning.seeded_sampler import make_sampler

    return make_sampler(config.sampler.type, config.seed, config.sampler.startup_trials)


def warm_start_points(other: StudyConfig, top_k: int) -> list[Point]:
    """The top-k full-budget specs of another study, as points to evaluate first."""
    from metasam.tuning.storage import best_trials

    study = load_study(other.storage, other.name)
    points = []
    for trial in best_trials(study, other.mode, top_k):
        spec = trial_spec(trial)
        if spec is not None:
            method = f"{other.name}#{trial.number}"
            points.append(Point(Label(Role.WARM, method, preset=spec.get("name")), spec,
                                trial_train(trial)))
    if not points:
        raise ConfigError("--warm-start", f"study {other.name!r} has no full-budget trial yet",
                          "a study with at least one trial at full budget")
    return points


def _check_resources(config: StudyConfig, joined: bool) -> None:
    """Fail fast when no node of the Ray cluster can ever run a trial (Ray would keep it
    pending forever). On a cluster metasam joined, nodes may still be coming up: it waits up
    to ``$METASAM_RESOURCE_WAIT`` seconds (default 60), saying so, before it fails."""
    import ray

    wait = float(os.environ.get("METASAM_RESOURCE_WAIT", "60")) if joined else 0.0
    deadline: float | None = None  # set after the first look: that look can take a while
    told = False
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        fits = any(r.get("CPU", 0.0) >= config.cpu and r.get("GPU", 0.0) >= config.gpu
                   for r in nodes)
        if fits:
            return
        if deadline is None:
            deadline = time.monotonic() + wait
        if time.monotonic() >= deadline:
            largest = max(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)),
                          default={})
            raise ConfigError(
                "resources", f"a trial asks for cpu={config.cpu:g}, gpu={config.gpu:g} but no "
                f"node of the Ray cluster has that much (largest: cpu="
                f"{largest.get('CPU', 0.0):g}, gpu={largest.get('GPU', 0.0):g}; "
                f"{len(nodes)} node(s))",
                f"cpu ≤ {largest.get('CPU', 0.0):g}, gpu ≤ {largest.get('GPU', 0.0):g} here, "
                "or a cluster with such a node", source=str(config.path))
        if not told:
            print(f"study {config.name}: no node of the cluster has cpu={config.cpu:g}, "
                  f"gpu={config.gpu:g} yet; waiting up to {wait:.0f} s for one to join",
                  file=sys.stderr, flush=True)
            told = True
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _resume_summary(study: optuna.Study, state: Census) -> str:
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    retries = sorted(r.retry_of for r in map(TrialRecord.of, waiting) if r.retry_of is not None)
    text = (f"{state.finished} finished trials kept ({state.complete} complete, "
            f"{state.failed} failed)")
    if retries:
        shown = ", ".join(f"#{n}" for n in retries[:10]) + (" ..." if len(retries) > 10 else "")
        text += f"; re-running {len(retries)} interrupted trial(s) first ({shown})"
    if state.running:
        text += f"; {state.running} still running on other workers"
    return text


def _ray_address(address: str | None) -> str | None:
    """The address ``ray.init`` gets: the given one (or ``$RAY_ADDRESS``); else, as Ray would,
    none — joining the cluster ``ray start`` last recorded on this machine — unless that record
    is stale (its head was killed or stopped without cleaning up): then ``"local"``, a fresh
    instance, instead of a failed join. ``"local"`` wherever this process starts Ray itself."""
    from metasam.tuning import compat

    if address or os.environ.get("RAY_ADDRESS"):
        return address
    record = compat.ray_current_cluster_file()
    if record is None or not record.is_file():
        return "local"   # what Ray does with none recorded: a fresh instance on this machine
    text = record.read_text().strip()
    if listening(text):
        return None
    print(f"metasam: the Ray cluster last started on this machine ({text}) is gone; "
          "starting a local one", file=sys.stderr, flush=True)
    return "local"


def local_authentication() -> None:
    """The Ray instance this process starts on its own machine keeps Ray's default: token
    authentication on (Ray generates ``~/.ray/auth_token`` once and uses it). Only the notice
    Ray prints when ``RAY_AUTH_MODE`` is unset is left out: it names a variable whose one use is
    to turn that protection off, which a single-machine study has no reason to do. A mode the
    user set is theirs, and a cluster this process joins keeps what its operator set up
    (docs/cluster.md: the recipes share one token between the nodes)."""
    if os.environ.get("RAY_AUTH_MODE") is None:
        logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
        if not any(isinstance(f, _AuthNotice) for f in logger.filters):
            logger.addFilter(_AuthNotice())


class _AuthNotice(logging.Filter):
    """Drops Ray's notice that token authentication was enabled by default."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


def listening(address: str) -> bool:
    """Whether something accepts connections at ``host:port`` (a Ray head's GCS port)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def ray_session(address: str | None = None, verbose: int = 1,
                num_cpus: int | None = None) -> Iterator[None]:
    """Ray for several :func:`tune_study` calls in a row (the rounds of a race): started once
    here unless it already runs, shut down at the end if it was started here (``num_cpus``:
    of an instance it starts on this machine; default all)."""
    import ray

    if ray.is_initialized():
        yield
        return
    resolved = _ray_address(address)
    if resolved == "local":
        local_authentication()
    ray.init(address=resolved, include_dashboard=False, log_to_driver=verbose > 1,
             configure_logging=True, logging_level=logging.WARNING,
             **({"num_cpus": num_cpus} if num_cpus is not None and resolved == "local" else {}))
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class TuneResult:
    """What one :func:`tune_study` call did: where the study stands, how many trials this call
    finished, and how many unfinished ones it gave back (Ctrl-C, a Ray failure)."""

    study: str
    census: Census
    ran: int = 0
    released: int = 0
    target: int = 0

    @property
    def done(self) -> bool:
        """Has the study all its finished trials?"""
        return self.census.finished >= self.target


def tune_study(config: StudyConfig, *, address: str | None = None,
               first: list[Point] | None = None,
               verbose: int = 1, check_data: bool = True,
               record_history: bool = False, announce: bool = True,
               note: Callable[[], str] | None = None) -> TuneResult:
    """Run (or resume, or join) a study until it has ``config.trials`` finished trials.

    ``first`` are points to evaluate before the space's own (a warm start, a meta-learned
    portfolio); like every point they are enqueued once per study. ``announce`` says so when it
    resumes a study (off for the rounds of a race, which grow one study)."""
    if check_data:
        config.check_data()
    from metasam.tuning.tracking import check_trackers

    check_trackers(config.tracking, str(config.path))   # before the storage and Ray
    storage = open_storage(config.storage, config.heartbeat_interval, config.heartbeat_grace)
    study = open_study(storage, config.name, config.mode)
    config.check_definition(study, record=True)
    points = list(first or []) + list(config.space.points)
    enqueue_points(study, points, config.trials)
    before = census(study)
    if not before.waiting and len(before.counted) >= config.trials and not before.running:
        return TuneResult(config.name, before, target=config.trials)
    if announce and (before.finished or before.interrupted):  # also with --quiet: a fact
        print(f"study {config.name}: resuming: {_resume_summary(study, before)}",
              file=sys.stderr, flush=True)

    from metasam.tuning import compat

    compat.check()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray's own CSV/JSON/TensorBoard loggers are off: the storage is the record, and
    # metasam's TensorBoard callback (tracking.py) writes runs a person can find (Ray's
    # logger printed "NaN or Inf found in input tensor" for every diverged trial).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from metasam.tuning.progress import StudyReporter, quiet_ray_hints
    from metasam.tuning.schedulers import ReferencePointsASHA
    from metasam.tuning.searcher import StudySearcher
    from metasam.tuning.tracking import callbacks

    worker = uuid.uuid4().hex[:12]
    searcher = StudySearcher(config.space, config.name, storage, config.objective, config.mode,
                             config.trials, config.train.epochs,
                             _sampler(config),
                             config.heartbeat_interval, worker=worker)
    if config.scheduler["type"] == "asha":
        scheduler: Any = ReferencePointsASHA(
            time_attr="epoch", metric=config.objective, mode=config.mode,
            max_t=config.train.epochs,
            grace_period=config.scheduler["grace_period"],
            reduction_factor=config.scheduler["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    base = config.train.to_dict()
    base.update(data_dir=config.data_dir(), num_threads=max(1, int(config.cpu)),
                device="auto" if config.gpu > 0 else "cpu")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base, metric=config.metric, mode=config.mode,
                             cost_weight=config.cost_weight,
                             record_history=record_history),
        {"cpu": config.cpu, "gpu": config.gpu})
    started_ray = not ray.is_initialized()
    with ray_session(address, verbose):
        try:
            # a cluster this process did not start itself may still be adding nodes
            _check_resources(config, joined=bool(address or os.environ.get("RAY_ADDRESS"))
                             or not started_ray)
            reporter = StudyReporter(study, config.name, config.trials, config.metric,
                                     config.train.epochs, note=note)
            quiet_ray_hints()
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.concurrency),
                    scheduler=scheduler, num_samples=-1, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=f"{config.name}-{worker}", storage_path=str(config.ray_dir),
                    verbose=verbose, progress_reporter=reporter if verbose else None,
                    failure_config=tune.FailureConfig(max_failures=0),
                    callbacks=callbacks(config.tracking, config.folder / "tensorboard",
                                        config.name, searcher.number_of)))
            tuner.fit()
        finally:
            released = searcher.close()
    after = census(study)
    return TuneResult(config.name, after, after.finished - before.finished, released,
                      target=config.trials)
