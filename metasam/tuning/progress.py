"""What ``metasam tune`` prints while a study runs: where the study stands (from its storage,
across every worker) and what runs here, instead of Ray Tune's experiment table."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import optuna
from ray.tune import ProgressReporter

from metasam._progress import duration, eta, is_terminal, rewrite
from metasam.tuning.naming import describe_spec
from metasam.tuning.storage import census
from metasam.tuning.trials import Label


class StudyReporter(ProgressReporter):
    """Prints, at most every ``interval`` seconds and at the end::

        study digits-noisy: 7/30 finished (6 complete, 3 at full budget, 1 failed), 2 running,
            0 waiting, 0 interrupted and re-run; 4m10s elapsed, about 13m left
          running here: sam rho=0.05 (epoch 4/10, val_acc 0.8123); frob_sam ... (starting)

    (the time left at the rate of the trials finished since this command started). On a
    terminal the same as one line rewritten in place."""

    def __init__(self, study: optuna.Study, name: str, target: int, metric: str, epochs: int,
                 interval: float = 10.0, out: TextIO | None = None,
                 note: Callable[[], str] | None = None) -> None:
        self.study = study
        self.note = note   # e.g. the whole study's spending against its plan
        self.name = name
        self.target = target
        self.metric = metric
        self.epochs = epochs
        self.interval = interval
        self.out = out  # None: sys.stderr at the time of printing
        self._last = 0.0
        self._last_text = ""
        self._start = time.monotonic()
        self._first: int | None = None   # finished before this command started
        self._width = 0

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its run config (this reporter included) for an experiment restore
        # metasam does not use; the study's storage and the stream stay out of that file.
        return {k: v for k, v in self.__dict__.items() if k not in ("study", "out", "note")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, study=None, out=None, note=None)

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        return done or time.monotonic() - self._last >= self.interval

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        self._last = time.monotonic()
        if self.study is None:  # an unpickled copy: nothing to report from
            return
        state = census(self.study)
        if self._first is None:
            self._first = state.finished
        elapsed = time.monotonic() - self._start
        left = eta(elapsed, state.finished, self.target, self._first)
        timing = f"{duration(elapsed)} elapsed" + (
            f", about {duration(left)} left" if left is not None and not done else "")
        lines = [f"study {self.name}: {state.describe(self.target)}; {timing}"]
        if self.note is not None:
            lines[0] += f"; {self.note()}"
        running = [t for t in trials if t.status == "RUNNING"]
        if running and not done:
            lines.append("  running here: " + "; ".join(self._describe(t) for t in running))
        stream = self.out or sys.stderr
        if is_terminal(stream):   # one line, rewritten in place
            self._width = rewrite(stream, " |".join(lines), self._width, end=done)
            return
        text = "\n".join(lines)
        if text.split("; ")[0] != self._last_text.split("; ")[0] or done or len(lines) > 1:
            print(text, file=stream, flush=True)   # an unchanged state is not repeated
            self._last_text = text

    def _describe(self, trial: Any) -> str:
        config = trial.config or {}
        raw = config.get("label")
        if raw is None:
            label = str(trial.trial_id)
        elif Label.from_dict(raw).is_point or not isinstance(config.get("spec"), dict):
            label = Label.from_dict(raw).method or str(trial.trial_id)
        else:
            label = describe_spec(config["spec"])
        result = trial.last_result or {}
        epoch = result.get("epoch")
        if not epoch:
            return f"{label} (starting)"
        value = result.get(self.metric)
        shown = f", {self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
        return f"{label} (epoch {epoch}/{self.epochs}{shown})"


class _DropRayHints(logging.Filter):
    """Lines of Ray Tune that mislead a metasam user: "Resume experiment with: Tuner.restore"
    on Ctrl-C (metasam resumes from its storage when the same command runs again, and says so
    itself), and "Failed to fetch metrics" for trials without per-trial result files (metasam
    turns those off: the storage is the record)."""

    DROPPED = ("Tuner.restore", "Failed to fetch metrics")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.DROPPED)


def quiet_ray_hints() -> None:
    """Install the filter once (idempotent)."""
    for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropRayHints) for f in logger.filters):
            logger.addFilter(_DropRayHints())
