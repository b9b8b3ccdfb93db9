"""Reconnect after the server restarts (same port and store): nothing lost from KV, watches resume exactly."""

from __future__ import annotations

import contextlib

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.nats import connect
from xpunet.embedded.nats import NatsServer
from xpunet.testing.nats import take, unique_name


async def test_kv_and_watch_survive_server_restart(private_nats_server: NatsServer) -> None:
    server = private_nats_server
    writer = await connect(server.url, name="writer", initial_timeout=10)
    watcher = await connect(server.url, name="watcher", initial_timeout=10)
    try:
        bucket = unique_name("restart")
        store = await writer.kv(bucket)
        before = {f"k.{i}": f"before-{i}".encode() for i in range(500)}
        await store.put_many(before)
        watched = await watcher.kv(bucket, create=False)
        async with contextlib.aclosing(watched.watch("k.")) as watch:
            snapshot = await take(watch, len(before) + 1)
            assert isinstance(snapshot[-1], InSync)
            seen_before = snapshot[-1].revision

            # Changes made just before the restart may still be in flight to the watcher.
            await store.put_many({f"k.{i}": f"pre-restart-{i}".encode() for i in range(10)})
            await server.arestart()

            # Write through the restart window: the writer reconnects and retries under the hood.
            after: dict[str, bytes | None] = {f"k.{i}": f"after-{i}".encode() for i in range(0, 500, 3)}
            after.update({f"k.{i}": None for i in range(1, 500, 50)})
            after["k.new"] = b"new"
            last = await store.put_many(after)

            expected_updates = 10 + len(after)
            updates = await take(watch, expected_updates, within=30)
        revisions = [u.revision for u in updates if isinstance(u, KVEntry)]
        assert len(revisions) == expected_updates, "an InSync or a foreign item slipped in"
        # No gaps, no duplicates: exactly the revisions written after the snapshot, in order.
        assert revisions == list(range(seen_before + 1, last + 1))
        final = {**before, **{f"k.{i}": f"pre-restart-{i}".encode() for i in range(10)}}
        for key, value in after.items():
            if value is None:
                final.pop(key, None)
            else:
                final[key] = value
        # Nothing lost from the store itself either.
        assert sorted(await store.keys("k.")) == sorted(final)
        for key in ("k.0", "k.1", "k.2", "k.new"):
            entry = await store.get(key)
            assert (entry.value if entry else None) == final.get(key)
    finally:
        await watcher.drain()
        await writer.drain()


async def test_watch_started_during_outage_gets_snapshot_after_reconnect(
    private_nats_server: NatsServer,
) -> None:
    server = private_nats_server
    bus = await connect(server.url, name="late", initial_timeout=10)
    try:
        store = await bus.kv(unique_name("late"))
        revision = await store.put("a", b"1")
        await server.arestart()
        async with contextlib.aclosing(store.watch()) as watch:
            assert await take(watch, 2, within=30) == [KVEntry("a", b"1", revision, {}), InSync(revision)]
    finally:
        await bus.drain()
