"""Running an ``xpunetctl`` coroutine: uvloop (or the stock loop), and SIGTERM/SIGINT as a stop request.

Commands that run datapaths in this process (``up``, ``demo``) use the stock
asyncio loop: the kernel target and the veth vNICs talk netlink through
pyroute2's asyncio sockets, which uvloop cannot open (AF_NETLINK datagrams).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Literal

log = logging.getLogger(__name__)


def quiet_netlink_helpers() -> None:
    """pyroute2 opens a namespace's netlink socket in a forked helper and ends it with SIGTERM.

    The helper inherits our signal handlers and asyncio's wakeup fd: its SIGTERM
    would reach this loop as if we had been asked to stop.  The library's switch
    resets the helper's handlers to the defaults first.
    """
    import pyroute2.config

    pyroute2.config.disable_mp_signal = True


def run_until_signal(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
    *,
    loop: Literal["uvloop", "asyncio"] = "uvloop",
) -> int:
    """Run ``main(stop)``; the first SIGTERM/SIGINT sets ``stop``, a second cancels."""

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

    if loop == "asyncio":
        quiet_netlink_helpers()
        return asyncio.run(wrapper())
    import uvloop

    result: int = uvloop.run(wrapper())
    return result
