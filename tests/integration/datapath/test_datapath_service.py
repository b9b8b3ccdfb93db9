"""The datapath service end to end: intents in a real NATS KV → lowering → real gRPC writes into softipu.

Covers: full programming from empty, incremental updates, a datapath restart
(no duplicates, nothing missing, no writes at all when nothing changed), a
softipu restart (full resync), a rejected entry (reported with its intent, the
rest applied, retried), primary/backup arbitration with two datapaths.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from xpunet.bus.api import KVEntry
from xpunet.datapath.intents import WRITTEN_AT_HEADER
from xpunet.datapath.status import DatapathStatus, status_key
from xpunet.datapath.testing import PORTS, WITHIN, Buckets, CountingSoftIpu, Runner, seed, service, svc_key
from xpunet.ir.policy import endpoint_key
from xpunet.p4rt.client import Role
from xpunet.pipeline.p4info import schema_to_p4info
from xpunet.wire import decode_object, encode_object


async def read_status(
    b: Buckets, until: Callable[[DatapathStatus], bool] = lambda s: s.ready
) -> DatapathStatus:
    """The node's status record, once it satisfies ``until`` (it is rewritten after passes)."""
    async with asyncio.timeout(WITHIN), contextlib.aclosing(b.status.watch(status_key("n1"))) as watch:
        async for item in watch:
            if isinstance(item, KVEntry) and item.value is not None:
                status = decode_object(item.value)
                assert isinstance(status, DatapathStatus)
                if until(status):
                    return status
    raise AssertionError("status watch ended")


async def converged(svc_: object, revision: int = 0) -> None:
    from xpunet.datapath.service import DatapathService

    assert isinstance(svc_, DatapathService)
    async with asyncio.timeout(WITHIN):
        await svc_.wait_converged(revision)


