"""The study's Optuna storage: the single source of truth about which trials exist.

Bookkeeping lives in each trial's user attributes (:mod:`metasam.tuning.record` owns their
names and reads them back as a :class:`~metasam.tuning.record.TrialRecord`). A trial *counts*
towards the study's target when it is COMPLETE, FAIL (a real failure), RUNNING or WAITING;
interrupted and surplus trials do not.
"""

from __future__ import annotations

import datetime
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from metasam.errors import ConfigError
from metasam.tuning import compat, record
from metasam.tuning.compat import BaseHeartbeat, heartbeat_backend, stale_trial_ids, study_storage
from metasam.tuning.record import TrialRecord
from metasam.tuning.trials import Point

optuna.logging.set_verbosity(optuna.logging.WARNING)
# metasam drives Optuna through ask/tell and sends the heartbeats itself (see searcher.py).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                        message=r"Argument ``(heartbeat_interval|grace_period|group)``")


JOURNAL = "journal:"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's file journal (for shared filesystems without a database server), with the
    heartbeats that Optuna implements only for RDB storages: each running trial's last beat is a
    system attribute (wall-clock seconds), and a RUNNING trial whose beat is older than the grace
    period is stale. The workers' clocks must agree to well within the grace period."""

    def __init__(self, path: str, heartbeat_interval: int | None = None,
                 grace_period: int | None = None) -> None:
        super().__init__(JournalFileBackend(path))
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, record.HEARTBEAT, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # it finished between the caller's look and this beat

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.heartbeat_interval is None:
            return []
        grace = self.grace_period or 2 * self.heartbeat_interval
        now = time.time()
        return [compat.trial_id(t) for t in self.get_all_trials(study_id, deepcopy=False,
                                                         states=(TrialState.RUNNING,))
                if record.HEARTBEAT in t.system_attrs
                and now - float(t.system_attrs[record.HEARTBEAT]) > grace]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    # metasam re-runs stale trials itself (sweep_stale): no Optuna callback. (Optuna ≥ 4.9 asks
    # for the first name, older versions for the second.)
    def get_heartbeat_stale_trial_callback(self) -> None:
        return None

    def get_failed_trial_callback(self) -> None:
        return None


def storage_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (``None`` for a database server)."""
    if url.startswith(JOURNAL):
        return Path(url[len(JOURNAL):])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


class StorageError(ConfigError):
    """The study's storage cannot be opened or used; the message is one line naming it."""


class StudyNotFoundError(StorageError):
    """The storage has no study of that name (``metasam tune`` has not run it yet)."""


def describe_url(url: str) -> str:
    """The storage's file, or its URL without a password."""
    path = storage_file(url)
    if path is not None:
        return str(path)
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def storage_failure(url: str, err: BaseException) -> StorageError:
    """A one-line :class:`StorageError` for a database error on ``url``."""
    orig = getattr(err, "orig", None) or err
    reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return StorageError(describe_url(url), f"the study storage failed ({reason})",
                        "an SQLite file in a writable folder, a reachable PostgreSQL server "
                        "(postgresql://USER@HOST/DB), or journal:FILE")


# A database created by two workers at once: the loser's schema creation collides with the
# winner's (a duplicate table, or Alembic's version stamp written twice: integrity and
# programming errors) and succeeds when tried again. Anything else (a corrupted file, a
# read-only folder, a refused or silent server) is reported at once.
_RACES = ("already exists", "database is locked", "duplicate key", "UniqueViolation",
          "UNIQUE constraint failed")


_OPEN: dict[tuple[str, int | None, int | None], BaseStorage] = {}   # one per URL per process
_OPEN_MAX = 8


def open_storage(url: str, heartbeat_interval: int | None = None,
                 heartbeat_grace: int | None = None) -> BaseStorage:
    """The study's Optuna storage with heartbeats for stale-trial detection: an RDB storage
    (``sqlite:///FILE``, ``postgresql://...``) or a file journal (``journal:PATH``).

    An RDB storage is built once per URL (and heartbeat settings) in a process and reused: one
    engine and connection pool per command, not one per read (the last ``_OPEN_MAX`` kept; an
    SQLite file that was removed since is opened anew).

    PostgreSQL connections time out after 10 s (``?connect_timeout=S`` in the URL changes it)
    and use TCP keepalives, so a server that stops answering fails the command instead of
    hanging it. Failures raise a one-line :class:`StorageError`."""
    if url.startswith(JOURNAL):
        return _open_storage(url, heartbeat_interval, heartbeat_grace)
    key = (url, heartbeat_interval, heartbeat_grace)
    path = storage_file(url)
    cached = _OPEN.get(key)
    if cached is not None and (path is None or path.is_file()):
        return cached
    storage = _open_storage(url, heartbeat_interval, heartbeat_grace)
    _OPEN.pop(key, None)
    _OPEN[key] = storage
    while len(_OPEN) > _OPEN_MAX:
        _OPEN.pop(next(iter(_OPEN)))
    return storage


