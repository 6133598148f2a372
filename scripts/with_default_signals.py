"""Run a command with SIGINT and SIGTERM at their defaults, so that Ctrl-C and kill stop ``make dev``.

A command started in the background by a non-interactive shell (a script's ``make dev &``, an IDE's or
an agent's runner) inherits SIGINT *ignored* (POSIX, for asynchronous lists without job control), and
Python leaves an ignored SIGINT ignored: no KeyboardInterrupt. ``dagster dev`` stops its services only
on a KeyboardInterrupt, and ``dagster._utils.interrupts.setup_interrupt_handlers`` gives SIGTERM
whatever SIGINT does, so it then ignores both. Its daemon and webserver install handlers of their own:
they stop serving, then wait for a shutdown message that ``dagster dev`` never sends, beside the idle
code server and its multiprocessing resource tracker: five processes that only SIGKILL ends.

Dagster has no issue for this cause; the nearest are https://github.com/dagster-io/dagster/issues/25749
(its SIGTERM handler is SIGINT's) and https://github.com/dagster-io/dagster/pull/29165 (dagit seen
ignoring SIGTERM, not investigated). An ignored or blocked signal is what ``exec`` keeps, so resetting
both here, then exec'ing, is the whole workaround: the command becomes this process, with its own
output, and Ctrl-C reaches it as it would from an interactive shell.

    python scripts/with_default_signals.py COMMAND [ARGS...]
"""

from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def main(command: list[str]) -> None:
    if not command:
        sys.exit("usage: with_default_signals.py COMMAND [ARGS...]")
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
