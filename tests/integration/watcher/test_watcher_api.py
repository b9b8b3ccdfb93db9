"""The watcher against the local Kubernetes API server, through the real client, into a real NATS KV."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xpunet.bus.api import StateStore
from xpunet.bus.backoff import Backoff
from xpunet.model import Kind, Pod
from xpunet.testing.kubeapi import (
    FakeKubeAPI,
    KVFollower,
    endpoint_slice,
    namespace_obj,
    network_policy,
    node,
    pod,
    service,
)
from xpunet.watcher.engine import ApiSource, Watcher
from xpunet.watcher.informer import InformerOptions
from xpunet.watcher.kube import api_client
from xpunet.watcher.leader import LeaderElector, LeaseOptions
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.watcher.state import sync_key
from xpunet.wire import decode_k8s, encode_object

ALL_SYNCED = {sync_key(k) for k in Kind}
FAST = InformerOptions(page_size=2, watch_timeout=30, backoff=Backoff(initial=0.01, maximum=0.2))


def cluster(v: int = 0) -> list[dict[str, Any]]:
    """A small cluster; ``v`` changes something the model keeps in every object."""
    return [
        namespace_obj("ns1", {"v": str(v)}),
        node("n1", ip=f"192.168.0.{1 + v}", pod_cidr="10.64.0.0/24"),
        pod("ns1", "a", ip=f"10.0.0.{1 + v}", node="n1"),
        pod("ns1", "b", ip=f"10.0.1.{2 + v}", node="n1"),
        pod("ns1", "c", ip=f"10.0.2.{3 + v}", node="n1"),
        service("ns1", "web", cluster_ip="10.96.0.10", port=80 + v),
        endpoint_slice("ns1", "web-abc", service_name="web", ips=["10.0.0.1", f"10.0.0.{2 + v}"]),
        network_policy("ns1", "allow-web", app="web", port=8080 + v),
    ]


KEYS = {
    "namespace.ns1",
    "node.n1",
    "pod.ns1.a",
    "pod.ns1.b",
    "pod.ns1.c",
    "service.ns1.web",
    "endpointslice.ns1.web-abc",
    "networkpolicy.ns1.allow-web",
}


def make_watcher(
    store: StateStore, kube: client.ApiClient, elector: LeaderElector | None = None, *, parse_workers: int = 0
) -> Watcher:
    return Watcher(
        store=store,
        source=ApiSource(kube, FAST, parse_workers=parse_workers),
        encode=encode_object,
        tracer=trace.get_tracer("test"),
        metrics=WatcherMetrics(metrics.get_meter("test")),
        elector=elector,
        write_batch=3,  # small batches: exercise both the per-object and the batch write paths
    )


@contextlib.asynccontextmanager
async def running(watcher: Watcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def has(key: str) -> Callable[[dict[str, bytes]], bool]:
    return lambda values: key in values


def synced_with(keys: set[str]) -> Any:
    return lambda values: set(values) == keys | ALL_SYNCED


async def test_every_kind_is_mirrored_and_follows_add_modify_delete(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    async with KVFollower(kv) as kvf, running(make_watcher(kv, kube)):
        await kvf.until(synced_with(KEYS))
        decoded = decode_k8s(kvf.values["pod.ns1.a"])
        assert isinstance(decoded, Pod)
        assert decoded.ips == ("10.0.0.1",)
        assert decoded.node == "n1"
        # the initial list was paginated (page_size=2)
        assert any("continue=" in path for _, path in fake_api.requests)

        # modify every kind in a way the model sees
        before = dict(kvf.values)
        fake_api.apply_many(cluster(v=1))
        await kvf.until(lambda v: all(v.get(k) != before[k] for k in KEYS))
        assert decode_k8s(kvf.values["namespace.ns1"]).labels["v"] == "1"  # type: ignore[union-attr]  # has labels

        # add one of each namespaced kind in another namespace, then delete everything
        fake_api.apply(namespace_obj("ns2"))
        fake_api.apply(pod("ns2", "z", ip="10.0.1.1"))
        await kvf.until(lambda v: "pod.ns2.z" in v and "namespace.ns2" in v)
        for obj in cluster():
            fake_api.delete(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        await kvf.until(synced_with({"namespace.ns2", "pod.ns2.z"}))


async def test_an_update_that_changes_nothing_used_writes_nothing(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    async with KVFollower(kv) as kvf, running(make_watcher(kv, kube)):
        await kvf.until(synced_with(KEYS))
        revision = kvf.revisions["pod.ns1.a"]
        noise = pod("ns1", "a", ip="10.0.0.1", node="n1")
        noise["metadata"]["annotations"] = {"heartbeat": "1"}
        noise["metadata"]["managedFields"] = [{"manager": "kubelet", "operation": "Update"}]
        noise["status"]["startTime"] = "2026-01-01T00:00:01Z"
        fake_api.apply(noise)
        # A later, real change to a pod (same informer, so ordered after the noise) marks the point.
        fake_api.apply(pod("ns1", "b", ip="10.0.0.22", node="n1"))
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.b"]).ips == ("10.0.0.22",))  # type: ignore[union-attr]  # a Pod
        assert kvf.revisions["pod.ns1.a"] == revision


async def test_malformed_object_is_skipped_and_the_rest_loads(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    fake_api.apply_many(cluster())
    bad = pod("ns1", "bad", ip="not-an-ip")
    fake_api.apply(bad)
    watcher = make_watcher(kv, kube)
    async with KVFollower(kv) as kvf, running(watcher):
        await kvf.until(synced_with(KEYS))
        assert "skipping malformed pod ns1/bad" in caplog.text
        assert "not-an-ip" in caplog.text
        # it turns good later: then it is written
        fake_api.apply(pod("ns1", "bad", ip="10.0.0.9"))
        await kvf.until(lambda v: "pod.ns1.bad" in v)


@pytest.mark.parametrize(
    ("as_http_status", "parse_workers"),
    [
        pytest.param(False, 0, id="error-event"),
        pytest.param(True, 0, id="http-410"),
        pytest.param(False, 1, id="pages-decoded-in-a-worker-process"),
    ],
)
async def test_relist_after_410_deletes_stale_keys(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore, as_http_status: bool, parse_workers: int
) -> None:
    fake_api.gone_as_http_status = as_http_status
    fake_api.apply_many(cluster())
    watcher = make_watcher(kv, kube, parse_workers=parse_workers)
    async with KVFollower(kv) as kvf, running(watcher):
        await kvf.until(synced_with(KEYS))
        source = watcher._source
        assert isinstance(source, ApiSource)
        lists_before = source.informers[Kind.POD].lists
        # While the watches are down, objects go and come, and the history that would
        # tell the watcher is compacted away: resuming gets a 410 ERROR event.
        fake_api.drop_watches()
        fake_api.delete("Pod", "ns1", "b")
        fake_api.delete("NetworkPolicy", "ns1", "allow-web")
        fake_api.apply(pod("ns1", "d", ip="10.0.0.4"))
        fake_api.compact()
        want = (KEYS - {"pod.ns1.b", "networkpolicy.ns1.allow-web"}) | {"pod.ns1.d"}
        await kvf.until(synced_with(want))
        assert source.informers[Kind.POD].lists == lists_before + 1


async def test_dropped_watch_resumes_without_loss_or_duplicates(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    watcher = make_watcher(kv, kube)
    async with KVFollower(kv) as kvf, running(watcher):
        await kvf.until(synced_with(KEYS))
        source = watcher._source
        assert isinstance(source, ApiSource)
        fake_api.send_bookmarks()
        for i in range(3):
            fake_api.drop_watches()
            fake_api.apply(pod("ns1", "a", ip=f"10.0.2.{i}"))
            fake_api.apply(pod("ns1", f"new{i}", ip=f"10.0.3.{i}"))
            if i:
                fake_api.delete("Pod", "ns1", f"new{i - 1}")
            await kvf.until(has(f"pod.ns1.new{i}"))
        fake_api.end_watches()  # a clean end (server timeout) resumes too
        fake_api.apply(pod("ns1", "a", ip="10.0.2.99"))
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.a"]).ips == ("10.0.2.99",))  # type: ignore[union-attr]  # a Pod
        assert kvf.keys("pod.") == {"pod.ns1.a", "pod.ns1.b", "pod.ns1.c", "pod.ns1.new2"}
        # every change written exactly once: the list, 3 IP changes, the final one
        assert kvf.puts["pod.ns1.a"] == 5
        assert all(kvf.puts[f"pod.ns1.new{i}"] == 1 for i in range(3))
        assert all(source.informers[k].lists == 1 for k in Kind)  # resumed, never relisted


async def test_api_errors_back_off_and_recover(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    fake_api.fail_next.extend([500, 503, 500])
    async with KVFollower(kv) as kvf, running(make_watcher(kv, kube)):
        await kvf.until(synced_with(KEYS))


async def eventually(predicate: Callable[[], bool], *, within: float = 30.0) -> None:
    """Poll a condition on in-process state that has no event to wait on (fails after ``within``)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # the elector's state has no event to wait on
            await asyncio.sleep(0.02)


