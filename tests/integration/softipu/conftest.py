"""softipu with the test pipeline installed and a primary client connected (real gRPC)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient
from xpunet.p4rt.testing import sample_p4info


@pytest.fixture
async def softipu_server() -> AsyncIterator[SoftIpu]:
    server = SoftIpu(device_id=1)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop()


@pytest.fixture
async def primary(softipu_server: SoftIpu) -> AsyncIterator[P4RuntimeClient]:
    settings = ClientSettings(address=f"127.0.0.1:{softipu_server.port}", election_id=1)
    async with P4RuntimeClient(settings) as client:
        async with asyncio.timeout(10):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        yield client
