"""The lb service against a real nats-server: sync gating, incremental writes, deletes, restart with seed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from xpunet.bus.api import StateStore
from xpunet.bus.nats import NatsBus
from xpunet.ir.lb import LbRejection, LbServicePort
from xpunet.lb.service import LbService, load_existing
from xpunet.lb.state import LbCompiler
from xpunet.model.objects import Endpoint, EndpointPort, EndpointSlice, Labels, Service, ServicePort
from xpunet.testing.nats import in_background, next_entry, unique_name
from xpunet.wire import decode_object, encode_object

KEY = "global.lb.svc.default.web.tcp-80.ipv4"
STALE = "global.lb.svc.default.gone.tcp-1.ipv4"

WEB = Service(
    namespace="default",
    name="web",
    cluster_ips=("10.96.0.10",),
    ports=(ServicePort(80, name="http"),),
    selector=Labels({"app": "web"}),
)


def web_slice(*ips: str) -> EndpointSlice:
    return EndpointSlice(
        namespace="default",
        name="web-1",
        service="web",
        address_type="IPv4",
        endpoints=tuple(Endpoint(addresses=(ip,), node_name="n1") for ip in ips),
        ports=(EndpointPort(8080, name="http"),),
    )


async def sync_markers(k8s: StateStore) -> None:
    for kind in ("service", "endpointslice", "node"):
        await k8s.put(f"sync.{kind}", b"\x80")  # any value: only presence matters


@asynccontextmanager
async def running(k8s: StateStore, intents: StateStore, status: StateStore) -> AsyncIterator[LbService]:
    compiler = LbCompiler()
    existing, rejections = await load_existing(intents, status)
    compiler.seed(existing, rejections)
    service = LbService(compiler, k8s=k8s, intents=intents, status=status, flush_interval=0.0)
    async with in_background(service):
        yield service


async def test_service_writes_updates_deletes_and_survives_restart(bus: NatsBus) -> None:
    buckets = [unique_name("lb") for _ in range(3)]
    k8s, intents, status = [await bus.kv(b) for b in buckets]
    try:
        await intents.put(STALE, encode_object(LbServicePort(9, "default", "gone", "ipv4", "TCP", 1)))
        await k8s.put("service.default.web", encode_object(WEB))
        await k8s.put("endpointslice.default.web-1", encode_object(web_slice("10.0.0.1")))
        watch = intents.watch("global.lb.")
        async with running(k8s, intents, status) as service:
            assert not service.synced.is_set()
            await sync_markers(k8s)
            entry = await next_entry(watch, KEY)
            assert entry.value is not None
            first = decode_object(entry.value)
            assert isinstance(first, LbServicePort)
            assert [b.ip for b in first.internal.backends] == ["10.0.0.1"]
            await service.synced.wait()
            assert await intents.get(STALE) is None  # swept once in sync

            await k8s.put("endpointslice.default.web-1", encode_object(web_slice("10.0.0.1", "10.0.0.2")))
            entry = await next_entry(watch, KEY)
            assert entry.value is not None
            second = decode_object(entry.value)
            assert isinstance(second, LbServicePort)
            assert [b.ip for b in second.internal.backends] == ["10.0.0.1", "10.0.0.2"]
            assert second.id == first.id

            # Bad input is reported in xpunet-status and the rest still compiles.
            await k8s.put("endpointslice.default.web-1", encode_object(web_slice("10.0.0.1", "10.0.0.999")))
            entry = await next_entry(watch, KEY)
            report = await status.get("lb.rejected.default.web")
            assert report is not None
            assert report.value is not None
            rejection = decode_object(report.value)
            assert isinstance(rejection, LbRejection)
            assert "10.0.0.999" in rejection.problems[0]

        # A restart keeps the id and rewrites nothing that did not change.
        async with running(k8s, intents, status) as service:
            await service.synced.wait()
            current = await intents.get(KEY)
            assert current is not None
            assert current.value is not None
            restarted = decode_object(current.value)
            assert isinstance(restarted, LbServicePort)
            assert restarted.id == first.id
            await k8s.delete("service.default.web")
            entry = await next_entry(watch, KEY)
            assert entry.value is None
        await watch.aclose()
    finally:
        for b in buckets:
            await bus.delete_kv(b)
