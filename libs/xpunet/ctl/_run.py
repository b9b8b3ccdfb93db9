"""Running an ``xpunetctl`` coroutine: uvloop, and SIGTERM/SIGINT as a stop request."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop)`` on uvloop; the first SIGTERM/SIGINT sets ``stop``, a second cancels."""
    import uvloop

    async def wrapper() -> int:
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

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return await main(stop)
        except asyncio.CancelledError:
            return 130
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    result: int = uvloop.run(wrapper())
    return result
