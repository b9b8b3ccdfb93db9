"""The P4Runtime client against softipu over real gRPC: arbitration, pipeline, write, read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import pytest
from p4.v1 import p4runtime_pb2

from xpunet.datapath.softipu.server import SoftIpu
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient, PipelineAction, Role, pipeline_cookie
from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError
from xpunet.p4rt.p4info import parse_text
from xpunet.p4rt.testing import (
    LPM_TABLE,
    TEST_P4INFO_TEXT,
    acl_entry,
    lpm_entry,
    sample_p4info,
    updates,
)

INSERT = p4runtime_pb2.Update.INSERT
DELETE = p4runtime_pb2.Update.DELETE
WAIT = 10.0
ClientFactory = Callable[..., AbstractAsyncContextManager[P4RuntimeClient]]


async def test_higher_election_id_is_primary_and_backup_cannot_write(connect: ClientFactory) -> None:
    async with connect(election_id=10) as a:
        # b connects only once a holds the primary role: otherwise b's arbitration can reach softipu first,
        # b is briefly primary, and the first answer it sees is not the one this test is about.
        async with asyncio.timeout(WAIT):
            await a.wait_primary()
        async with connect(election_id=5) as b:
            async with asyncio.timeout(WAIT):
                arb = await b.wait_arbitrated()
            assert arb.role is Role.BACKUP
            assert arb.has_primary
            assert arb.primary_election_id == 10
            await a.set_pipeline(sample_p4info())
            with pytest.raises(RetryableTargetError) as info:
                await b.write(updates(INSERT, [lpm_entry(0x0A000000, 8)]))
            assert info.value.code == "PERMISSION_DENIED"
            await a.write(updates(INSERT, [lpm_entry(0x0A000000, 8)]))
            # Backups may read.
            assert len(await b.read_table_entries(LPM_TABLE)) == 1


async def test_new_client_with_higher_id_takes_over_and_old_primary_is_told(connect: ClientFactory) -> None:
    async with connect(election_id=5) as a:
        async with asyncio.timeout(WAIT):
            await a.wait_primary()
        async with connect(election_id=9) as b:
            async with asyncio.timeout(WAIT):
                await b.wait_primary()
                arb = await a.wait_for(lambda s: s.role is Role.BACKUP)
            assert arb.primary_election_id == 9


async def test_failover_when_primary_stream_closes(connect: ClientFactory) -> None:
    async with connect(election_id=5, take_over_when_vacant=True) as backup:
        async with connect(election_id=10) as primary:
            async with asyncio.timeout(WAIT):
                await primary.wait_primary()
                await backup.wait_for(lambda s: s.role is Role.BACKUP and s.has_primary)
        # The primary's stream is gone: softipu says "no primary", the backup claims above the highest id.
        async with asyncio.timeout(WAIT):
            arb = await backup.wait_primary()
        assert backup.election_id == 11
        assert arb.primary_election_id == 11
        await backup.set_pipeline(sample_p4info())
        await backup.write(updates(INSERT, [lpm_entry(0x0A000000, 8)]))


async def test_backup_without_takeover_stays_backup_when_primary_leaves(connect: ClientFactory) -> None:
    async with connect(election_id=5) as backup:
        async with connect(election_id=10) as primary:
            async with asyncio.timeout(WAIT):
                await primary.wait_primary()
                await backup.wait_for(lambda s: s.role is Role.BACKUP and s.has_primary)
        async with asyncio.timeout(WAIT):
            arb = await backup.wait_for(lambda s: s.role is Role.BACKUP and not s.has_primary)
        assert arb.primary_election_id == 10


async def test_pipeline_install_then_reconcile_keeps_entries(connect: ClientFactory) -> None:
    async with connect(election_id=1) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        assert await client.get_pipeline_cookie() is None
        p4info = sample_p4info()
        assert await client.set_pipeline(p4info) is PipelineAction.INSTALLED
        assert await client.get_pipeline_cookie() == pipeline_cookie(p4info)
        await client.write(updates(INSERT, [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(10)]))
        assert await client.set_pipeline(p4info) is PipelineAction.RECONCILED
        assert len(await client.read_table_entries(LPM_TABLE)) == 10
        config = await client.get_pipeline()
        assert config is not None
        assert config.p4info == p4info


async def test_reconcile_with_changed_pipeline_keeps_entries_that_fit(connect: ClientFactory) -> None:
    async with connect(election_id=1) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        await client.write(updates(INSERT, [lpm_entry(0x0A000000, 8)]))
        await client.write(
            updates(INSERT, [acl_entry(src=1, mask=0xFF, low=1, high=2, proto=6, vrf=1, priority=10)])
        )
        # A new version of the pipeline without the ACL table.
        text = TEST_P4INFO_TEXT.replace(
            'preamble { id: 0x02000002 name: "ingress.acl"', 'preamble { id: 0x02000005 name: "ingress.acl2"'
        )
        changed = parse_text(text)
        assert await client.set_pipeline(changed) is PipelineAction.RECONCILED
        entries = await client.read_table_entries()
        assert [e.table_id for e in entries] == [LPM_TABLE]


async def test_write_without_pipeline_is_retryable(connect: ClientFactory) -> None:
    async with connect(election_id=1) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        with pytest.raises(RetryableTargetError) as info:
            await client.write(updates(INSERT, [lpm_entry(0x0A000000, 8)]))
        assert info.value.code == "FAILED_PRECONDITION"


async def test_batches_report_rejected_updates_by_caller_index(connect: ClientFactory) -> None:
    async with connect(election_id=1, max_batch=3) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        await client.write(updates(INSERT, [lpm_entry(0x0B000000, 8)]))
        entries = [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(8)]
        entries[1] = lpm_entry(0x0B000000, 8)  # duplicate of an installed entry
        entries[6] = lpm_entry(0x0A000001, 24)  # host bits beyond /24
        with pytest.raises(PermanentTargetError) as info:
            await client.write(updates(INSERT, entries))
        assert [(u.index, u.code) for u in info.value.updates] == [
            (1, "ALREADY_EXISTS"),
            (6, "INVALID_ARGUMENT"),
        ]
        # Every other update of every batch was applied (CONTINUE_ON_ERROR).
        assert len(await client.read_table_entries(LPM_TABLE)) == 1 + 6


async def test_stream_loss_reconnects_and_bumps_epoch(softipu: SoftIpu) -> None:
    settings = ClientSettings(address=f"127.0.0.1:{softipu.port}", election_id=3, reconnect_min=0.05)
    async with P4RuntimeClient(settings) as client:
        async with asyncio.timeout(WAIT):
            first = await client.wait_primary()
        await softipu.stop(grace=0)
        async with asyncio.timeout(WAIT):
            await client.wait_for(lambda s: s.role is Role.DISCONNECTED)
        restarted = SoftIpu(device_id=1)
        await restarted.start(f"127.0.0.1:{softipu.port}")
        try:
            async with asyncio.timeout(WAIT):
                again = await client.wait_primary()
            assert again.epoch > first.epoch
            # The restarted target has no pipeline: the owner must reinstall and resync.
            assert await client.get_pipeline_cookie() is None
        finally:
            await restarted.stop()


async def test_delete_then_read_back_empty(connect: ClientFactory) -> None:
    async with connect(election_id=1) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        batch = [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(5)]
        await client.write(updates(INSERT, batch))
        await client.write(updates(DELETE, batch))
        assert await client.read_table_entries() == []
        assert await client.api_version()


async def test_write_encoded_pulls_at_most_one_batch_ahead(connect: ClientFactory, softipu: SoftIpu) -> None:
    size, count = 4, 22
    entries = [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(count)]
    applied_when_pulled: list[int] = []

    def source() -> Iterator[bytes]:
        for u in updates(INSERT, entries):
            applied_when_pulled.append(softipu.write_generation)
            yield u.SerializeToString()

    async with connect(election_id=1, max_batch=size) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        first = softipu.write_generation
        await client.write_encoded(source())
        assert softipu.write_generation - first == -(-count // size)
        # Batch j is encoded only once batches 0 .. j-2 are acknowledged: two batches in memory at most.
        for i, generation in enumerate(applied_when_pulled):
            assert generation - first >= i // size - 1
        assert len(await client.read_table_entries(LPM_TABLE)) == count


async def test_write_encoded_source_failure_keeps_the_acknowledged_batches(
    connect: ClientFactory,
) -> None:
    def source() -> Iterator[bytes]:
        for u in updates(INSERT, [lpm_entry(0x0A000000 + (i << 8), 24) for i in range(7)]):
            yield u.SerializeToString()
        raise ValueError("encoder broke")

    async with connect(election_id=1, max_batch=3) as client:
        async with asyncio.timeout(WAIT):
            await client.wait_primary()
        await client.set_pipeline(sample_p4info())
        with pytest.raises(ValueError, match="encoder broke"):
            await client.write_encoded(source())
        # The two batches sent were settled before the error surfaced; nothing else was sent.
        assert len(await client.read_table_entries(LPM_TABLE)) == 6
