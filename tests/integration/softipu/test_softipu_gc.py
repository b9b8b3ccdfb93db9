"""softipu moves its heap out of the cyclic GC's reach after a big load (over real gRPC)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from p4.v1 import p4runtime_pb2

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient
from xpunet.p4rt.testing import LPM_TABLE, lpm_entry, sample_p4info, updates


@pytest.fixture
def unfrozen() -> Iterator[None]:
    # gc.freeze is process-wide: give the test runner its heap back afterwards.
    gc.unfreeze()
    yield
    gc.unfreeze()


async def test_heap_is_frozen_after_the_threshold_and_entries_still_change(unfrozen: None) -> None:
    server = SoftIpu(device_id=1, gc_freeze_after=20)
    await server.start("127.0.0.1:0")
    try:
        settings = ClientSettings(address=f"127.0.0.1:{server.port}", election_id=1, max_batch=8)
        async with P4RuntimeClient(settings) as client:
            async with asyncio.timeout(10):
                await client.wait_primary()
            await client.set_pipeline(sample_p4info())
            entries = [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(16)]
            await client.write(updates(p4runtime_pb2.Update.INSERT, entries))
            assert gc.get_freeze_count() == 0  # 16 updates: below the threshold
            await client.write(updates(p4runtime_pb2.Update.DELETE, entries[:8]))
            assert gc.get_freeze_count() > 0
            # Frozen or not, the tables keep working.
            assert len(await client.read_table_entries(LPM_TABLE)) == 8
            await client.write(updates(p4runtime_pb2.Update.INSERT, entries[:8]))
            assert len(await client.read_table_entries(LPM_TABLE)) == 16
    finally:
        await server.stop()
