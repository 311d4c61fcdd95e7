"""A report page in a real browser: headless Chromium takes its screenshot and measures where
an element ends on the first screen (what a reader sees without scrolling).

Chromium is found on ``PATH`` (``chromium``, ``chromium-browser``, ``google-chrome``) or
named by ``METASAM_BROWSER``; Debian's package ``chromium`` is enough. Nothing is fetched: the
pages are self-contained and the browser's background networking is off.

    >>> find_browser() is None or Path(find_browser()).is_file()
    True
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def find_browser() -> str | None:
    """The Chromium to use, or ``None`` when there is none."""
    named = os.environ.get("METASAM_BROWSER")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def _run(args: list[str], browser: str | None, timeout: float) -> str:
    exe = browser or find_browser()
    if exe is None:
        raise FileNotFoundError("no Chromium found (install Debian's chromium, or set "
                                "METASAM_BROWSER)")
    flags = FLAGS + (["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([exe, *flags, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{exe} exited with {done.returncode}: {done.stderr[-500:]}")
    return done.stdout


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 900,
               browser: str | None = None, timeout: float = 60.0) -> Path:
    """The first ``width`` × ``height`` pixels of ``page`` as a PNG."""
    png = Path(png).resolve()
    _run([f"--window-size={width},{height}", f"--screenshot={png}",
          Path(page).resolve().as_uri()], browser, timeout)
    if not png.is_file():
        raise RuntimeError(f"the browser wrote no screenshot to {png}")
    return png


def element_bottom(page: Path, element_id: str, *, width: int = 1280, height: int = 900,
                   browser: str | None = None, timeout: float = 60.0) -> float:
    """Where the element ``element_id`` ends, in CSS pixels from the top of the page as laid
    out in a ``width``-wide window (≤ ``height``: on the first screen); ``inf`` when the page
    has no such element."""
    text = Path(page).read_text(encoding="utf-8")
    probe = (f"<script>var e=document.getElementById({element_id!r});"
             "document.documentElement.setAttribute('data-bottom',"
             "e?String(e.getBoundingClientRect().bottom):'inf')</script>")
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "page.html"
        copy.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
        dom = _run([f"--window-size={width},{height}", "--dump-dom", copy.as_uri()], browser,
                   timeout)
    found = re.search(r'data-bottom="([^"]+)"', dom)
    if found is None:
        raise RuntimeError("the browser did not run the page's probe")
    return float(found.group(1))
