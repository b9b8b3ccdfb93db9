"""JetStream KV state store against a real nats-server: snapshot → in-sync → updates, CAS, put_many, keys."""

from __future__ import annotations

import contextlib
import socket

import pytest

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.errors import BusError, CasConflict, InvalidKey
from xpunet.bus.nats import NatsBus, NatsStateStore
from xpunet.embedded.nats import NatsServer
from xpunet.testing.nats import take


def _entries(items: list[KVEntry | InSync]) -> list[tuple[str, bytes | None]]:
    return [(i.key, i.value) for i in items if isinstance(i, KVEntry)]


async def test_snapshot_then_in_sync_then_updates_in_revision_order(kv: NatsStateStore) -> None:
    r1 = await kv.put("pod.a", b"1")
    await kv.put("pod.b", b"2")
    await kv.put("pod.c", b"3")
    await kv.delete("pod.b")  # deleted before the watch: absent from the snapshot
    r5 = await kv.put("pod.a", b"1'")
    await kv.put("svc.x", b"other prefix")

    async with contextlib.aclosing(kv.watch("pod.")) as watch:
        snapshot = await take(watch, 3)
        assert _entries(snapshot[:2]) == [("pod.c", b"3"), ("pod.a", b"1'")]
        assert snapshot[1] == KVEntry("pod.a", b"1'", r5, {})
        assert isinstance(snapshot[2], InSync)
        assert snapshot[2].revision >= r5
        assert r1 < r5

        r7 = await kv.put("pod.d", b"4")
        await kv.put("svc.y", b"not watched")
        await kv.delete("pod.c")
        r10 = await kv.put("pod.c", b"back")
        updates = await take(watch, 3)
    assert [(u.key, u.value) for u in updates if isinstance(u, KVEntry)] == [
        ("pod.d", b"4"),
        ("pod.c", None),
        ("pod.c", b"back"),
    ]
    revisions = [u.revision for u in updates if isinstance(u, KVEntry)]
    assert revisions[0] == r7
    assert revisions[-1] == r10
    assert revisions == sorted(set(revisions))


async def test_one_watch_over_several_prefixes_keeps_revision_order_across_them(kv: NatsStateStore) -> None:
    await kv.put("pod.a", b"1")
    await kv.put("svc.x", b"2")
    await kv.put("other.z", b"not watched")
    await kv.put("pod.b", b"3")
    await kv.put("svc.x", b"2'")
    async with contextlib.aclosing(kv.watch(("pod.", "svc."))) as watch:
        snapshot = await take(watch, 4)
        assert _entries(snapshot[:3]) == [("pod.a", b"1"), ("pod.b", b"3"), ("svc.x", b"2'")]
        assert isinstance(snapshot[3], InSync)
        await kv.put("svc.y", b"4")
        await kv.put("other.q", b"not watched")
        await kv.put("pod.c", b"5")
        await kv.delete("svc.x")
        updates = await take(watch, 3)
    assert _entries(updates) == [("svc.y", b"4"), ("pod.c", b"5"), ("svc.x", None)]
    revisions = [u.revision for u in snapshot[:3] + updates if isinstance(u, KVEntry)]
    assert revisions == sorted(revisions)


async def test_several_prefixes_that_are_not_whole_tokens_are_checked_per_key(kv: NatsStateStore) -> None:
    await kv.put_many({"pod.ns1.a": b"a", "pod.ns2.b": b"b", "svc.x": b"x"})
    async with contextlib.aclosing(kv.watch(("pod.ns1", "svc."))) as watch:
        items = await take(watch, 3)
    assert sorted(_entries(items)) == [("pod.ns1.a", b"a"), ("svc.x", b"x")]
    assert isinstance(items[-1], InSync)


async def test_overlapping_watch_prefixes_are_refused_before_any_request(kv: NatsStateStore) -> None:
    with pytest.raises(InvalidKey, match="overlap"):
        kv.watch(("pod.", "pod.a."))


async def test_empty_snapshot_is_in_sync_at_zero(kv: NatsStateStore) -> None:
    async with contextlib.aclosing(kv.watch()) as watch:
        assert await take(watch, 1) == [InSync(0)]
        revision = await kv.put("first", b"v")
        assert await take(watch, 1) == [KVEntry("first", b"v", revision, {})]


async def test_prefix_is_a_string_prefix_not_only_whole_tokens(kv: NatsStateStore) -> None:
    await kv.put_many({"pod.ns1.a": b"a", "pod.ns10.b": b"b", "pod.ns2.c": b"c", "podx": b"x"})
    async with contextlib.aclosing(kv.watch("pod.ns1")) as watch:
        items = await take(watch, 3)
    assert sorted(_entries(items)) == [("pod.ns1.a", b"a"), ("pod.ns10.b", b"b")]
    assert isinstance(items[-1], InSync)
    assert sorted(await kv.keys("pod")) == ["pod.ns1.a", "pod.ns10.b", "pod.ns2.c", "podx"]
    assert await kv.keys("none.") == []


async def test_get_put_delete_and_headers(kv: NatsStateStore) -> None:
    assert await kv.get("missing") is None
    revision = await kv.put("k", b"v", headers={"x-origin": "test"})
    assert await kv.get("k") == KVEntry("k", b"v", revision, {"x-origin": "test"})
    await kv.delete("k")
    assert await kv.get("k") is None
    assert await kv.keys() == []


