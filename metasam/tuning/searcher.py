"""The Ray Tune searcher of a study: Optuna's OptunaSearch, held to the study's budget.

:class:`StudySearcher` wraps ``ray.tune.search.optuna.OptunaSearch`` (define-by-run on the study's
RDB or journal storage) and adds what a resumable, shared study needs:

- it suggests only while the study has room (trials that count, across *all* workers, below the
  target; enqueued points and retries first) and says FINISHED when nothing is left to do;
- a worker that asked in a race and overshot the target gives its trial back (``surplus``);
- it sends heartbeats for its running trials from a thread, and re-runs the trials of workers
  that went silent;
- it records each trial's budget (epochs reached, full or ASHA-stopped), status and reason, and
  tells Optuna FAIL (not COMPLETE) for diverged or crashed trials;
- a trial whose Ray worker died (its node lost, its process killed) is re-run as an
  interrupted trial, up to twice per configuration.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from metasam.tuning import compat, record
from metasam.tuning.compat import search_study, search_trials
from metasam.tuning.record import TrialRecord
from metasam.tuning.space import SearchSpace
from metasam.tuning.storage import census, requeue, sweep_stale
from metasam.tuning.trials import Status, TrialOutcome

logger = logging.getLogger(__name__)

MAX_RETRIES = 2  # re-runs of a configuration whose Ray worker died


class StudySearcher(Searcher):
    def __init__(self, space: SearchSpace, study_name: str,
                 storage: optuna.storages.BaseStorage, metric: str, mode: str, target: int,
                 epochs: int, sampler: optuna.samplers.BaseSampler, heartbeat_interval: int,
                 worker: str | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.inner = OptunaSearch(space=space.sample, metric=metric, mode=mode, sampler=sampler,
                                  study_name=study_name, storage=storage)
        self.study: optuna.Study = search_study(self.inner)
        self.storage = storage
        self.target = target
        self.epochs = epochs
        self.worker = worker or uuid.uuid4().hex[:12]
        self.heartbeat_interval = heartbeat_interval
        self._active: dict[str, int] = {}  # Ray trial id -> Optuna trial id
        self._placed: set[str] = set()      # Ray trials whose placement is recorded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._next_check = 0.0
        self._idle_until = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles the search algorithm for its own experiment restore, which metasam
        # does not use (the Optuna storage is the record); locks, threads and database engines
        # do not pickle, so only the identity goes into that file.
        return {"worker": self.worker, "target": self.target}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- heartbeats -------------------------------------------------------------------------

    def save(self, checkpoint_path: str) -> None:
        """Nothing to write: the study's storage is the searcher's state (Ray Tune's
        experiment checkpoint of it would only go stale)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to read: re-running ``metasam tune`` resumes from the storage."""

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._lock:
                ids = list(self._active.values())
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as err:  # a transient database error must not kill the loop
                    logger.warning("heartbeat for trial %s failed: %s", trial_id, err)

    def _ensure_heartbeat(self) -> None:
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat_loop, name="metasam-heartbeat",
                                          daemon=True)
            self._beat.start()

    def close(self) -> int:
        """Stop the heartbeats and give back the trials this worker did not finish (Ctrl-C,
        a Ray failure): they are re-enqueued for whoever runs the study next. Returns how many."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with self._lock:
            unfinished = list(self._active.values())
            self._active.clear()
        return sum(requeue(self.study, trial_id) for trial_id in unfinished)

    def number_of(self, trial_id: str) -> int | None:
        """The Optuna trial number of a Ray Tune trial this searcher started (``None`` once
        it is no longer known here)."""
        ot_trial = search_trials(self.inner).get(trial_id)
        return None if ot_trial is None else ot_trial.number

    # --- Searcher API -----------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # metric and mode were given at construction

    def suggest(self, trial_id: str) -> dict | str | None:
        now = time.monotonic()
        if now < self._idle_until:
            return None  # nothing to do a moment ago: do not poll the database on every tick
        if now >= self._next_check:
            self._next_check = now + self.heartbeat_interval
            sweep_stale(self.study)
        state = census(self.study)
        if not state.waiting and len(state.counted) >= self.target:
            if state.running:
                self._idle_until = now + min(2.0, self.heartbeat_interval)
                return None  # other trials still run (here or elsewhere); wait for them
            return Searcher.FINISHED
        try:
            config = self.inner.suggest(trial_id)
        except Exception as err:  # an invalid sampled combination: record it, try again
            ot_trial = search_trials(self.inner).pop(trial_id, None)
            if ot_trial is not None:
                ot_trial.set_user_attr(record.STATUS, Status.FAILED.value)
                ot_trial.set_user_attr(record.REASON, f"sampling failed: {err}")
                self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            logger.warning("could not sample a trial: %s", err)
            return None
        ot_trial = search_trials(self.inner)[trial_id]
        # heartbeat first, then the worker attribute: see storage.sweep_stale
        self.storage.record_heartbeat(compat.trial_id(ot_trial))
        ot_trial.set_user_attr(record.WORKER, self.worker)
        if self._is_surplus(ot_trial.number):
            ot_trial.set_user_attr(record.SURPLUS, True)
            self.study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            del search_trials(self.inner)[trial_id]
            return None
        for key, value in record.start_attrs(config, record.SPEC in ot_trial.user_attrs).items():
            ot_trial.set_user_attr(key, value)
        with self._lock:
            self._active[trial_id] = compat.trial_id(ot_trial)
        self._ensure_heartbeat()
        return config

    def _is_surplus(self, number: int) -> bool:
        """Did this trial push the study past its target (a race between workers), or repeat a
        point another counted trial already has?"""
        counted = sorted(census(self.study).counted, key=lambda t: t.number)
        mine = next((t for t in counted if t.number == number), None)
        if mine is None:
            return False
        position = counted.index(mine)
        if position >= self.target:
            return True
        point = TrialRecord.of(mine).point
        return point is not None and any(TrialRecord.of(t).point == point
                                         for t in counted[:position])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = search_trials(self.inner).get(trial_id)
        if ot_trial is not None and record.PLACEMENT in result and trial_id not in self._placed:
            # where it runs, from its first report on (a slow or failing node shows early)
            ot_trial.set_user_attr(record.PLACEMENT, result[record.PLACEMENT])
            self._placed.add(trial_id)
        if (trial_id in search_trials(self.inner) and self.metric in result
                and result.get("status") in (Status.RUNNING.value, Status.COMPLETED.value)):
            self.inner.on_trial_result(trial_id, result)  # intermediate values, per epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        ot_trial = search_trials(self.inner).get(trial_id)
        with self._lock:
            self._active.pop(trial_id, None)
        if ot_trial is None:
            return
        if error and int(ot_trial.user_attrs.get(record.RETRIES, 0)) < MAX_RETRIES:
            # The trainable catches every error of the training itself (a failed trial with
            # its reason); an error here means its process died under it — its node was lost
            # (also a trial Ray placed on the node before it noticed), it was killed, it ran
            # out of memory. Like a silent worker's trial it is re-run, up to MAX_RETRIES times
            # per configuration; one that dies again then is recorded as failed.
            ot_trial.set_user_attr(record.REASON, "its Ray worker died (node lost or process "
                                   "killed); re-run")
            if requeue(self.study, compat.trial_id(ot_trial)):
                del search_trials(self.inner)[trial_id]
                self._placed.discard(trial_id)
                return
        result = result or {}
        outcome = TrialOutcome.of_result(result, self.epochs, error)
        for key, value in record.outcome_attrs(outcome).items():
            ot_trial.set_user_attr(key, value)
        failed = error or outcome.status.failed
        self.inner.on_trial_complete(trial_id, None if failed else result, error=failed)
