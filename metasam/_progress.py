"""Progress a person can read: what has finished of how much, the time elapsed, and an
estimate of the time left once something has finished.

On a terminal it is one line, rewritten in place; piped to a file it is plain lines, at most
one every ``every`` seconds (and always the last), so a log stays short and no long command is
silent for more than ``every`` seconds while it makes progress.

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("sharpness", total=4, unit="products", stream=out, every=0.0)
    >>> p.update(2, "trace, frob"); p.close()
    >>> out.getvalue().splitlines()[0].startswith("sharpness: 2/4 products")
    True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def eta(elapsed: float, done: float, total: float | None, start: float = 0.0) -> float | None:
    """Seconds left at the rate so far (``done − start`` finished in ``elapsed``); ``None``
    before anything finished here or without a total."""
    if total is None or done - start <= 0:
        return None
    return elapsed / (done - start) * max(0.0, total - done)


class Progress:
    """One task's progress line (see the module's docstring)."""

    def __init__(self, label: str, total: float | None = None, *, unit: str = "",
                 stream: TextIO | None = None, every: float = 10.0) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream
        self.every = every
        self.start = time.monotonic()
        self._first: float | None = None     # what was done before this process started
        self._last = -float("inf")
        self._width = 0

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stderr

    @property
    def live(self) -> bool:
        """One line rewritten in place (a terminal), or plain lines (a pipe, a file)."""
        return is_terminal(self.out)

    def text(self, done: float, note: str = "", now: float | None = None) -> str:
        if self._first is None:
            self._first = done
        elapsed = (time.monotonic() if now is None else now) - self.start
        count = f"{done:g}/{self.total:g}" if self.total is not None else f"{done:g}"
        unit = f" {self.unit}" if self.unit else ""
        left = eta(elapsed, done, self.total, self._first)
        timing = f"{duration(elapsed)} elapsed" + (f", about {duration(left)} left"
                                                   if left is not None and done < (self.total
                                                                                   or 0) else "")
        return f"{self.label}: {count}{unit} ({timing})" + (f"; {note}" if note else "")

    def update(self, done: float, note: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.5 if self.live else self.every):
            return
        self._last = now
        line = self.text(done, note, now)
        if self.live:
            self._width = rewrite(self.out, line, self._width)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self, done: float | None = None, note: str = "") -> None:
        """The last line (always printed), ending the live line."""
        if done is not None:
            self.update(done, note, force=True)
        if self.live and self._width:
            self.out.write("\n")
            self.out.flush()
        self._width = 0


def is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def rewrite(stream: TextIO, line: str, previous: int, *, end: bool = False) -> int:
    """Write ``line`` over the live line of width ``previous`` (cut to the terminal's width;
    ``end``: finish it with a newline); returns the new live line's width (0 once ended)."""
    import shutil

    line = line[:max(40, shutil.get_terminal_size((100, 20)).columns) - 1]
    stream.write("\r" + line.ljust(previous) + "\r" + line + ("\n" if end else ""))
    stream.flush()
    return 0 if end else len(line)
