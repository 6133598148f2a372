"""How ``mnist-assets refresh`` and ``prepare`` show their steps while they run.

On a terminal: a live row per step (spinner, bar, elapsed time) that ends as ✓ or ✗ with its seconds;
the steps' own messages (download rates, epochs) and refresh's lines print above the rows. Anywhere
else (CI logs, pipes): plain lines, one per event, that read well in a file. The JSON summary goes to
stdout either way; all of this goes to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID

    from mnist_assets.rebuild.steps import Step


class Lines:
    """Plain lines through ``write``: what refresh says, and each finished step with its seconds."""

    def __init__(self, write: Callable[[str], None] = print):
        self.write = write

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def log(self, message: str) -> None:
        self.write(message)

    def started(self, steps: list[Step]) -> None:
        """``steps`` start now, in one run (refresh has logged why each runs)."""

    def finished(self, step: Step) -> None:
        if step.error is None and step.seconds is not None:
            self.write(f"done {step.label} in {step.seconds:.2f} s")


class Bars(Lines):
    """Live rows on a terminal (rich). stderr is redirected through the display while it is live, so
    Dagster's console lines land above the rows instead of tearing them."""

    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.display = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TimeElapsedColumn(),
            console=Console(file=stream),
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self.rows: dict[str, TaskID] = {}
        super().__init__(lambda message: self.display.console.print(message, markup=False, highlight=False))

    def __enter__(self) -> Bars:
        self.display.start()
        return self

    def __exit__(self, *exc) -> None:
        self.display.stop()

    def started(self, steps: list[Step]) -> None:
        for step in steps:
            self.rows[step.label] = self.display.add_task(f"  {_plain(step.label)}", total=1)

    def finished(self, step: Step) -> None:
        row = self.rows.pop(step.label)
        seconds = "" if step.seconds is None else f" {step.seconds:.2f} s"
        mark = "✓" if step.error is None else ("·" if step.blocked_by else "✗")
        self.display.update(row, completed=1, description=f"{mark} {_plain(step.label)}{seconds}")
        self.display.stop_task(row)


def _plain(text: str) -> str:
    """``text`` shown as written: rich would take ``[train-images]`` for a style tag."""
    from rich.markup import escape

    return escape(text)


def for_stream(stream: TextIO = sys.stderr) -> Lines:
    """Bars when ``stream`` is an interactive terminal, plain lines otherwise."""
    if stream.isatty() and os.environ.get("TERM", "") != "dumb":
        return Bars(stream)
    return Lines(lambda message: print(message, file=stream))
