"""Datapath integration fixtures: softipu (real gRPC, in-process), KV buckets on the real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from xpunet.bus.nats import NatsBus
from xpunet.datapath.testing import Buckets, CountingSoftIpu, Runner
from xpunet.testing.nats import unique_name


@pytest.fixture
async def buckets(bus: NatsBus) -> AsyncIterator[Buckets]:
    names = [unique_name("dp") for _ in range(3)]
    stores = [await bus.kv(n) for n in names]
    yield Buckets(*stores)
    if bus.connected:
        for n in names:
            await bus.delete_kv(n)


@pytest.fixture
async def softipu() -> AsyncIterator[CountingSoftIpu]:
    server = CountingSoftIpu()
    await server.start("127.0.0.1:0")
    yield server
    await server.stop()


@pytest.fixture
def runner(buckets: Buckets, softipu: CountingSoftIpu) -> Runner:
    return Runner(buckets, softipu)
