"""Leading-edge flush pacing for the compilers that coalesce input changes into writes (policy, lb).

A compiler marks itself dirty on every input change and writes what changed
in one flush.  Waiting a fixed interval before *every* flush makes a lone
change pay the whole interval; flushing on every change makes a burst cost a
flush per change.  The rule here does both jobs:

* quiet: the previous flush ended at least ``interval`` ago (or there was
  none) — flush at once;
* burst: it ended less than ``interval`` ago — wait until it is ``interval``
  old, gathering whatever else arrives, then flush it all together.

Measured from the *end* of the previous flush, so a burst flushes at most once
per ``interval`` plus the flush's own time, as the trailing wait it replaces
did; changes arriving during a flush are in the next one.  ``FlushPacer`` is
the decision (clock passed in); ``pace_flushes`` is the loop both services run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class FlushPacer:
    """When to flush: at once after a quiet spell, else when ``interval`` has passed since the last."""

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError(f"flush interval must be >= 0, got {interval}")
        self._interval = interval
        self._last: float | None = None  # when the previous flush ended

    def delay(self, now: float) -> float:
        """Seconds to wait before flushing a change seen at ``now`` (0: flush now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self._interval - now)

    def flushed(self, now: float) -> None:
        """A flush ended at ``now``."""
        self._last = now


async def pace_flushes(
    dirty: asyncio.Event,
    flush: Callable[[], Awaitable[object]],
    *,
    interval: float,
    stopping: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Call ``flush`` whenever ``dirty`` is set, paced by :class:`FlushPacer`, until ``stopping``.

    ``dirty`` is cleared just before each call, so changes marked during a flush
    make another one.  ``flush`` decides itself whether there is anything to do
    (a service not yet in sync returns without writing); the call is paced all
    the same.
    """
    pacer = FlushPacer(interval)
    while not stopping.is_set():
        await dirty.wait()
        wait = pacer.delay(clock())
        if wait > 0:
            await sleep(wait)  # a burst: gather the rest of it into this flush
        dirty.clear()
        await flush()
        pacer.flushed(clock())
