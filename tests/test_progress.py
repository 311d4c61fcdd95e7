"""Progress lines: finished of total, elapsed, the time left from the rate so far; one line
rewritten on a terminal, plain and rate-limited lines when piped; a study's status line."""

from __future__ import annotations

import io

import pytest

from metasam import _progress
from metasam._progress import Progress, duration, eta


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_and_the_time_left_at_the_rate_so_far():
    assert [duration(s) for s in (4.2, 185, 3725)] == ["4s", "3m05s", "1h02m"]
    assert eta(60.0, 3, 10) == pytest.approx(140.0)         # 3 in 60 s: 7 more in 140 s
    assert eta(60.0, 5, 10, start=3) == pytest.approx(150.0)  # 2 of them here
    assert eta(60.0, 3, 10, start=3) is None and eta(60.0, 3, None) is None


def test_piped_lines_are_plain_and_at_most_one_per_interval(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 12.0, 13.0])
    monkeypatch.setattr(_progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    p = Progress("race", total=10, unit="runs", stream=out, every=10.0)   # starts at 0 s
    p.update(0)          # 1 s: printed (the first)
    p.update(2)          # 2 s: within 10 s of the last line, skipped
    p.update(4)          # 12 s: printed, 4 done in 12 s → 18 s left
    p.close(10)          # the last, always
    lines = out.getvalue().splitlines()
    assert lines[0] == "race: 0/10 runs (1s elapsed)"
    assert lines[1] == "race: 4/10 runs (12s elapsed, about 18s left)"
    assert lines[2] == "race: 10/10 runs (13s elapsed)" and len(lines) == 3


def test_on_a_terminal_one_line_is_rewritten_in_place():
    out = _Terminal()
    p = Progress("sharpness", unit="products", stream=out, every=0.0)
    p.update(16, "trace", force=True)
    p.update(32, "trace", force=True)
    p.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 4
    assert text.rstrip("\n").rsplit("\r", 1)[1].startswith("sharpness: 32 products")


def test_a_studys_status_line_has_its_time_left_from_this_commands_rate(monkeypatch):
    """2 trials finished before the command started, 2 more in its first 60 s: 4 of 10 left
    at 30 s each is about 3 minutes; on a terminal the line is rewritten in place."""
    import optuna

    from metasam.tuning import progress

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=0.5))
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    reporter = progress.StudyReporter(study, "s", 8, "val_acc", 3, interval=0.0, out=out)
    reporter.report([], done=False)                         # 0 s: 2 finished before
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(value=0.6))
    now[0] = 60.0
    reporter.report([], done=False)                         # 60 s: 2 more here
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("study s: 2/8 finished") and lines[0].endswith("; 0s elapsed")
    assert lines[1].startswith("study s: 4/8 finished")
    assert lines[1].endswith("; 1m00s elapsed, about 2m00s left")
    live = _Terminal()
    terminal = progress.StudyReporter(study, "s", 8, "val_acc", 3, interval=0.0, out=live)
    terminal.report([], done=False)
    terminal.report([], done=True)
    assert live.getvalue().count("\n") == 1 and live.getvalue().count("\r") == 4
