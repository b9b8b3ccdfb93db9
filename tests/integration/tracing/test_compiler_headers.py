"""The policy service over a real nats-server: what its intent writes carry in their KV headers.

* A live change's trace continues into ``policy.compile``, and the intents
  written by that flush carry the compile span's context;
* ``xpunet-written-at`` of the input is carried through (the earliest of the flush);
* values read in the start-up snapshot are state, not changes: the first flush is a root span;
* changes coalesced into one flush each reach it, as parent or as a link.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xpunet.bus.api import InSync, KVEntry, StateStore
from xpunet.bus.nats import NatsBus
from xpunet.bus.tracing import WRITTEN_AT_HEADER, context_from_headers, inject_headers
from xpunet.ir.policy import endpoint_key
from xpunet.model.objects import (
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyRule,
    Pod,
)
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.service import PolicyService
from xpunet.testing.nats import unique_name
from xpunet.wire import encode_object

WITHIN = 20.0


def pod(name: str, ip: str, app: str) -> Pod:
    return Pod("shop", name, f"u-{name}", node="n1", ips=(ip,), labels=Labels({"app": app}), phase="Running")


def policy(name: str, target: str, source: str) -> NetworkPolicy:
    return NetworkPolicy(
        namespace="shop",
        name=name,
        pod_selector=LabelSelector(Labels({"app": target})),
        ingress=(
            NetworkPolicyRule(
                peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"app": source}))),)
            ),
        ),
    )


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def stores(bus: NatsBus) -> AsyncIterator[tuple[StateStore, StateStore, StateStore]]:
    names = [unique_name("trace") for _ in range(3)]
    k8s, intents, status = [await bus.kv(n) for n in names]
    yield k8s, intents, status
    if bus.connected:
        for n in names:
            await bus.delete_kv(n)


@asynccontextmanager
async def running(
    stores: tuple[StateStore, StateStore, StateStore], provider: TracerProvider, *, flush_interval: float
) -> AsyncIterator[PolicyService]:
    k8s, intents, status = stores
    service = PolicyService(
        PolicyCompiler(),
        k8s=k8s,
        intents=intents,
        status=status,
        flush_interval=flush_interval,
        tracer=provider.get_tracer("xpunet.policy"),
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        async with asyncio.timeout(WITHIN):
            await service.synced.wait()
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


async def seed(k8s: StateStore) -> None:
    await k8s.put("namespace.shop", encode_object(Namespace("shop")))
    for name, ip, app in (("db", "10.0.0.2", "db"), ("web", "10.0.0.1", "web"), ("api", "10.0.0.3", "api")):
        await k8s.put(f"pod.shop.{name}", encode_object(pod(name, ip, app)))
    for kind in ("pod", "namespace", "networkpolicy"):
        await k8s.put(f"sync.{kind}", b"\x80")


async def past_snapshot(watch: AsyncIterator[KVEntry | InSync]) -> None:
    """Consume the watch's snapshot: what comes next is written after this returns."""
    async with asyncio.timeout(WITHIN):
        async for item in watch:
            if isinstance(item, InSync):
                return
    raise AssertionError("watch ended")


async def live_entry(key: str, watch: AsyncIterator[KVEntry | InSync]) -> KVEntry:
    """The next write of ``key`` (call after ``past_snapshot``)."""
    async with asyncio.timeout(WITHIN):
        async for item in watch:
            if isinstance(item, KVEntry) and item.key == key and item.value is not None:
                return item
    raise AssertionError("watch ended")


def compile_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "policy.compile"]


def span_id_in(headers: object) -> int:
    assert isinstance(headers, dict)
    return trace.get_current_span(context_from_headers(headers)).get_span_context().span_id


async def test_a_live_change_is_continued_and_its_written_at_carried_through(
    stores: tuple[StateStore, StateStore, StateStore],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    k8s, intents, _ = stores
    await seed(k8s)
    async with running(stores, provider, flush_interval=0.0):
        (first,) = compile_spans(exporter)
        assert first.parent is None  # the snapshot is state, not a change: nothing to continue
        assert dict(first.attributes or {})["xpunet.sources"] == 0

        watch = intents.watch(endpoint_key("n1", "shop", "db"))
        await past_snapshot(watch)
        upstream = provider.get_tracer("upstream")
        with upstream.start_as_current_span("watcher.kv_write") as written:
            headers = inject_headers({WRITTEN_AT_HEADER: "1000.5"})
        await k8s.put("networkpolicy.shop.db", encode_object(policy("db", "db", "web")), headers=headers)
        entry = await live_entry(endpoint_key("n1", "shop", "db"), watch)
        await watch.aclose()

    compiled = next(s for s in compile_spans(exporter) if s.parent is not None)
    assert compiled.parent is not None
    assert compiled.parent.span_id == written.get_span_context().span_id
    assert compiled.context is not None
    assert compiled.context.trace_id == written.get_span_context().trace_id
    attributes = dict(compiled.attributes or {})
    assert attributes["k8s.kind"] == "networkpolicy"
    assert attributes["k8s.namespace"] == "shop"
    assert attributes["k8s.name"] == "db"
    assert attributes["xpunet.sources"] == 1
    assert isinstance(attributes["xpunet.intent.keys"], int)
    assert attributes["xpunet.intent.keys"] >= 1
    # The intent carries the compile span (so the datapath continues it) and the change's own time.
    assert span_id_in(dict(entry.headers)) == compiled.context.span_id
    assert entry.headers[WRITTEN_AT_HEADER] == "1000.500000"


async def test_changes_coalesced_into_one_flush_all_reach_it(
    stores: tuple[StateStore, StateStore, StateStore],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    k8s, intents, _ = stores
    await seed(k8s)
    # A long coalescing window: the two writes most likely share a flush; either way each change's
    # span must reach a compile span, as its parent or through a link.
    keys = {endpoint_key("n1", "shop", "db"), endpoint_key("n1", "shop", "api")}
    async with running(stores, provider, flush_interval=0.5):
        watch = intents.watch("node.n1.policy.ep.")
        await past_snapshot(watch)
        upstream = provider.get_tracer("upstream")
        spans = []
        for name in ("db", "api"):
            with upstream.start_as_current_span("watcher.kv_write") as written:
                headers = inject_headers()
            spans.append(written)
            value = encode_object(policy(name, name, "web"))
            await k8s.put(f"networkpolicy.shop.{name}", value, headers=headers)
        # Both endpoints rewritten (now isolated): the flushes that compiled the policies are done.
        async with asyncio.timeout(WITHIN):
            async for item in watch:
                if isinstance(item, KVEntry):
                    keys.discard(item.key)
                if not keys:
                    break
        await watch.aclose()
    for index, written in enumerate(spans):
        ctx = written.get_span_context()
        reached = [
            s
            for s in compile_spans(exporter)
            if (s.parent is not None and s.parent.span_id == ctx.span_id)
            or any(link.context.span_id == ctx.span_id for link in s.links)
        ]
        assert len(reached) == 1, f"change {index} reached {reached}"
