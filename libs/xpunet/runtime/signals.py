"""SIGTERM/SIGINT as a stop request, for the service runner and ``xpunetctl``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """Yield an event the first SIGTERM/SIGINT sets; a second one cancels the current task.

    The first signal asks for a graceful stop (stop intake, flush, drain); a
    second means the operator gave up waiting, so the task is cancelled.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.current_task()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            log.info("%s received; stopping", signal.Signals(signum).name)
            stop.set()
        elif task is not None:
            log.warning("second %s; abandoning the graceful stop", signal.Signals(signum).name)
            task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield stop
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
