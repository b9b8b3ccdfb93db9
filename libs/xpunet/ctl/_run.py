"""Running an ``xpunetctl`` coroutine: uvloop (or the stock loop), and SIGTERM/SIGINT as a stop request.

Commands that run datapaths in this process (``up``, ``demo``) use the stock
asyncio loop: the kernel target and the veth vNICs talk netlink through
pyroute2's asyncio sockets, which uvloop cannot open (AF_NETLINK datagrams).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from xpunet.runtime.signals import stop_on_signals


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
        with stop_on_signals() as stop:
            try:
                return await main(stop)
            except asyncio.CancelledError:
                return 130

    if loop == "asyncio":
        quiet_netlink_helpers()
        return asyncio.run(wrapper())
    import uvloop

    result: int = uvloop.run(wrapper())
    return result
