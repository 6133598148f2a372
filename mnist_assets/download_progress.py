"""How a download reports its progress to people: bytes so far, of how many, and the rate.

Apart from :mod:`mnist_assets.download` because it is about showing, not fetching: the lines go to
``context.log`` in an asset, which the UI and ``mnist-assets refresh`` show.
"""

from __future__ import annotations

import time
from typing import Protocol


class Log(Protocol):
    """Where a download reports (``context.log`` in an asset): progress as info, failed attempts as
    warnings."""

    def info(self, message: str, /) -> None: ...

    def warning(self, message: str, /) -> None: ...


def size_for_people(count: float) -> str:
    """A byte count (or rate) for people: 512 bytes, 4.5 KB, 47.0 MB, 5.50 GB."""
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("KB", "MB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.2f} GB"


class DownloadProgress:
    """Progress lines of one download: bytes so far, of how many, and the rate, at most one line every
    ``every`` seconds, then one when the file verified. A download shorter than ``every`` logs only that
    last line."""

    def __init__(self, log: Log | None, what: str, every: float):
        self.log, self.what, self.every = log, what, every
        self.total: int | None = None  # the size, when the mirror says it
        self.received = 0
        self.started = self.shown = time.monotonic()

    def expect(self, total: int | None) -> None:
        self.total = total

    def advance(self, received: int) -> None:
        self.received = received
        now = time.monotonic()
        finished = self.received == self.total  # the last line says so: a one-chunk file logs one line
        if self.log is not None and now - self.shown >= self.every and not finished:
            self.shown = now
            # floored: 100% is for the last line
            of = (
                f" of {size_for_people(self.total)} ({100 * self.received // self.total}%)"
                if self.total
                else ""
            )
            self.log.info(f"{self.what}: {size_for_people(self.received)}{of}, {self._rate(now)}")

    def done(self) -> None:
        if self.log is not None:
            now = time.monotonic()
            self.log.info(
                f"{self.what}: {size_for_people(self.received)} in {now - self.started:.1f} s "
                f"({self._rate(now)}), payload verified"
            )

    def _rate(self, now: float) -> str:
        return f"{size_for_people(self.received / max(now - self.started, 1e-6))}/s"