def lease_options(identity: str) -> LeaseOptions:
    # Short, for fast failover, yet with slack for a loaded CI machine to renew in time.
    return LeaseOptions(identity=identity, lease_duration=3, renew_deadline=2.0, retry_period=0.1)


async def test_leader_failover_reconciles_before_writing(
    fake_api: FakeKubeAPI, tmp_path: Path, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    config = str(fake_api.write_kubeconfig(tmp_path / "kc"))
    kube_a, kube_b = await api_client(config), await api_client(config)
    try:
        a = make_watcher(kv, kube_a, LeaderElector(kube_a, lease_options("a")))
        b = make_watcher(kv, kube_b, LeaderElector(kube_b, lease_options("b")))
        async with KVFollower(kv) as kvf, running(a) as task_a:
            await kvf.until(synced_with(KEYS))
            async with running(b):
                assert b.elector is not None
                await eventually(lambda: b.elector is not None and b.elector.holder == "a")
                assert b.terms == 0  # standby: never wrote
                # a dies without releasing the lease; the cluster changes while nobody leads
                task_a.cancel()
                fake_api.delete("Pod", "ns1", "b")
                fake_api.apply(pod("ns1", "d", ip="10.0.0.4"))
                fake_api.compact()
                await kvf.until(synced_with((KEYS - {"pod.ns1.b"}) | {"pod.ns1.d"}))
                assert b.terms >= 1
                lease = fake_api.get("Lease", "xpunet-system", "xpunet-watcher")
                assert lease is not None
                assert lease["spec"]["holderIdentity"] == "b"
                assert lease["spec"]["leaseTransitions"] >= 1
                # untouched objects were not rewritten by the new leader
                assert kvf.puts["pod.ns1.a"] == 1
    finally:
        await kube_a.close()
        await kube_b.close()


async def test_losing_the_lease_stops_the_term_and_a_later_term_reconciles(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    a = make_watcher(kv, kube, LeaderElector(kube, lease_options("a")))
    async with KVFollower(kv) as kvf, running(a):
        await kvf.until(synced_with(KEYS))
        assert a.elector is not None
        lease = fake_api.get("Lease", "xpunet-system", "xpunet-watcher")
        assert lease is not None
        lease["spec"]["holderIdentity"] = "intruder"
        fake_api.apply(lease)
        await eventually(lambda: a.elector is not None and not a.elector.is_leader())
        fake_api.apply(pod("ns1", "e", ip="10.0.0.5"))
        # the intruder never renews: a takes the lease back, reconciles, and writes the change
        await kvf.until(has("pod.ns1.e"))
        assert a.terms >= 2


async def test_each_write_is_traced_and_carries_its_context(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fake_api.apply_many(cluster())
    watcher = Watcher(
        store=kv,
        source=ApiSource(kube, FAST),
        encode=encode_object,
        tracer=provider.get_tracer("test"),
        metrics=WatcherMetrics(metrics.get_meter("test")),
        write_batch=3,
    )
    async with KVFollower(kv) as kvf, running(watcher):
        await kvf.until(synced_with(KEYS))
        live = pod("ns1", "a", ip="10.0.9.9", node="n1")
        fake_api.apply(live)
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.a"]).ips == ("10.0.9.9",))  # type: ignore[union-attr]  # a Pod
    entry = await kv.get("pod.ns1.a")
    assert entry is not None
    span = next(
        s
        for s in exporter.get_finished_spans()
        if s.name == "watcher.kv_write"
        and (s.attributes or {}).get("xpunet.kv.key") == "pod.ns1.a"
        and (s.attributes or {}).get("k8s.resource_version") == str(fake_api.resource_version)
    )
    attrs = dict(span.attributes or {})
    assert attrs["k8s.kind"] == "pod"
    assert attrs["k8s.namespace"] == "ns1"
    assert attrs["k8s.name"] == "a"
    assert span.context is not None
    assert entry.headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
    provider.shutdown()


async def test_watch_events_larger_than_the_stream_buffer(
    fake_api: FakeKubeAPI, kube: client.ApiClient, kv: StateStore
) -> None:
    fake_api.apply_many(cluster())
    async with KVFollower(kv) as kvf, running(make_watcher(kv, kube)):
        await kvf.until(synced_with(KEYS))
        big = pod("ns1", "a", ip="10.0.7.7", node="n1")
        big["metadata"]["annotations"] = {"last-applied": "x" * 512 * 1024}  # one 512 KiB JSON line
        fake_api.apply(big)
        fake_api.apply(pod("ns1", "b", ip="10.0.7.8", node="n1"))
        await kvf.until(lambda v: decode_k8s(v["pod.ns1.b"]).ips == ("10.0.7.8",))  # type: ignore[union-attr]  # a Pod
        assert decode_k8s(kvf.values["pod.ns1.a"]).ips == ("10.0.7.7",)  # type: ignore[union-attr]  # a Pod
