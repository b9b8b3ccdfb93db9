"""The policy service against a real nats-server: sync gating, incremental writes, rejection reports,
deletes, and a restart that rewrites nothing and sweeps what is stale."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from xpunet.bus.api import InSync, KVEntry, StateStore
from xpunet.bus.nats import NatsBus
from xpunet.ir.policy import (
    IPSet,
    PolicyEndpoint,
    PolicyRejection,
    endpoint_key,
    global_ipset_key,
    ipset_key,
)
from xpunet.model.objects import (
    IPBlock,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyRule,
    Pod,
)
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.members import shard_count
from xpunet.policy.service import PolicyService, load_existing
from xpunet.testing.nats import in_background, next_entry, unique_name
from xpunet.wire import decode_object, encode_object

DB_KEY = endpoint_key("n1", "shop", "db")
STALE = endpoint_key("n9", "gone", "pod")


def pod(name: str, ip: str, app: str) -> Pod:
    return Pod(
        "shop", name, f"uid-{name}", node="n1", ips=(ip,), labels=Labels({"app": app}), phase="Running"
    )


DB_POLICY = NetworkPolicy(
    namespace="shop",
    name="db",
    pod_selector=LabelSelector(Labels({"app": "db"})),
    ingress=(
        NetworkPolicyRule(peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"app": "web"}))),)),
    ),
)
BAD_POLICY = NetworkPolicy(
    namespace="shop",
    name="bad",
    ingress=(
        NetworkPolicyRule(peers=(NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/24", ("10.1.0.0/24",))),)),
    ),
)


async def sync_markers(k8s: StateStore) -> None:
    for kind in ("pod", "namespace", "networkpolicy"):
        await k8s.put(f"sync.{kind}", b"\x80")  # any value: only presence matters


@asynccontextmanager
async def running(
    k8s: StateStore, intents: StateStore, status: StateStore, *, global_set_nodes: int = 16
) -> AsyncIterator[PolicyService]:
    existing, reports = await load_existing(intents, status)
    service = PolicyService(
        PolicyCompiler(global_set_nodes=global_set_nodes),
        k8s=k8s,
        intents=intents,
        status=status,
        flush_interval=0.0,
        existing=existing,
        existing_reports=reports,
    )
    async with in_background(service):
        yield service


async def until(watch: AsyncIterator[KVEntry | InSync], key: str, expected: object) -> None:
    """Consume changes of ``key`` until its value decodes to ``expected`` (None: deleted)."""
    async with asyncio.timeout(10):
        async for item in watch:
            if isinstance(item, KVEntry) and item.key == key:
                value = None if item.value is None else decode_object(item.value)
                if value == expected:
                    return
    raise AssertionError("watch ended")


async def decoded(store: StateStore, key: str) -> object:
    entry = await store.get(key)
    assert entry is not None
    assert entry.value is not None
    return decode_object(entry.value)


async def test_policy_service_end_to_end(bus: NatsBus) -> None:
    buckets = [unique_name("policy") for _ in range(3)]
    k8s, intents, status = [await bus.kv(b) for b in buckets]
    try:
        await intents.put(STALE, encode_object(PolicyEndpoint("gone", "pod", "u", "n9", ("10.9.9.9",))))
        await k8s.put("namespace.shop", encode_object(Namespace("shop")))
        await k8s.put("pod.shop.db", encode_object(pod("db", "10.0.0.2", "db")))
        await k8s.put("pod.shop.web", encode_object(pod("web", "10.0.0.1", "web")))
        await k8s.put("networkpolicy.shop.db", encode_object(DB_POLICY))
        watch = intents.watch("node.n1.")
        async with running(k8s, intents, status) as service:
            assert not service.synced.is_set()
            await sync_markers(k8s)
            entry = await next_entry(watch, DB_KEY)
            assert entry.value is not None
            db = decode_object(entry.value)
            assert isinstance(db, PolicyEndpoint)
            assert db.ingress_isolated
            assert not db.egress_isolated
            set_id = db.ingress[0].ipset
            assert set_id is not None
            await service.synced.wait()
            members = await decoded(intents, ipset_key("n1", set_id))
            assert members == IPSet(set_id, ("10.0.0.1/32",))
            assert await intents.get(STALE) is None  # swept once in sync

            # A new matching pod: only the set changes.
            await k8s.put("pod.shop.web2", encode_object(pod("web2", "10.0.0.3", "web")))
            await until(watch, ipset_key("n1", set_id), IPSet(set_id, ("10.0.0.1/32", "10.0.0.3/32")))

            # A policy the compiler rejects is reported and ignored; the service carries on.
            await k8s.put("networkpolicy.shop.bad", encode_object(BAD_POLICY))
            await k8s.put("pod.shop.web", encode_object(pod("web", "10.0.0.1", "other")))
            await until(watch, ipset_key("n1", set_id), IPSet(set_id, ("10.0.0.3/32",)))
            report = await decoded(status, "policy.rejected.shop.bad")
            assert isinstance(report, PolicyRejection)
            assert "except[0]" in report.field
            web = await decoded(intents, endpoint_key("n1", "shop", "web"))
            assert isinstance(web, PolicyEndpoint)
            assert not web.ingress_isolated  # the bad policy (selecting every pod) is not applied

        # A restart rewrites nothing that did not change; deletes are explicit.
        before = await intents.get(DB_KEY)
        assert before is not None
        async with running(k8s, intents, status) as service:
            await service.synced.wait()
            after = await intents.get(DB_KEY)
            assert after is not None
            assert after.revision == before.revision
            await k8s.delete("networkpolicy.shop.bad")
            await k8s.delete("pod.shop.db")
            await until(watch, DB_KEY, None)
            await until(watch, ipset_key("n1", set_id), None)  # no endpoint on n1 references it any more
        assert await status.get("policy.rejected.shop.bad") is None
        await watch.aclose()
    finally:
        for b in buckets:
            await bus.delete_kv(b)


async def test_global_sets_survive_a_restart_and_move_when_the_threshold_changes(bus: NatsBus) -> None:
    buckets = [unique_name("policy") for _ in range(3)]
    k8s, intents, status = [await bus.kv(b) for b in buckets]
    try:
        await k8s.put("pod.shop.db", encode_object(pod("db", "10.0.0.2", "db")))
        await k8s.put("pod.shop.web", encode_object(pod("web", "10.0.0.1", "web")))
        await k8s.put("networkpolicy.shop.db", encode_object(DB_POLICY))
        await sync_markers(k8s)
        async with running(k8s, intents, status, global_set_nodes=1) as service:
            await service.synced.wait()
        db = await decoded(intents, DB_KEY)
        assert isinstance(db, PolicyEndpoint)
        set_id = db.ingress[0].ipset
        assert set_id is not None
        written = await intents.get(global_ipset_key(set_id))
        assert written is not None
        assert decode_object(written.value or b"") == IPSet(set_id, ("10.0.0.1/32",))
        assert await intents.get(ipset_key("n1", set_id)) is None

        # Same threshold: the global key is recognised as ours and not rewritten.
        async with running(k8s, intents, status, global_set_nodes=1) as service:
            await service.synced.wait()
        again = await intents.get(global_ipset_key(set_id))
        assert again is not None
        assert again.revision == written.revision

        # One node now is below the threshold: the set moves to the node, the global copy is swept.
        async with running(k8s, intents, status, global_set_nodes=2) as service:
            await service.synced.wait()
        assert await decoded(intents, ipset_key("n1", set_id)) == IPSet(set_id, ("10.0.0.1/32",))
        assert await intents.get(global_ipset_key(set_id)) is None
    finally:
        for b in buckets:
            await bus.delete_kv(b)


async def test_a_big_set_is_written_in_shards_and_a_member_change_rewrites_one(bus: NatsBus) -> None:
    """200 members: 4 shards in KV; one web pod more rewrites only its shard; a v1 key is swept."""
    buckets = [unique_name("policy") for _ in range(3)]
    k8s, intents, status = [await bus.kv(b) for b in buckets]
    try:
        await k8s.put("pod.shop.db", encode_object(pod("db", "10.0.0.2", "db")))
        webs = {f"web{i}": f"10.1.{i // 250}.{i % 250 + 1}" for i in range(200)}
        await k8s.put_many({f"pod.shop.{n}": encode_object(pod(n, ip, "web")) for n, ip in webs.items()})
        await k8s.put("networkpolicy.shop.db", encode_object(DB_POLICY))
        await sync_markers(k8s)
        # What a v1 policy service left: the whole set under one key without a shard.
        v1_key = "node.n1.policy.ipset.0123456789abcdef"
        await intents.put(v1_key, encode_object(IPSet("0123456789abcdef", ("10.1.0.1/32",))))
        async with running(k8s, intents, status) as service:
            await service.synced.wait()
            db = await decoded(intents, DB_KEY)
            assert isinstance(db, PolicyEndpoint)
            set_id = db.ingress[0].ipset
            assert set_id is not None
            shards = [await decoded(intents, ipset_key("n1", set_id, k)) for k in range(4)]
            assert all(isinstance(s, IPSet) and s.shards == 4 for s in shards)
            members = {m for s in shards if isinstance(s, IPSet) for m in s.members}
            assert members == {f"{ip}/32" for ip in webs.values()}
            assert await intents.get(ipset_key("n1", set_id, 4)) is None
            assert await intents.get(v1_key) is None  # swept on the first flush
            before = {k: await intents.get(ipset_key("n1", set_id, k)) for k in range(4)}

            # The new member's shard, as docs/intents.md defines it (201 members: still 4 shards).
            assert shard_count(201) == 4
            key = ipset_key("n1", set_id, zlib.crc32(b"10.2.0.1/32") % 4)
            watch = intents.watch(key)
            await next_entry(watch, key)  # its current value (the snapshot)
            await k8s.put("pod.shop.web-new", encode_object(pod("web-new", "10.2.0.1", "web")))
            entry = await next_entry(watch, key)
            await watch.aclose()
        assert entry.value is not None
        changed = decode_object(entry.value)
        assert isinstance(changed, IPSet)
        assert "10.2.0.1/32" in changed.members
        assert len(changed.members) < 100  # one shard, not the set
        for k, was in before.items():  # no other shard was rewritten
            now = await intents.get(ipset_key("n1", set_id, k))
            assert now is not None
            assert was is not None
            assert now.revision == was.revision or ipset_key("n1", set_id, k) == key
    finally:
        for b in buckets:
            await bus.delete_kv(b)
