"""Leading-edge flush pacing: a lone change flushes at once, a burst at most once per interval.

The clock and the sleep are injected: the fake sleep only advances the fake
clock, so nothing here waits on real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from xpunet.runtime.pacing import FlushPacer, pace_flushes

INTERVAL = 0.02


@pytest.mark.parametrize(
    ("last_flush_end", "now", "delay"),
    [
        pytest.param(None, 5.0, 0.0, id="no flush yet: at once"),
        pytest.param(1.0, 1.5, 0.0, id="quiet for longer than the interval: at once"),
        pytest.param(1.0, 1.02, 0.0, id="exactly the interval: at once"),
        pytest.param(1.0, 1.005, 0.015, id="burst: wait out the rest of the interval"),
        pytest.param(1.0, 1.0, 0.02, id="right after a flush: the whole interval"),
        pytest.param(1.0, 0.5, 0.52, id="clock behind the last flush: never negative, waits it out"),
    ],
)
def test_delay(last_flush_end: float | None, now: float, delay: float) -> None:
    pacer = FlushPacer(INTERVAL)
    if last_flush_end is not None:
        pacer.flushed(last_flush_end)
    assert pacer.delay(now) == pytest.approx(delay)


def test_zero_interval_never_waits() -> None:
    pacer = FlushPacer(0.0)
    pacer.flushed(1.0)
    assert pacer.delay(1.0) == 0.0


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="flush interval"):
        FlushPacer(-0.1)


@dataclass
class Harness:
    """A service stand-in: changes mark ``dirty``; each flush takes what is pending."""

    now: float = 100.0
    flush_cost: float = 0.0  # fake seconds one flush takes
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    pending: list[str] = field(default_factory=list)
    flushes: list[tuple[float, list[str]]] = field(default_factory=list)  # (start time, changes)
    sleeps: list[float] = field(default_factory=list)
    flushed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would

    def change(self, name: str) -> None:
        self.pending.append(name)
        self.dirty.set()

    async def flush(self) -> None:
        taken, self.pending = self.pending, []
        self.flushes.append((self.now, taken))
        self.now += self.flush_cost
        async with self.flushed:
            self.flushed.notify_all()

    async def until_flushes(self, count: int) -> None:
        async with asyncio.timeout(5), self.flushed:
            await self.flushed.wait_for(lambda: len(self.flushes) >= count)


@asynccontextmanager
async def paced(h: Harness, interval: float = INTERVAL) -> AsyncIterator[Harness]:
    stopping = asyncio.Event()
    task = asyncio.create_task(
        pace_flushes(h.dirty, h.flush, interval=interval, stopping=stopping, clock=h.clock, sleep=h.sleep)
    )
    try:
        yield h
    finally:
        stopping.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_lone_change_is_flushed_without_waiting() -> None:
    async with paced(Harness()) as h:
        h.change("a")
        await h.until_flushes(1)
        assert h.sleeps == []
        assert h.flushes == [(100.0, ["a"])]


async def test_a_burst_after_a_flush_is_coalesced_until_the_interval_passed() -> None:
    async with paced(Harness()) as h:
        h.change("a")
        await h.until_flushes(1)
        h.now += 0.005  # 5 ms after the first flush ended
        h.change("b")
        h.change("c")
        await h.until_flushes(2)
        assert h.sleeps == [pytest.approx(0.015)]
        assert h.flushes[1][0] == pytest.approx(100.02)
        assert h.flushes[1][1] == ["b", "c"]


async def test_a_change_after_a_quiet_spell_is_flushed_at_once() -> None:
    async with paced(Harness()) as h:
        h.change("a")
        await h.until_flushes(1)
        h.now += 1.0
        h.change("b")
        await h.until_flushes(2)
        assert h.sleeps == []
        assert h.flushes[1] == (101.0, ["b"])


async def test_the_interval_counts_from_the_end_of_a_slow_flush() -> None:
    async with paced(Harness(flush_cost=0.5)) as h:
        h.change("a")
        await h.until_flushes(1)  # ended at 100.5
        h.change("b")
        await h.until_flushes(2)
        assert h.sleeps == [pytest.approx(INTERVAL)]
        assert h.flushes[1][0] == pytest.approx(100.5 + INTERVAL)


async def test_zero_interval_flushes_every_wakeup_without_sleeping() -> None:
    async with paced(Harness(), interval=0.0) as h:
        for name in ("a", "b", "c"):
            h.change(name)
            await h.until_flushes(len(h.flushes) + 1)
        assert h.sleeps == []
        assert [c for _, c in h.flushes] == [["a"], ["b"], ["c"]]


async def test_stopping_ends_the_loop_after_the_current_flush() -> None:
    h = Harness()
    stopping = asyncio.Event()

    async def flush_then_stop() -> None:
        await h.flush()
        stopping.set()

    h.change("a")
    task = asyncio.create_task(
        pace_flushes(
            h.dirty, flush_then_stop, interval=INTERVAL, stopping=stopping, clock=h.clock, sleep=h.sleep
        )
    )
    h.change("b")  # marked before the loop ran: part of the first flush
    async with asyncio.timeout(5):
        await task
    assert [c for _, c in h.flushes] == [["a", "b"]]
