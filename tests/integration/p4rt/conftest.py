"""A softipu server on a free loopback port, and connected clients, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient

ClientFactory = Callable[..., AbstractAsyncContextManager[P4RuntimeClient]]


@pytest.fixture
async def softipu() -> AsyncIterator[SoftIpu]:
    server = SoftIpu(device_id=1)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop()


@pytest.fixture
def connect(softipu: SoftIpu) -> ClientFactory:
    """``async with connect(election_id=...) as client``: a client arbitrated with softipu."""

    @asynccontextmanager
    async def factory(**overrides: object) -> AsyncIterator[P4RuntimeClient]:
        settings = ClientSettings(address=f"127.0.0.1:{softipu.port}", **overrides)  # type: ignore[arg-type]  # test kwargs
        async with P4RuntimeClient(settings) as client:
            yield client

    return factory