async def test_full_programming_from_empty_then_incremental(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    revision = await seed(buckets)
    async with runner(ports=PORTS) as dp:
        await converged(dp, revision)
        desired = set(dp.desired().entries)
        assert softipu.entries() == desired
        aliases = {e.alias for e in desired}
        assert {"port_info", "endpoint_by_ip_v4", "fib_v4", "next_hop", "service_frontend_v4"} <= aliases
        assert not any(e.origin.endswith("shop/x") for e in desired)  # n2's pod is not on n1
        assert softipu.received["DELETE"] == 0
        assert softipu.received["INSERT"] == len(desired)
        status = await read_status(buckets, lambda s: s.ready and s.applied_revision >= revision)
        assert status.ready
        assert status.applied_revision >= revision
        assert status.entries == len(desired)
        assert status.occupancy["port_info"] == 4
        softipu.received.clear()

        # One backend leaves: only that service's group and buckets change.
        before = desired
        rev = await buckets.intents.put(
            svc_key(7),
            encode_object(service(7, "10.96.0.7", ("10.1.0.10",))),
            headers={WRITTEN_AT_HEADER: "1"},  # absurd start: clamped to the arrival time, never negative
        )
        await converged(dp, rev)
        after = set(dp.desired().entries)
        assert softipu.entries() == after
        changed = len(after - before)
        assert softipu.received["INSERT"] + softipu.received["MODIFY"] == changed
        assert softipu.received["DELETE"] == len({e.key for e in before} - {e.key for e in after})
        assert {e.alias for e in after - before} <= {"maglev_backend_v4", "backend_group"}

        # A service goes away: its entries are deleted, nothing else is touched.
        softipu.received.clear()
        rev = await buckets.intents.put(svc_key(8), encode_object(service(8, "10.96.0.8", ("10.1.0.11",))))
        await converged(dp, rev)
        with_8 = set(dp.desired().entries)
        await buckets.intents.delete(svc_key(8))
        async with asyncio.timeout(WITHIN):
            await dp.wait_pass(lambda s: svc_key(8) not in s.view.values and not s._pending)
        assert softipu.entries() == after
        assert softipu.received["DELETE"] == len(with_8 - after)
        status = await read_status(buckets, lambda s: s.entries == len(after))
        assert status.convergence_ms >= 0
        assert status.rejected_count == 0


async def test_datapath_restart_writes_nothing_and_keeps_entries(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    revision = await seed(buckets)
    async with runner(ports=PORTS) as dp:
        await converged(dp, revision)
        first = softipu.entries()
    softipu.received.clear()
    async with runner(ports=PORTS) as dp:
        await converged(dp, revision)
        assert softipu.entries() == first
        assert sum(softipu.received.values()) == 0  # no flush, no re-insert, no delete
        assert dp.reconciler.applied.keys() == {e.key for e in first}
        # A change made while the datapath was down is applied as a difference.
    await buckets.intents.delete(endpoint_key("n1", "shop", "db"))
    softipu.received.clear()
    async with runner(ports=PORTS) as dp:
        await converged(dp)
        assert softipu.entries() == set(dp.desired().entries)
        assert softipu.received["INSERT"] == 0
        assert softipu.received["DELETE"] > 0


async def test_softipu_restart_resyncs_fully(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    revision = await seed(buckets)
    async with runner(ports=PORTS) as dp:
        await converged(dp, revision)
        desired = set(dp.desired().entries)
        generation = dp.status().generation
        port = softipu.port
        await softipu.stop()
        # The same device comes back empty on the same port.
        softipu.state = None
        softipu.received.clear()
        await softipu.start(f"127.0.0.1:{port}")
        async with asyncio.timeout(WITHIN):
            await dp.wait_converged(generation=generation + 1)
        assert softipu.entries() == desired
        assert softipu.received["INSERT"] == len(desired)
        assert softipu.received["DELETE"] == 0


async def test_rejected_entry_is_reported_and_the_rest_applies(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    from xpunet.pipeline.schema import SCHEMA

    # The target's backend_group table holds one entry: a second service cannot be programmed.
    small = schema_to_p4info(SCHEMA)
    for t in small.tables:
        if t.preamble.name == "ingress.backend_group":
            t.size = 1
    revision = await seed(buckets)
    revision = await buckets.intents.put(svc_key(8), encode_object(service(8, "10.96.0.8", ("10.1.0.11",))))
    async with runner(ports=PORTS, p4info=small) as dp:
        await converged(dp, revision)
        held = softipu.entries()
        desired = set(dp.desired().entries)
        missing = desired - held
        assert len(missing) == 1
        assert next(iter(missing)).alias == "backend_group"
        status = await read_status(buckets, lambda s: s.rejected_count > 0)
        assert status.rejected_count == 1
        (rej,) = status.rejected
        assert rej.code == "RESOURCE_EXHAUSTED"
        assert rej.retrying
        assert rej.origin.startswith("service")
        assert "RESOURCE_EXHAUSTED" in status.last_error
        # Everything else of both services is there (frontends included: the rest still applies).
        assert {e.alias for e in desired - missing} >= {"service_frontend_v4", "maglev_backend_v4"}

        # The first service goes away: the retry (with backoff) now fits.
        await buckets.intents.delete(svc_key(7))
        async with asyncio.timeout(WITHIN):
            await dp.wait_pass(lambda s: not s.reconciler.rejected and not s.view.values.get(svc_key(7)))
        assert softipu.entries() == set(dp.desired().entries)
        status = await read_status(buckets, lambda s: s.rejected_count == 0)


async def test_primary_backup_two_datapaths(
    buckets: Buckets, softipu: CountingSoftIpu, runner: Runner
) -> None:
    revision = await seed(buckets)
    async with runner(ports=PORTS, election_id=10) as primary:
        await converged(primary, revision)
        desired = set(primary.desired().entries)
        softipu.received.clear()
        async with runner(ports=PORTS, election_id=5, take_over=True) as backup:
            target = backup.target
            from xpunet.datapath.p4rt_target import P4RuntimeTarget

            assert isinstance(target, P4RuntimeTarget)
            async with asyncio.timeout(WITHIN):
                await target.client.wait_for(lambda a: a.role is Role.BACKUP)
            assert not backup.status().ready
            # The backup writes nothing while the primary is there.
            rev = await buckets.intents.put(
                svc_key(8), encode_object(service(8, "10.96.0.8", ("10.1.0.11",)))
            )
            await converged(primary, rev)
            assert softipu.entries() == set(primary.desired().entries)
            desired = set(primary.desired().entries)
            written = sum(softipu.received.values())
            await primary_stop(primary)
            # The backup takes over, reconciles, and finds nothing to write.
            await converged(backup, rev)
            assert target.client.arbitration.role is Role.PRIMARY
            assert softipu.entries() == desired
            assert sum(softipu.received.values()) == written


async def primary_stop(dp: object) -> None:
    from xpunet.datapath.service import DatapathService

    assert isinstance(dp, DatapathService)
    await dp.target.close()