async def test_compare_and_set(kv: NatsStateStore) -> None:
    r1 = await kv.compare_and_set("lease", b"me", revision=0)
    with pytest.raises(CasConflict, match="lease"):
        await kv.compare_and_set("lease", b"you", revision=0)
    r2 = await kv.compare_and_set("lease", b"me again", revision=r1)
    with pytest.raises(CasConflict) as err:
        await kv.compare_and_set("lease", b"stale", revision=r1)
    assert err.value.expected == r1
    assert (await kv.get("lease")) == KVEntry("lease", b"me again", r2, {})
    await kv.delete("lease")
    # A deleted key counts as absent for create-only.
    r4 = await kv.compare_and_set("lease", b"new owner", revision=0)
    assert (await kv.get("lease")) == KVEntry("lease", b"new owner", r4, {})


async def test_put_many_thousands_all_visible_with_final_values(kv: NatsStateStore) -> None:
    n = 5000
    first = await kv.put_many({f"obj.{i}": f"v1-{i}".encode() for i in range(n)})
    changes: dict[str, bytes | None] = {f"obj.{i}": f"v2-{i}".encode() for i in range(0, n, 2)}
    changes.update({f"obj.{i}": None for i in range(1, n, 10)})
    last = await kv.put_many(changes)
    assert last > first
    expected = {f"obj.{i}": f"v1-{i}".encode() for i in range(n)}
    for key, value in changes.items():
        if value is None:
            del expected[key]
        else:
            expected[key] = value

    async with contextlib.aclosing(kv.watch("obj.")) as watch:
        items = await take(watch, len(expected) + 1)
    assert items[-1] == InSync(last)
    assert dict(_entries(items)) == expected
    assert len(await kv.keys("obj.")) == len(expected)
    assert (await kv.get("obj.1")) is None
    entry = await kv.get("obj.2")
    assert entry is not None
    assert entry.value == b"v2-2"


async def test_put_many_empty_returns_zero(kv: NatsStateStore) -> None:
    assert await kv.put_many({}) == 0


@pytest.mark.parametrize("key", ["", "has space", ".lead", "trail.", "a..b", "star*", "gt>", "ü"])
async def test_invalid_keys_are_rejected_by_name(kv: NatsStateStore, key: str) -> None:
    with pytest.raises(InvalidKey) as err:
        await kv.put(key, b"v")
    assert repr(key) in str(err.value)
    # put_many validates everything before writing anything.
    with pytest.raises(InvalidKey):
        await kv.put_many({"good": b"v", key: b"v"})
    assert await kv.get("good") is None


async def test_watch_survives_broken_messages(kv: NatsStateStore, nats_server: NatsServer) -> None:
    subject = f"$KV.{kv.bucket}"
    # Raw protocol, so the client library's own header checks do not get in the way.
    junk = [
        (f"{subject}.bad1", b"NATS/1.0\r\nno colon here\r\n\xff\xfe: \x80\r\n\r\n", b"payload"),
        (f"{subject}.bad2", b"NATS/1.0\r\nKV-Operation: EXPLODE\r\n\r\n", b""),
    ]
    async with contextlib.aclosing(kv.watch()) as watch:
        assert await take(watch, 1) == [InSync(0)]
        with socket.create_connection(("127.0.0.1", nats_server.port), timeout=5) as sock:
            sock.recv(4096)  # INFO
            sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n')
            for subj, hdr, payload in junk:
                sock.sendall(
                    f"HPUB {subj} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode() + hdr + payload + b"\r\n"
                )
            sock.sendall(b"PING\r\n")
            assert b"PONG" in sock.recv(4096)
        revision = await kv.put("good", b"still here")
        items = await take(watch, 2)
    # The first junk message still parses as a value (unreadable header lines dropped); the
    # unknown operation is skipped; the watch goes on.
    assert items[0] == KVEntry("bad1", b"payload", revision - 2, {})
    assert items[1] == KVEntry("good", b"still here", revision, {})


async def test_buckets_are_isolated(bus: NatsBus, kv: NatsStateStore) -> None:
    other = await bus.kv(kv.bucket + "-other")
    try:
        await other.put("k", b"other")
        assert await kv.get("k") is None
    finally:
        await bus.delete_kv(other.bucket)


async def test_put_many_rejects_an_oversized_value_by_name_before_writing(kv: NatsStateStore) -> None:
    too_big = b"x" * (2 * 1024 * 1024)  # the embedded server's max_payload is 1 MiB
    with pytest.raises(BusError, match=r"obj\.big is 2097152 bytes"):
        await kv.put_many({"obj.small": b"v", "obj.big": too_big})
    assert await kv.get("obj.small") is None


async def test_put_many_into_a_deleted_bucket_names_the_failed_keys(bus: NatsBus, bucket_name: str) -> None:
    store = await bus.kv(bucket_name + "-gone")
    await bus.delete_kv(store.bucket)
    with pytest.raises(BusError, match=r"2 of 2 writes rejected: a: .*no stream answered"):
        await store.put_many({"a": b"1", "b": b"2"})


async def test_large_values_cross_read_boundaries_intact(kv: NatsStateStore) -> None:
    # Values larger than one socket read, with and without headers, written and watched.
    values = {f"big.{i}": bytes([i]) * (100_000 + i * 7919) for i in range(12)}
    values["big.headers"] = b"h" * 70_000
    await kv.put_many({k: v for k, v in values.items() if k != "big.headers"})
    await kv.put_many({"big.headers": values["big.headers"]}, headers={"x-note": "kept"})
    async with contextlib.aclosing(kv.watch("big.")) as watch:
        items = await take(watch, len(values) + 1)
    assert isinstance(items[-1], InSync)
    assert dict(_entries(items)) == values
    assert [i.headers for i in items if isinstance(i, KVEntry) and i.key == "big.headers"] == [
        {"x-note": "kept"}
    ]
