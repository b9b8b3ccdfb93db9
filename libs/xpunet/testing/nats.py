"""Pytest fixtures for a real nats-server with JetStream (never a mock).

* ``nats_server`` — one server per test session (sync fixture, no event loop needed).
* ``nats_url`` — its URL.
* ``private_nats_server`` — a server of the test's own, for tests that restart or kill it.
* ``unique_name(prefix)`` / ``bucket_name`` — fresh KV bucket names, so tests sharing
  the session server never see each other's state.
* ``bus`` — a ``NatsBus`` connected to the session server, drained after the test.
* ``kv`` — a ``NatsStateStore`` on a fresh bucket, deleted after the test.
* ``take(aiter, n)`` — the next ``n`` items of an async iterator, bounded by a timeout.
* ``next_entry(watch, key)`` — the next update of one key on a KV watch, bounded by a timeout.
* ``in_background(service)`` — a service's ``run(stopping)`` as a task for the ``async with``
  block; stopped and awaited at its end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

import pytest

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.nats import NatsBus, NatsStateStore, connect
from xpunet.embedded.nats import NatsServer

_counter = itertools.count()
T = TypeVar("T")


def unique_name(prefix: str = "t") -> str:
    """A name valid as a KV bucket, stream or subject token, unique across processes and calls."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """The session's shared nats-server (JetStream on, temporary store).  Do not restart it."""
    with NatsServer(name="xpunet-test") as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def private_nats_server() -> Iterator[NatsServer]:
    """A nats-server for this test alone: restart or kill it freely."""
    with NatsServer(name="xpunet-private") as server:
        yield server


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A fresh KV bucket name for this test."""
    return unique_name("b")


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[NatsBus]:
    connection = await connect(nats_url, name="xpunet-test", initial_timeout=10)
    try:
        yield connection
    finally:
        await connection.drain()


@pytest.fixture
async def kv(bus: NatsBus, bucket_name: str) -> AsyncIterator[NatsStateStore]:
    store = await bus.kv(bucket_name)
    yield store
    if bus.connected:
        await bus.delete_kv(bucket_name)


async def take(source: AsyncIterator[T], n: int, *, within: float = 10.0) -> list[T]:
    """The next ``n`` items of ``source``; fails the test (TimeoutError) if they do not all come in time."""
    items: list[T] = []
    async with asyncio.timeout(within):
        while len(items) < n:
            items.append(await anext(source))
    return items


async def next_entry(watch: AsyncIterator[KVEntry | InSync], key: str, *, within: float = 10.0) -> KVEntry:
    """The next update of ``key`` on ``watch`` (other keys and InSync skipped), within ``within`` seconds."""
    async with asyncio.timeout(within):
        async for item in watch:
            if isinstance(item, KVEntry) and item.key == key:
                return item
    raise AssertionError(f"the watch ended before an update of {key}")


class StoppableService(Protocol):
    async def run(self, stopping: asyncio.Event) -> None: ...


S = TypeVar("S", bound=StoppableService)


@asynccontextmanager
async def in_background(service: S, *, stop_within: float = 10.0) -> AsyncIterator[S]:
    """Run ``service.run(stopping)`` as a task for the block; then set ``stopping`` and await the task."""
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, stop_within)
