"""Live tracking through the ecosystem's own tools: every trial's and race run's per-epoch
metrics in TensorBoard (on by default), and in MLflow or Weights & Biases through Ray Tune's
own callbacks when the study file asks for them (``tracking:``) and the package is installed.

TensorBoard: one run per trial under ``<study folder>/tensorboard/<study name>/``, named so a
person can find it — ``t007`` for the tuning study's trial 7, ``sam-i03`` for a race,
confirmation or comparison run of ``sam`` on instance 3, ``member02`` for a population's
member — with the member it trains under the Text tab and every finite numeric metric the
trainer reports per epoch (``val_acc``, ``train_loss``, ``lr``, …) as scalars by epoch::

    tensorboard --logdir studies/tensorboard

A re-run trial (after a crash) starts its run again: events from the epochs it repeats are
dropped (``purge_step``). Non-finite values (a diverged run) are left out, not drawn.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from metasam.tuning.study_file import Tracking

logger = logging.getLogger(__name__)

# what Ray Tune adds to every result, and what is not a per-epoch metric
SKIPPED = frozenset({"epoch", "timestamp", "time_this_iter_s", "time_total_s", "pid",
                     "training_iteration", "iterations_since_restore", "time_since_restore",
                     "done", "should_checkpoint", "status", "member", "history"})


def run_name(config: dict[str, Any], number: int | None, member: int | None = None) -> str:
    """A trial's TensorBoard run: ``t007`` (a searched or tuning trial by its number),
    ``sam-i03`` (a point on an instance), ``member02`` (a population's member)."""
    from metasam.tuning.trials import Label

    raw = config.get("label")
    if member is not None:
        return f"member{int(member):02d}"
    if raw is not None:
        label = Label.from_dict(raw)
        if label.is_point and label.instance is not None:
            return f"{_slug(label.method)}-i{label.instance:02d}"
        if label.is_point and number is None:
            return _slug(label.method)
    return f"t{number:03d}" if number is not None else "trial"


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", text).strip("_") or "run"


class TensorBoardCallback(Callback):
    """Writes each trial's per-epoch results as TensorBoard scalars (tensorboardX, which comes
    with Ray Tune), one run per trial under ``logdir``; ``number_of`` maps a Ray trial id to
    its Optuna trial number (for the run's name), ``describe`` a trial's config to the text
    shown beside it."""

    def __init__(self, logdir: Path, number_of: Callable[[str], int | None] | None = None,
                 describe: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.logdir = Path(logdir)
        self.number_of = number_of or (lambda trial_id: None)
        self.describe = describe
        self._writers: dict[str, Any] = {}
        self._failed = False

    def _writer(self, trial: Any, result: dict[str, Any]) -> Any:
        writer = self._writers.get(trial.trial_id)
        if writer is None:
            from tensorboardX import SummaryWriter

            config = dict(trial.config or {})
            name = run_name(config, self.number_of(trial.trial_id), result.get("member"))
            first = int(result.get("epoch") or 1)
            writer = SummaryWriter(str(self.logdir / name), purge_step=first,
                                   flush_secs=10)
            if self.describe is not None and config.get("spec") is not None:
                writer.add_text("member", self.describe(config), first)
            self._writers[trial.trial_id] = writer
        return writer

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        epoch = result.get("epoch")
        if not isinstance(epoch, (int, float)) or epoch < 1:
            return  # a failure report (epoch 0) carries no epoch's metrics
        try:
            self._write(trial, result, int(epoch))
        except Exception as err:  # tracking never stops a study: say so once, go on
            if not self._failed:
                logger.warning("TensorBoard logging under %s failed (%s: %s); the study goes "
                               "on without it", self.logdir, type(err).__name__, err)
            self._failed = True

    def _write(self, trial: Any, result: dict[str, Any], epoch: int) -> None:
        writer = self._writer(trial, result)
        for key, value in result.items():
            if key in SKIPPED or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(key, value, epoch)

    def _close(self, trial: Any) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.close()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._close(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self._close(trial)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles its run config (callbacks included): open writers stay out
        return {**self.__dict__, "_writers": {}, "number_of": None, "describe": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.number_of is None:
            self.number_of = lambda trial_id: None


def callbacks(tracking: Tracking | None, logdir: Path, study_name: str,
              number_of: Callable[[str], int | None] | None = None) -> list[Any]:
    """The Ray Tune callbacks of a study's run: TensorBoard under ``logdir/study_name``, and
    MLflow (experiment ``study_name``) or W&B (project, group ``study_name``) when asked."""
    tracking = tracking or Tracking()
    out: list[Any] = []
    if tracking.tensorboard:
        from metasam.tuning.naming import describe_spec

        out.append(TensorBoardCallback(logdir / study_name, number_of,
                                       lambda c: describe_spec(c["spec"])))
    check_trackers(tracking)   # answered before the study started: not asked again
    if tracking.mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=tracking.mlflow,
                                        experiment_name=study_name))
    if tracking.wandb:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=tracking.wandb, group=study_name))
    return out


PROBE_TIMEOUT = 5.0   # seconds a tracking server has to answer the check, one try
_ANSWERED: set[str] = set()   # the URIs that answered in this process


def check_trackers(tracking: Tracking | None, source: str | None = None) -> None:
    """The trackers a study asks for can be used: their packages are installed and an MLflow
    tracking URI answers, within :data:`PROBE_TIMEOUT` seconds and one try (MLflow's own
    client retries a refused connection for minutes). Every study mode calls it before Ray
    starts, before any run trains and before the storage is written; a URI that answered once
    in this process is not asked again. Else one line (:class:`ConfigError`), exit 2."""
    if tracking is None:
        return
    from metasam.errors import ConfigError

    try:
        tracking.check()
        if tracking.mlflow and tracking.mlflow not in _ANSWERED:
            _probe_mlflow(tracking.mlflow)
            _ANSWERED.add(tracking.mlflow)
    except ConfigError as err:
        if source is None or err.source:
            raise
        raise ConfigError(err.field, err.problem, err.allowed, source=source) from None


def _probe_mlflow(uri: str) -> None:
    import os
    import urllib.error
    import urllib.request

    from metasam.errors import ConfigError

    def refuse(reason: str) -> ConfigError:
        return ConfigError("tracking.mlflow", f"cannot use {uri}: {reason[:300]}",
                           "a tracking URI MLflow can use (sqlite:///mlflow.db, "
                           "http://HOST:5000)")

    if uri.startswith(("http://", "https://")):
        # one request with a deadline: a server that is down fails here in seconds
        url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT):
                pass
        except urllib.error.HTTPError as err:
            if err.code not in (401, 403):   # it answered, but not as an MLflow server does
                raise refuse(f"HTTP {err.code} from {url}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise refuse(f"no answer within {PROBE_TIMEOUT:g} s ({reason})") from None
    from mlflow.tracking import MlflowClient

    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(PROBE_TIMEOUT))}
    saved = {k: os.environ.get(k) for k in bounded}
    os.environ.update(bounded)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise refuse(first) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