def _open_storage(url: str, heartbeat_interval: int | None,
                  heartbeat_grace: int | None) -> BaseStorage:
    if url.startswith(JOURNAL):
        try:
            return HeartbeatJournalStorage(url[len(JOURNAL):], heartbeat_interval,
                                           heartbeat_grace)
        except OSError as err:
            raise StorageError(describe_url(url), "the study journal cannot be opened "
                               f"({err.strerror})", "journal:FILE in a writable folder"
                               ) from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes share the file: wait for locks instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
        if url.startswith("postgresql"):
            connect: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30,
                                       "keepalives_interval": 10, "keepalives_count": 3}
            if "connect_timeout=" not in url:
                connect["connect_timeout"] = 10
            engine_kwargs["connect_args"] = connect
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=heartbeat_grace)
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            race = isinstance(err, (sqlalchemy.exc.IntegrityError,
                                    sqlalchemy.exc.ProgrammingError)) or \
                any(r in str(err) for r in _RACES)
            if attempt == 9 or not race:
                raise storage_failure(url, err) from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(storage: optuna.storages.BaseStorage, name: str, mode: str,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                               direction="maximize" if mode == "max" else "minimize",
                               sampler=sampler)


def load_study(storage_url: str, name: str) -> optuna.Study:
    """An existing study; opening a storage file that is not there would create it empty."""
    path = storage_file(storage_url)
    if path is not None and not path.is_file():
        raise StudyNotFoundError("", f"no study named {name!r}: {path} does not exist (run "
                                 "`metasam tune` first)")
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage_url))
    except KeyError:
        raise StudyNotFoundError("", f"no study named {name!r} in {storage_url} (run "
                                 "`metasam tune` first)") from None


def sweep_stale(study: optuna.Study) -> int:
    """Re-run the trials whose worker stopped sending heartbeats (killed, crashed, cut off).

    Each stale trial is marked ``interrupted``, failed, and — by the one process whose state
    change wins — enqueued again with the same configuration. Returns how many this call
    re-enqueued.
    """
    backend = heartbeat_backend(study)
    if backend is None or backend.get_heartbeat_interval() is None:
        return 0
    stale = set(stale_trial_ids(backend, study))
    # A worker killed between Optuna's ask and its first heartbeat leaves a RUNNING trial that
    # Optuna's check never sees (no heartbeat row): metasam records the heartbeat before the
    # trial's "worker" attribute, so a trial without one, older than the grace period, is such
    # an orphan.
    grace = backend.grace_period or 2 * backend.get_heartbeat_interval()
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start
        if TrialRecord.of(trial).worker is None and started is not None and \
                (now - started).total_seconds() > grace:
            stale.add(compat.trial_id(trial))
    return sum(requeue(study, trial_id) for trial_id in sorted(stale))


def requeue(study: optuna.Study, trial_id: int) -> bool:
    """Mark a RUNNING trial ``interrupted``, fail it, and enqueue its configuration again.

    The state change is the lock: only the caller whose change wins enqueues the retry.
    """
    storage = study_storage(study)
    try:
        storage.set_trial_user_attr(trial_id, record.INTERRUPTED, True)
        won = storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # finished, or another worker handled it
    if not won:
        return False
    trial = storage.get_trial(trial_id)
    keys = (record.POINT, record.LABEL, record.SPEC, record.TRAIN)
    attrs = {k: trial.user_attrs[k] for k in keys
             if k in trial.user_attrs and record.POINT in trial.user_attrs}
    attrs[record.RETRY_OF] = trial.number
    attrs[record.RETRIES] = int(trial.user_attrs.get(record.RETRIES, 0)) + 1
    study.enqueue_trial(trial.params, user_attrs=attrs)
    return True


def counts(trial: FrozenTrial) -> bool:
    """Does the trial count towards the study's target (see :attr:`TrialRecord.counts`)?"""
    return TrialRecord.of(trial).counts


@dataclass
class Census:
    """Where a study stands."""

    counted: list[FrozenTrial] = field(default_factory=list)
    complete: int = 0
    full_budget: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    interrupted: int = 0
    surplus: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.failed

    def describe(self, target: int) -> str:
        return (f"{self.finished}/{target} finished ({self.complete} complete, "
                f"{self.full_budget} at full budget, {self.failed} failed), {self.running} "
                f"running, {self.waiting} waiting, {self.interrupted} interrupted and re-run")


def census(study: optuna.Study) -> Census:
    out = Census()
    for trial in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(trial)
        if rec.interrupted:
            out.interrupted += 1
        elif rec.surplus:
            out.surplus += 1
        if not rec.counts:
            continue
        out.counted.append(trial)
        if trial.state == TrialState.COMPLETE:
            out.complete += 1
            out.full_budget += rec.full_budget
        elif trial.state == TrialState.FAIL:
            out.failed += 1
        elif trial.state == TrialState.RUNNING:
            out.running += 1
        else:
            out.waiting += 1
    return out


def enqueue_points(study: optuna.Study, points: list[Point], target: int) -> int:
    """Enqueue the points not in the study yet (by label), as long as they fit the target.
    Returns how many were enqueued."""
    state = census(study)
    present = {TrialRecord.of(t).point for t in state.counted}
    room = target - len(state.counted)
    added = 0
    for point in points:
        if room <= 0:
            break
        if point.label.key in present:
            continue
        study.enqueue_trial({}, user_attrs=record.point_attrs(point))
        present.add(point.label.key)
        room -= 1
        added += 1
    return added


def trial_spec(trial: FrozenTrial) -> dict[str, Any] | None:
    return TrialRecord.of(trial).spec


def trial_train(trial: FrozenTrial) -> dict[str, Any]:
    return TrialRecord.of(trial).train


def best_trials(study: optuna.Study, mode: str, k: int = 1) -> list[FrozenTrial]:
    """The k best COMPLETE trials at full budget (ASHA-stopped trials are excluded: their
    values were reached with fewer epochs)."""
    candidates = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if TrialRecord.of(t).full_budget and t.value is not None and counts(t)]
    candidates.sort(key=lambda t: (-t.value if mode == "max" else t.value, t.number))
    return candidates[:k]
